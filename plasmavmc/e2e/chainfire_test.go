package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestChainFireLeaderKilledDuringCreate: creates stream through two controllers while the
// ChainFire leader is SIGKILLed; every client retries its create with the same request
// id until it succeeds. Afterwards each request made exactly one VM (one record, one
// name, the same id on every retry), and the VMs that were asked to run run once.
func TestChainFireLeaderKilledDuringCreate(t *testing.T) {
	e := newEnv(t, envOptions{cfSize: 3, controllers: 2})
	fh := startFakeHost(t, "a")
	e.addAgent("cfkill1", fh, 4096)
	e.registerImages(e.api(0, ""))

	const n = 12
	type result struct {
		id       string
		attempts int
		err      error
	}
	results := make([]result, n)
	reqID := func(i int) string { return fmt.Sprintf("cfkill-%d-%d", i, time.Now().Unix()/3600) }
	names := func(i int) string { return fmt.Sprintf("vm%d", i) }
	// create retries one request with the same id until it succeeds (60 s bound),
	// alternating controllers like a client with both endpoints.
	create := func(i int) result {
		deadline := time.Now().Add(60 * time.Second)
		r := result{}
		s := spec()
		stopped := i%4 != 0 // a few run (domains to count), the rest only get records
		for {
			r.attempts++
			// A short per-attempt deadline: a call cut off while the controller's txn may
			// have committed is retried, which is the case the request id exists for.
			ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
			resp, err := e.api(r.attempts%2, "").vm.CreateVM(ctx, connect.NewRequest(&pb.CreateVMRequest{
				Name: names(i), Project: "demo", Spec: s, RequestId: reqID(i), Stopped: stopped}))
			cancel()
			if err == nil {
				r.id = resp.Msg.Vm.Id
				return r
			}
			r.err = err
			if time.Now().After(deadline) {
				return r
			}
			time.Sleep(100 * time.Millisecond)
		}
	}

	leader := e.cf.MustLeader()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			time.Sleep(time.Duration(i) * 150 * time.Millisecond) // spread over ~1.8 s
			results[i] = create(i)
		}()
	}
	time.Sleep(500 * time.Millisecond)
	if err := e.cf.Members[leader].Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	wg.Wait()
	measure(t, "ChainFire leader SIGKILL → all creates acknowledged", time.Since(killed).Round(10*time.Millisecond))
	retried := 0
	for i, r := range results {
		if r.id == "" {
			t.Fatalf("create %d never succeeded after %d attempts: %v", i, r.attempts, r.err)
		}
		e.track(r.id)
		if r.attempts > 1 {
			retried++
		}
	}
	measure(t, "creates that needed a retry", fmt.Sprintf("%d of %d", retried, n))
	if err := e.cf.Members[leader].Restart(); err != nil {
		t.Fatal(err)
	}

	// A retry now returns the same VM for every request id.
	c := e.api(0, "")
	for i, r := range results {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		resp, err := c.vm.CreateVM(ctx, connect.NewRequest(&pb.CreateVMRequest{Name: names(i), Project: "demo",
			Spec: spec(), RequestId: reqID(i), Stopped: i%4 != 0}))
		cancel()
		if err != nil || resp.Msg.Vm.Id != r.id {
			t.Fatalf("retry of request %d: %v (id %v, first %s)", i, err, resp, r.id)
		}
	}
	// Exactly n records, one per name; n names.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := e.cfc.Get(ctx, state.Prefix+"vms/", chainfire.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Kvs) != n {
		t.Fatalf("%d VM records, want %d", len(g.Kvs), n)
	}
	list, err := c.vm.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{Project: "demo"}))
	if err != nil {
		t.Fatal(err)
	}
	perName := map[string]int{}
	for _, v := range list.Msg.Vms {
		perName[v.Name]++
	}
	for i := range n {
		if perName[names(i)] != 1 {
			t.Fatalf("name %s: %d VMs, want 1 (%v)", names(i), perName[names(i)], perName)
		}
	}
	// The running ones run once: one domain each, a heartbeat.
	for i, r := range results {
		if i%4 != 0 {
			continue
		}
		e.waitVM(c, r.id, bootTimeout, "running", running(""))
		if k := countDomains(t, fh, r.id); k != 1 {
			t.Fatalf("VM %s: %d domains", r.id, k)
		}
	}
}
