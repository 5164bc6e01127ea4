package chainfire_test

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
)

func TestLease(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx := testCtx(t)
	g, err := c.Grant(ctx, 30)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "l", "v", chainfire.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	ttl, err := c.TimeToLive(ctx, g.ID, true)
	if err != nil || ttl.GrantedTTL != 30 || len(ttl.Keys) != 1 {
		t.Fatalf("TimeToLive = %v, %v", ttl, err)
	}
	ls, err := c.Leases(ctx)
	if err != nil || len(ls.Leases) != 1 {
		t.Fatalf("Leases = %v, %v", ls, err)
	}
	ka, err := c.KeepAliveOnce(ctx, g.ID)
	if err != nil || ka.TTL != 30 {
		t.Fatalf("KeepAliveOnce = %v, %v", ka, err)
	}
	if _, err := c.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if got := keysOf(t, c, ctx, "l"); got != "" {
		t.Fatalf("key of revoked lease still there: %q", got)
	}
	if _, err := c.KeepAliveOnce(ctx, g.ID); !errors.Is(err, chainfire.ErrLeaseNotFound) {
		t.Fatalf("KeepAliveOnce of revoked lease: %v", err)
	}
	if _, err := c.KeepAlive(ctx, g.ID); !errors.Is(err, chainfire.ErrLeaseNotFound) {
		t.Fatalf("KeepAlive of revoked lease: %v", err)
	}
}

// TestKeepAlive: renewals continue across dropped streams and a dead
// member, and the channel closes when the lease is revoked.
func TestKeepAlive(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 2)
	a, b := nodes[0], nodes[1]
	a.keepAliveDrop.Store(2)
	c := newClient(t, chainfire.Config{Endpoints: []string{a.url, b.url}})
	ctx := testCtx(t)
	g, err := c.Grant(ctx, 1) // renewed every ~333 ms
	if err != nil {
		t.Fatal(err)
	}
	ch, err := c.KeepAlive(ctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(15 * time.Second)
	wait := func(cond func() bool, what string) {
		t.Helper()
		for !cond() {
			select {
			case _, ok := <-ch:
				if !ok {
					t.Fatalf("channel closed while waiting for %s", what)
				}
			case <-deadline:
				t.Fatalf("timed out waiting for %s", what)
			}
		}
	}
	wait(func() bool { return b.keepAliveCalls.Load() >= 2 }, "renewals on b after a's stream dropped")
	if a.keepAliveCalls.Load() < 3 {
		t.Fatalf("a saw %d keepalives", a.keepAliveCalls.Load())
	}
	if _, err := c.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatal("channel not closed after revoke")
		}
	}
}

func TestSnapshot(t *testing.T) {
	t.Parallel()
	s, nodes := newFakeCluster(t, 2)
	c := newClient(t, chainfire.Config{Endpoints: []string{deadURL(t), nodes[0].url}})
	ctx := testCtx(t)
	rc, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, s.snapshot) {
		t.Fatalf("read %d bytes, err %v; want %d bytes", len(got), err, len(s.snapshot))
	}

	nodes[0].truncateSnap.Store(true)
	rc, err = c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if _, err := io.ReadAll(rc); !errors.Is(err, chainfire.ErrSnapshotTruncated) {
		t.Fatalf("truncated snapshot read err = %v", err)
	}
}

func TestClusterAndMaintenance(t *testing.T) {
	t.Parallel()
	s, nodes := newFakeCluster(t, 3)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[1].url, nodes[2].url, nodes[0].url}})
	ctx := testCtx(t)

	st, err := c.Status(ctx, nodes[2].url)
	if err != nil || st.Header.MemberId != nodes[2].id || st.Leader != nodes[0].id {
		t.Fatalf("Status = %v, %v", st, err)
	}
	if _, err := c.HashKV(ctx, nodes[1].url, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Defragment(ctx, nodes[1].url); err != nil {
		t.Fatal(err)
	}
	// MoveLeader must reach the leader although it is the last endpoint.
	if _, err := c.MoveLeader(ctx, nodes[2].id); err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	leader := s.leader
	s.mu.Unlock()
	if leader != nodes[2].id {
		t.Fatalf("leader = %x, want %x", leader, nodes[2].id)
	}

	ml, err := c.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("MemberList = %v, %v", ml, err)
	}
	add, err := c.MemberAddAsLearner(ctx, []string{"http://10.0.0.9:2380"})
	if err != nil || !add.Member.IsLearner {
		t.Fatalf("MemberAddAsLearner = %v, %v", add, err)
	}
	if _, err := c.MemberPromote(ctx, add.Member.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MemberUpdate(ctx, add.Member.ID, []string{"http://10.0.0.10:2380"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MemberRemove(ctx, add.Member.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MemberAdd(ctx, []string{"http://10.0.0.11:2380"}); err != nil {
		t.Fatal(err)
	}
	ml, err = c.MemberList(ctx)
	if err != nil || len(ml.Members) != 4 {
		t.Fatalf("MemberList = %v, %v", ml, err)
	}
}
