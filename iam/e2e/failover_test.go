package e2e

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// TestReplicaKilledUnderLoad runs two IAM replicas under load from 8 goroutines
// (client_credentials grants and admin reads through one pkg/iamclient listing both, and
// verification of the fresh tokens at a pkg/auth service), SIGKILLs the replica everyone
// is using at ~3 s, and requires zero errors seen by the callers and a policy follower
// that fails over: a revocation made after the kill reaches the service within the bound.
func TestReplicaKilledUnderLoad(t *testing.T) {
	e := startEnv(t, 2)
	admin := e.admin(t)
	ctx := bg(t)
	if _, err := admin.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "p1"}}); err != nil {
		t.Fatal(err)
	}
	sa, err := admin.CreateServiceAccount(ctx, &iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: "worker", RateLimitExempt: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
		Principal: "serviceaccount:worker", Role: "reader", Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	prot := startProtected(t, e.endpoints(), e.watcher(t, admin, "verifier"), protectedConfig{})
	grant := func(ctx context.Context) (*iamv1.TokenResponse, error) {
		return admin.Token(ctx, &iamv1.TokenRequest{GrantType: "client_credentials", ClientId: "worker", ClientSecret: sa.ClientSecret})
	}

	const (
		workers  = 8
		duration = 10 * time.Second
		killAt   = 3 * time.Second
	)
	var (
		ops, grants, verified atomic.Int64
		mu                    sync.Mutex
		errs                  []string
	)
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, fmt.Sprintf(format, args...))
	}
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := 0; time.Since(start) < duration; i++ {
				cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				tok, err := grant(cctx)
				if err != nil {
					cancel()
					fail("worker %d grant: %v", w, err)
					continue
				}
				grants.Add(1)
				if i%2 == 0 {
					_, err = admin.GetProject(cctx, &iamv1.GetProjectRequest{Name: "p1"})
				} else {
					_, err = admin.ListUsers(cctx, &iamv1.ListUsersRequest{})
				}
				if err != nil {
					fail("worker %d admin read: %v", w, err)
				}
				if err := prot.get(tok.AccessToken); err != nil {
					fail("worker %d verify at the service: %v", w, err)
				} else {
					verified.Add(1)
				}
				cancel()
				ops.Add(3)
			}
		})
	}

	time.Sleep(killAt) // schedule of the fault, not an assertion
	before := ops.Load()
	streams := prot.svc.Follower.Streams()
	if err := e.replicas[0].Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	t.Logf("SIGKILLed %s at %v after %d calls", e.replicas[0].Name(), killed.Sub(start).Round(time.Millisecond), before)

	// A revocation after the kill reaches the service: its follower moved to the survivor.
	rctx, rcancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer rcancel()
	victim, err := grant(rctx)
	if err != nil {
		t.Fatalf("grant after the kill: %v", err)
	}
	if err := prot.get(victim.AccessToken); err != nil {
		t.Fatalf("token issued by the survivor: %v", err)
	}
	if _, err := admin.Revoke(rctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_AccessToken{AccessToken: victim.AccessToken}}); err != nil {
		t.Fatalf("revoke after the kill: %v", err)
	}
	revoked := time.Now()
	d, _ := waitCode(t, revocationBound, "revocation after the kill at the service", connect.CodeUnauthenticated, func() error { return prot.get(victim.AccessToken) })
	t.Logf("revocation made %v after the kill reached the service after %v (follower streams opened: %d before the kill, %d after)",
		revoked.Sub(killed).Round(time.Millisecond), d, streams, prot.svc.Follower.Streams())

	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d workers, %v: %d calls (%d grants, %d verified at the service), %d after the kill, %d errors",
		workers, time.Since(start).Round(time.Millisecond), ops.Load(), grants.Load(), verified.Load(), ops.Load()-before, len(errs))
	for i, s := range errs {
		if i == 10 {
			t.Errorf("… %d more", len(errs)-10)
			break
		}
		t.Error(s)
	}
	if ops.Load()-before == 0 {
		t.Fatal("no call completed after the kill")
	}
}

// TestReplicaHung freezes (SIGSTOP) the replica everyone uses: its sockets stay open but
// nothing answers. Reads, grants and revocations through pkg/iamclient move to the other
// replica after the per-attempt timeout with no error visible, and the service's policy
// follower leaves the silent stream (idle timeout) so a revocation still arrives.
func TestReplicaHung(t *testing.T) {
	e := startEnv(t, 2)
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
	prot := startProtected(t, e.endpoints(), e.watcher(t, admin, "verifier"), protectedConfig{})
	hung := e.replicas[0]
	if err := hung.Stop(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = hung.Cont() }()
	stopped := time.Now()

	cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var slowest time.Duration
	for i := range 10 {
		start := time.Now()
		tok, err := admin.Token(cctx, &iamv1.TokenRequest{GrantType: "client_credentials", ClientId: "worker", ClientSecret: sa.ClientSecret})
		if err != nil {
			t.Fatalf("grant %d with a hung replica: %v", i, err)
		}
		if _, err := admin.ListUsers(cctx, &iamv1.ListUsersRequest{}); err != nil {
			t.Fatalf("read %d with a hung replica: %v", i, err)
		}
		if err := prot.get(tok.AccessToken); err != nil {
			t.Fatalf("verify %d with a hung replica: %v", i, err)
		}
		slowest = max(slowest, time.Since(start))
	}
	t.Logf("10 grant+read+verify rounds with %s hung: no error, slowest round %v", hung.Name(), slowest.Round(time.Millisecond))

	victim, err := admin.Token(cctx, &iamv1.TokenRequest{GrantType: "client_credentials", ClientId: "worker", ClientSecret: sa.ClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Revoke(cctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_AccessToken{AccessToken: victim.AccessToken}}); err != nil {
		t.Fatal(err)
	}
	d, _ := waitCode(t, 20*time.Second, "revocation with a hung replica", connect.CodeUnauthenticated, func() error { return prot.get(victim.AccessToken) })
	t.Logf("revocation reached the service after %v (%v after the freeze; follower streams opened: %d)",
		d.Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond), prot.svc.Follower.Streams())
}
