package policy_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"plasmacloud.dev/iam/internal/policy"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

func putRole(t *testing.T, cl *chainfire.Client, name string) int64 {
	t.Helper()
	v, _ := protojson.Marshal(&iamv1.Role{Name: name, Permissions: []string{"vm.get"}})
	resp, err := cl.Put(context.Background(), "/iam/roles/"+name, string(v))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision
}

func TestStream(t *testing.T) {
	c := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cl, err := chainfire.New(chainfire.Config{Endpoints: c.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	putRole(t, cl, "r0")
	if _, err := cl.Put(ctx, "/iam/users/u", "{}"); err != nil { // not carried
		t.Fatal(err)
	}
	v := policy.New(policy.Config{Client: cl, RingSize: 3, Heartbeat: 100 * time.Millisecond})
	if err := v.Start(ctx); err != nil {
		t.Fatal(err)
	}
	start := v.Revision()

	t.Run("snapshot then ordered deltas", func(t *testing.T) {
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		msgs := make(chan *iamv1.WatchPolicyResponse, 100)
		go v.Stream(sctx, 0, func(m *iamv1.WatchPolicyResponse) error { msgs <- m; return nil })
		snap := <-msgs
		if !snap.Snapshot || len(snap.Changes) != 1 || snap.Changes[0].GetRole().GetName() != "r0" {
			t.Fatalf("snapshot %v", snap)
		}
		r1 := putRole(t, cl, "r1")
		if _, err := cl.Delete(ctx, "/iam/roles/r0"); err != nil {
			t.Fatal(err)
		}
		var got []string
		last := snap.Revision
		heartbeat := false
		for len(got) < 2 || !heartbeat {
			m := <-msgs
			if m.Revision < last {
				t.Fatalf("revision went back: %d after %d", m.Revision, last)
			}
			last = m.Revision
			if len(m.Changes) == 0 {
				heartbeat = len(got) == 2
				continue
			}
			for _, ch := range m.Changes {
				got = append(got, fmt.Sprintf("%v %s", ch.Op, ch.GetRole().GetName()))
			}
			if len(got) == 1 && m.Revision != r1 {
				t.Fatalf("delta at %d, want %d", m.Revision, r1)
			}
		}
		if got[0] != "OP_PUT r1" || got[1] != "OP_DELETE r0" {
			t.Fatalf("deltas %v", got)
		}
	})
	t.Run("resume from the ring or snapshot", func(t *testing.T) {
		first := func(after int64) *iamv1.WatchPolicyResponse {
			sctx, scancel := context.WithCancel(ctx)
			defer scancel()
			var m *iamv1.WatchPolicyResponse
			errStop := errors.New("stop")
			_ = v.Stream(sctx, after, func(r *iamv1.WatchPolicyResponse) error { m = r; return errStop })
			return m
		}
		if m := first(start); m.Snapshot || m.Changes[0].GetRole().GetName() != "r1" {
			t.Fatalf("resume from %d: %v", start, m)
		}
		for i := range 5 {
			putRole(t, cl, fmt.Sprintf("x%d", i))
		}
		time.Sleep(200 * time.Millisecond)
		if m := first(start); !m.Snapshot {
			t.Fatalf("resume from a revision the ring lost gave %v, want a snapshot", m)
		}
	})
	t.Run("slow consumer is cut", func(t *testing.T) {
		sctx, scancel := context.WithCancel(ctx)
		defer scancel()
		n := 0
		err := v.Stream(sctx, 0, func(*iamv1.WatchPolicyResponse) error {
			n++
			if n == 1 { // stall after the snapshot while the ring moves on
				for i := range 5 {
					putRole(t, cl, fmt.Sprintf("s%d", i))
				}
				time.Sleep(300 * time.Millisecond)
			}
			return nil
		})
		if !errors.Is(err, policy.ErrSlowConsumer) {
			t.Fatalf("slow consumer: %v", err)
		}
	})
	t.Run("drain", func(t *testing.T) {
		drain := make(chan struct{})
		v2 := policy.New(policy.Config{Client: cl, Drain: drain})
		if err := v2.Start(ctx); err != nil {
			t.Fatal(err)
		}
		close(drain)
		if err := v2.Stream(ctx, 0, func(*iamv1.WatchPolicyResponse) error { return nil }); !errors.Is(err, policy.ErrDraining) {
			t.Fatalf("drain: %v", err)
		}
	})
}
