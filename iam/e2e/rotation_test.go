package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// TestKeyRotationUnderLoad rotates the signing key three times while tokens are issued
// and verified continuously at a pkg/auth service: zero failed verifications, a token
// signed by a key that was just retired still verifies, and the keys go through
// pending → active → retired → removed (access tokens live 10 s, so retired keys are
// removed within the test).
func TestKeyRotationUnderLoad(t *testing.T) {
	const (
		publishDelay = 2 * time.Second
		accessTTL    = 10 * time.Second // the server's minimum
		skew         = time.Second
		rotations    = 3
		workers      = 4
	)
	e := startEnv(t, 1, "--key-publish-delay", publishDelay.String(), "--access-token-ttl", accessTTL.String(), "--clock-skew", skew.String())
	admin := e.admin(t)
	ctx := bg(t)
	sa, err := admin.CreateServiceAccount(ctx, &iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: "worker", RateLimitExempt: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
		Principal: "serviceaccount:worker", Role: "reader", Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	prot := startProtected(t, e.endpoints(), e.watcher(t, admin, "verifier"),
		protectedConfig{JWKSRefreshInterval: time.Second, ClockSkew: skew})
	grant := func(ctx context.Context) (string, error) {
		resp, err := admin.Token(ctx, &iamv1.TokenRequest{GrantType: "client_credentials", ClientId: "worker", ClientSecret: sa.ClientSecret})
		if err != nil {
			return "", err
		}
		return resp.AccessToken, nil
	}
	keyStates := func() map[string]iamv1.KeyState {
		t.Helper()
		kctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := admin.ListKeys(kctx, &iamv1.ListKeysRequest{})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]iamv1.KeyState{}
		for _, k := range resp.Keys {
			m[k.Kid] = k.State
		}
		return m
	}

	var (
		verified, failed atomic.Int64
		perKid           sync.Map // kid → *atomic.Int64
		mu               sync.Mutex
		errs             []string
	)
	record := func(format string, args ...any) {
		failed.Add(1)
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, fmt.Sprintf(format, args...))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				gctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				tok, err := grant(gctx)
				cancel()
				if err != nil {
					record("worker %d grant: %v", w, err)
					continue
				}
				if err := prot.get(tok); err != nil {
					record("worker %d verify (kid %s): %v", w, kidOf(tok), err)
					continue
				}
				verified.Add(1)
				n, _ := perKid.LoadOrStore(kidOf(tok), new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		})
	}

	initial := keyStates()
	if len(initial) != 1 {
		t.Fatalf("keys at start: %v", initial)
	}
	var kids []string
	for kid := range initial {
		kids = append(kids, kid)
	}
	start := time.Now()
	for r := range rotations {
		// A token signed by the key about to be retired.
		gctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		old, err := grant(gctx)
		if err != nil {
			t.Fatal(err)
		}
		rotated, err := admin.RotateKey(gctx, &iamv1.RotateKeyRequest{})
		cancel()
		if err != nil {
			t.Fatalf("rotation %d: %v", r+1, err)
		}
		if rotated.Key.State != iamv1.KeyState_KEY_STATE_PENDING {
			t.Fatalf("rotation %d: new key %s in state %v, want pending", r+1, rotated.Key.Kid, rotated.Key.State)
		}
		prev, next := kids[len(kids)-1], rotated.Key.Kid
		kids = append(kids, next)
		d := waitFor(t, 15*time.Second, fmt.Sprintf("rotation %d: %s active, %s retired", r+1, next, prev), func() error {
			if st := keyStates(); st[next] != iamv1.KeyState_KEY_STATE_ACTIVE || st[prev] != iamv1.KeyState_KEY_STATE_RETIRED {
				return fmt.Errorf("states %v", st)
			}
			return nil
		})
		if kidOf(old) != prev {
			t.Fatalf("token issued before rotation %d signed by %s, want %s", r+1, kidOf(old), prev)
		}
		if err := prot.get(old); err != nil {
			t.Fatalf("token signed by the retired-but-published key %s: %v", prev, err)
		}
		t.Logf("rotation %d at %v: %s active %v after RotateKey (publish delay %v); a token of retired %s still verifies",
			r+1, time.Since(start).Round(time.Millisecond), next, d.Round(time.Millisecond), publishDelay, prev)
		// Let the load run on the new key for a while (spacing, not an assertion).
		time.Sleep(2 * time.Second)
	}

	// Retired keys are removed once every token they signed has expired (TTL + skew).
	final := kids[len(kids)-1]
	d := waitFor(t, 30*time.Second, "retired keys removed", func() error {
		st := keyStates()
		active := 0
		for _, s := range st {
			if s == iamv1.KeyState_KEY_STATE_ACTIVE {
				active++
			}
		}
		if active != 1 || st[final] != iamv1.KeyState_KEY_STATE_ACTIVE {
			return fmt.Errorf("want only %s active: %v", final, st)
		}
		if _, ok := st[kids[0]]; ok {
			return fmt.Errorf("first key %s still listed: %v", kids[0], st)
		}
		return nil
	})
	close(stop)
	wg.Wait()
	st := keyStates()
	t.Logf("keys at the end (first key's removal awaited %v after the last rotation's spacing): %v", d.Round(time.Millisecond), st)
	for i, kid := range kids[:len(kids)-1] {
		if s, ok := st[kid]; ok && s != iamv1.KeyState_KEY_STATE_RETIRED {
			t.Errorf("key %d (%s) in state %v, want retired or removed", i, kid, s)
		}
	}
	var counts []string
	for _, kid := range kids {
		n := int64(0)
		if v, ok := perKid.Load(kid); ok {
			n = v.(*atomic.Int64).Load()
		}
		counts = append(counts, fmt.Sprintf("%s=%d", kid, n))
	}
	t.Logf("%d rotations, %d verifications at the service, %d failed; per key: %s",
		rotations, verified.Load(), failed.Load(), strings.Join(counts, " "))
	mu.Lock()
	defer mu.Unlock()
	for i, s := range errs {
		if i == 10 {
			t.Errorf("… %d more", len(errs)-10)
			break
		}
		t.Error(s)
	}
	for _, kid := range kids[1:] {
		if v, ok := perKid.Load(kid); !ok || v.(*atomic.Int64).Load() == 0 {
			t.Errorf("no token signed by %s was verified", kid)
		}
	}
}

// kidOf returns the kid of a JWS header ("" if unreadable).
func kidOf(tok string) string {
	h, _, _ := strings.Cut(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return ""
	}
	var hdr struct {
		Kid string `json:"kid"`
	}
	_ = json.Unmarshal(b, &hdr)
	return hdr.Kid
}
