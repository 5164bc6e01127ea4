package chainfire_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"plasmacloud.dev/pkg/chainfire"
)

func ExamplePrefixEnd() {
	// Everything under "vms/" is the range ["vms/", "vms0").
	fmt.Printf("%q\n", chainfire.PrefixEnd([]byte("vms/")))
	// Output: "vms0"
}

// Example_listWatch shows the list-then-watch loop every consumer of a
// ChainFire prefix runs: read the state, watch from the revision after the
// read, and start over when the watch asks for a relist (compaction).
func Example_listWatch() {
	c, err := chainfire.New(chainfire.Config{Endpoints: []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	for ctx.Err() == nil {
		list, err := c.Get(ctx, "vms/", chainfire.WithPrefix())
		if err != nil {
			log.Printf("list: %v", err) // already retried within ctx
			continue
		}
		fmt.Println("have", list.Count, "vms at revision", list.Header.Revision)
		for resp := range c.Watch(ctx, "vms/", chainfire.WithPrefix(), chainfire.WithRev(list.Header.Revision+1)) {
			if resp.Relist {
				break // compacted: list again
			}
			if resp.Err != nil {
				log.Fatal(resp.Err)
			}
			for _, ev := range resp.Events {
				fmt.Println(ev.Type, string(ev.Kv.Key))
			}
		}
	}
}

// Example_compareAndSwap updates a key only if nobody changed it since it
// was read, and shows how to treat a write whose outcome is unknown.
func Example_compareAndSwap() {
	c, err := chainfire.New(chainfire.Config{Endpoints: []string{"http://127.0.0.1:2379"}})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	cur, err := c.Get(ctx, "config")
	if err != nil {
		log.Fatal(err)
	}
	var modRev int64 // 0: the key must not exist yet
	if len(cur.Kvs) > 0 {
		modRev = cur.Kvs[0].ModRevision
	}
	resp, err := c.Txn(ctx).
		If(chainfire.Compare(chainfire.ModRevision("config"), "=", modRev)).
		Then(chainfire.OpPut("config", "v2")).
		Commit()
	switch {
	case errors.Is(err, chainfire.ErrOutcomeUnknown):
		// Maybe applied: read "config" again before deciding.
	case err != nil:
		log.Fatal(err)
	case !resp.Succeeded:
		// Someone else changed it first: re-read and retry.
	}
}
