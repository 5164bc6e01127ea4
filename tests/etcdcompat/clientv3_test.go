package etcdcompat

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"plasmacloud.dev/pkg/chainfiretest"
)

func newClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestClientV3(t *testing.T) {
	c := chainfiretest.Start(t, 3, chainfiretest.Options{})
	cli := newClient(t, c.HostPorts())
	follower := newClient(t, []string{c.HostPorts()[c.Follower()]})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	t.Run("kv prefix revision delete", func(t *testing.T) {
		p1, err := follower.Put(ctx, "/kv/a", "1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, "/kv/b", "2"); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, "/kv/a", "3", clientv3.WithPrevKV()); err != nil {
			t.Fatal(err)
		}
		g, err := follower.Get(ctx, "/kv/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		if g.Count != 2 || string(g.Kvs[0].Value) != "3" || string(g.Kvs[1].Value) != "2" || g.Kvs[0].Version != 2 {
			t.Fatalf("get prefix: %+v", g.Kvs)
		}
		old, err := cli.Get(ctx, "/kv/a", clientv3.WithRev(p1.Header.Revision))
		if err != nil || len(old.Kvs) != 1 || string(old.Kvs[0].Value) != "1" {
			t.Fatalf("get at revision %d: %v %+v", p1.Header.Revision, err, old)
		}
		ser, err := follower.Get(ctx, "/kv/a", clientv3.WithSerializable())
		if err != nil || len(ser.Kvs) != 1 {
			t.Fatalf("serializable get: %v %+v", err, ser)
		}
		d, err := cli.Delete(ctx, "/kv/", clientv3.WithPrefix(), clientv3.WithPrevKV())
		if err != nil || d.Deleted != 2 || len(d.PrevKvs) != 2 {
			t.Fatalf("delete prefix: %v %+v", err, d)
		}
	})

	t.Run("txn compare and swap", func(t *testing.T) {
		if _, err := cli.Put(ctx, "cas", "0"); err != nil {
			t.Fatal(err)
		}
		r, err := follower.Txn(ctx).If(clientv3.Compare(clientv3.Value("cas"), "=", "0")).
			Then(clientv3.OpPut("cas", "1"), clientv3.OpGet("cas")).Else(clientv3.OpGet("cas")).Commit()
		if err != nil || !r.Succeeded {
			t.Fatalf("txn: %v %+v", err, r)
		}
		if got := string(r.Responses[1].GetResponseRange().Kvs[0].Value); got != "1" {
			t.Fatalf("txn read own write: %q", got)
		}
		r, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("cas"), "=", 1)).Then(clientv3.OpPut("cas", "x")).Commit()
		if err != nil || r.Succeeded {
			t.Fatalf("txn on stale version should fail: %v %+v", err, r)
		}
	})

	t.Run("watch from start revision", func(t *testing.T) {
		p, err := cli.Put(ctx, "wk", "1")
		if err != nil {
			t.Fatal(err)
		}
		cli.Put(ctx, "wk", "2")
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := follower.Watch(wctx, "wk", clientv3.WithRev(p.Header.Revision))
		go cli.Put(ctx, "wk", "3")
		var got []string
		for len(got) < 3 {
			select {
			case wr := <-wch:
				if err := wr.Err(); err != nil {
					t.Fatal(err)
				}
				for _, ev := range wr.Events {
					got = append(got, string(ev.Kv.Value))
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("watch got %v", got)
			}
		}
		if fmt.Sprint(got) != "[1 2 3]" {
			t.Fatalf("watch events %v", got)
		}
	})

	t.Run("lease keepalive and expiry", func(t *testing.T) {
		g, err := follower.Grant(ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Put(ctx, "lk", "v", clientv3.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		kctx, kcancel := context.WithCancel(ctx)
		ka, err := follower.KeepAlive(kctx, g.ID)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(4 * time.Second)
		if r, _ := cli.Get(ctx, "lk"); len(r.Kvs) != 1 {
			t.Fatal("kept-alive key expired")
		}
		kcancel()
		for range ka {
		}
		ttl, err := cli.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
		if err != nil || ttl.GrantedTTL != 2 || len(ttl.Keys) != 1 {
			t.Fatalf("time to live: %v %+v", err, ttl)
		}
		deadline := time.Now().Add(6 * time.Second)
		for {
			r, err := cli.Get(ctx, "lk")
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Kvs) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("leased key not deleted after expiry")
			}
			time.Sleep(100 * time.Millisecond)
		}
		leases, err := cli.Leases(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range leases.Leases {
			if l.ID == g.ID {
				t.Fatal("expired lease still listed")
			}
		}
	})

	t.Run("member list and status", func(t *testing.T) {
		ml, err := follower.MemberList(ctx)
		if err != nil || len(ml.Members) != 3 {
			t.Fatalf("member list: %v %+v", err, ml)
		}
		var leader uint64
		for _, ep := range c.HostPorts() {
			st, err := cli.Status(ctx, ep)
			if err != nil {
				t.Fatal(err)
			}
			if leader == 0 {
				leader = st.Leader
			}
			if st.Leader == 0 || st.Leader != leader || st.RaftIndex == 0 {
				t.Fatalf("status of %s: %+v", ep, st)
			}
		}
	})

	t.Run("compacted revision", func(t *testing.T) {
		p, _ := cli.Put(ctx, "ck", "1")
		p2, _ := cli.Put(ctx, "ck", "2")
		if _, err := cli.Compact(ctx, p2.Header.Revision); err != nil {
			t.Fatal(err)
		}
		if _, err := cli.Get(ctx, "ck", clientv3.WithRev(p.Header.Revision)); err == nil || err.Error() != "etcdserver: mvcc: required revision has been compacted" {
			t.Fatalf("get below compaction: %v", err)
		}
		// A linearizable read through the follower first: it has then applied the
		// compaction (watches are served from the member's own state, as in etcd).
		if _, err := follower.Get(ctx, "ck"); err != nil {
			t.Fatal(err)
		}
		wr := <-follower.Watch(ctx, "ck", clientv3.WithRev(p.Header.Revision))
		if wr.CompactRevision != p2.Header.Revision {
			t.Fatalf("watch below compaction: compact revision %d, want %d (err %v)", wr.CompactRevision, p2.Header.Revision, wr.Err())
		}
	})
}
