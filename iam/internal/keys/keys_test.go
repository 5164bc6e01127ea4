package keys_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/mvccpb"
)

func newClient(t *testing.T) *chainfire.Client {
	t.Helper()
	c := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cl, err := chainfire.New(chainfire.Config{Endpoints: c.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func newManager(t *testing.T, cl *chainfire.Client, mk *keys.MasterKey, alg string) *keys.Manager {
	t.Helper()
	m, err := keys.New(keys.Config{
		Client: cl, MasterKey: mk, Algorithm: alg,
		PublishDelay: 300 * time.Millisecond, RotationInterval: -1, RetireFor: 600 * time.Millisecond,
		CheckInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func states(ks []*iamv1.SigningKey) map[string]iamv1.KeyState {
	out := map[string]iamv1.KeyState{}
	for _, k := range ks {
		out[k.Kid] = k.State
	}
	return out
}

func jwksKids(t *testing.T, b []byte) []string {
	var set struct {
		Keys []struct {
			Kid string `json:"kid"`
			D   string `json:"d"`
		} `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		t.Fatal(err)
	}
	var kids []string
	for _, k := range set.Keys {
		if k.D != "" {
			t.Fatalf("JWKS publishes private material for %s", k.Kid)
		}
		kids = append(kids, k.Kid)
	}
	return kids
}

// TestLifecycle: first start activates at once; a rotation is published (pending) before
// it signs; the old key retires when the new one activates, and is removed after RetireFor.
func TestLifecycle(t *testing.T) {
	for _, alg := range []string{keys.AlgEdDSA, keys.AlgES256} {
		t.Run(alg, func(t *testing.T) {
			cl := newClient(t)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			m := newManager(t, cl, keys.InsecureDevMasterKey(), alg)
			if err := m.Start(ctx); err != nil {
				t.Fatal(err)
			}
			first, err := m.Active()
			if err != nil {
				t.Fatal(err)
			}
			if first.Alg != alg {
				t.Fatalf("alg %s, want %s", first.Alg, alg)
			}
			pending, err := m.Rotate(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if pending.State != iamv1.KeyState_KEY_STATE_PENDING {
				t.Fatalf("rotated key state %v", pending.State)
			}
			waitFor(t, "pending key in JWKS", 2*time.Second, func() bool {
				return strings.Contains(string(m.JWKS()), pending.Kid)
			})
			if a, _ := m.Active(); a.Kid != first.Kid {
				t.Fatalf("pending key %s signs before its publish delay", a.Kid)
			}
			waitFor(t, "pending key active", 3*time.Second, func() bool {
				a, _ := m.Active()
				return a != nil && a.Kid == pending.Kid
			})
			st := states(m.Keys())
			if st[first.Kid] != iamv1.KeyState_KEY_STATE_RETIRED {
				t.Fatalf("old key state %v, want retired", st[first.Kid])
			}
			if kids := jwksKids(t, m.JWKS()); len(kids) != 2 {
				t.Fatalf("JWKS kids %v, want old (retired) and new", kids)
			}
			waitFor(t, "retired key removed", 3*time.Second, func() bool {
				_, ok := states(m.Keys())[first.Kid]
				return !ok
			})
			if kids := jwksKids(t, m.JWKS()); len(kids) != 1 || kids[0] != pending.Kid {
				t.Fatalf("JWKS kids %v after removal", kids)
			}
			if _, err := m.PublicKey(ctx, first.Kid); !errors.Is(err, keys.ErrUnknownKey) {
				t.Fatalf("removed key lookup: %v", err)
			}
		})
	}
}

// TestRacingManagers: several managers over one ChainFire, rotating and reconciling at
// once, never make two keys active at one revision.
func TestRacingManagers(t *testing.T) {
	cl := newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start, err := cl.Get(ctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	var ms []*keys.Manager
	for range 3 {
		m, err := keys.New(keys.Config{Client: cl, MasterKey: keys.InsecureDevMasterKey(),
			PublishDelay: 100 * time.Millisecond, RotationInterval: 150 * time.Millisecond,
			RetireFor: 300 * time.Millisecond, CheckInterval: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(ms))
	for _, m := range ms {
		wg.Go(func() { errs <- m.Start(ctx) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range ms {
		wg.Go(func() {
			for range 5 {
				_, _ = m.Rotate(ctx)
				time.Sleep(80 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond)
	cancel()

	// Replay every revision of the prefix and check the invariant after each.
	hctx, hcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer hcancel()
	now, err := cl.Get(hctx, "/")
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]iamv1.KeyState{}
	wch := cl.Watch(hctx, keys.Prefix, chainfire.WithPrefix(), chainfire.WithRev(start.Header.Revision+1))
	revs, activations := 0, 0
	for wr := range wch {
		if wr.Err != nil {
			t.Fatal(wr.Err)
		}
		byRev := map[int64][]*mvccpb.Event{}
		var order []int64
		for _, ev := range wr.Events {
			r := ev.Kv.ModRevision
			if _, ok := byRev[r]; !ok {
				order = append(order, r)
			}
			byRev[r] = append(byRev[r], ev)
		}
		for _, r := range order {
			for _, ev := range byRev[r] {
				kid := strings.TrimPrefix(string(ev.Kv.Key), keys.Prefix)
				if ev.Type == mvccpb.Event_DELETE {
					delete(state, kid)
					continue
				}
				k, err := keys.DecodePublic(string(ev.Kv.Key), ev.Kv.Value)
				if err != nil {
					t.Fatal(err)
				}
				if k.State == iamv1.KeyState_KEY_STATE_ACTIVE && state[kid] != k.State {
					activations++
				}
				state[kid] = k.State
			}
			active := 0
			for _, s := range state {
				if s == iamv1.KeyState_KEY_STATE_ACTIVE {
					active++
				}
			}
			revs++
			if active != 1 {
				t.Fatalf("revision %d: %d active keys: %v", r, active, state)
			}
		}
		if len(wr.Events) > 0 && wr.Events[len(wr.Events)-1].Kv.ModRevision >= now.Header.Revision {
			break
		}
	}
	if activations < 3 {
		t.Fatalf("only %d activations over %d revisions: rotation did not run", activations, revs)
	}
	t.Logf("%d key revisions, %d activations, always exactly one active key", revs, activations)
}

// TestWrongMasterKey: a replica with another master key refuses to start, saying why.
func TestWrongMasterKey(t *testing.T) {
	cl := newClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := newManager(t, cl, keys.InsecureDevMasterKey(), keys.AlgEdDSA).Start(ctx); err != nil {
		t.Fatal(err)
	}
	other, err := keys.ParseMasterKey([]byte(keys.GenerateMasterKeyText()))
	if err != nil {
		t.Fatal(err)
	}
	err = newManager(t, cl, other, keys.AlgEdDSA).Start(ctx)
	if !errors.Is(err, keys.ErrMasterKey) || !strings.Contains(err.Error(), "master") {
		t.Fatalf("start with wrong master key: %v, want ErrMasterKey", err)
	}
}

func TestParseMasterKey(t *testing.T) {
	good := keys.GenerateMasterKeyText()
	for _, tc := range []struct {
		name, text string
		ok         bool
	}{
		{"base64", good, true},
		{"base64 newline", good + "\n", true},
		{"raw 32 bytes", "0123456789abcdef0123456789abcdef", true},
		{"short", "c2hvcnQ=", false},
		{"garbage", "!!!not base64!!!", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := keys.ParseMasterKey([]byte(tc.text))
			if (err == nil) != tc.ok {
				t.Fatalf("err %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, keys.ErrMasterKey) {
				t.Fatalf("err %v does not wrap ErrMasterKey", err)
			}
		})
	}
}
