package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/resilience"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// TestIAMDownServesFromCache stops every IAM replica: a pkg/auth service keeps
// authorizing a valid token and rejecting a token revoked before the outage for its
// staleness window, then fails closed (Unavailable), and recovers without a restart once
// one replica is back.
func TestIAMDownServesFromCache(t *testing.T) {
	const staleness = 8 * time.Second
	e := startEnv(t, 2)
	admin := e.admin(t)
	base := e.client(t, nil)
	ctx := bg(t)
	if _, err := admin.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "p1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateUser(ctx, &iamv1.CreateUserRequest{User: &iamv1.User{Name: "alice"}, Password: "alice-pass-1234"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
		Principal: "user:alice", Role: "member", Project: "p1", Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	prot := startProtected(t, e.endpoints(), e.watcher(t, admin, "verifier"), protectedConfig{Staleness: staleness})

	valid := login(t, base, "alice", "alice-pass-1234", "p1").AccessToken
	revoked := login(t, base, "alice", "alice-pass-1234", "p1").AccessToken
	for _, tok := range []string{valid, revoked} {
		if err := prot.get(tok); err != nil {
			t.Fatalf("token before the outage: %v", err)
		}
	}
	if _, err := admin.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_AccessToken{AccessToken: revoked}}); err != nil {
		t.Fatal(err)
	}
	waitCode(t, revocationBound, "revoked token at the service", connect.CodeUnauthenticated, func() error { return prot.get(revoked) })

	for _, r := range e.replicas {
		if err := r.Kill(); err != nil {
			t.Fatal(err)
		}
	}
	killed := time.Now()
	last := prot.svc.Policy.LastUpdate()
	freshUntil := last.Add(staleness)
	t.Logf("every replica SIGKILLed; policy copy last updated %v before the kill, fresh until %v after it",
		killed.Sub(last).Round(time.Millisecond), freshUntil.Sub(killed).Round(time.Millisecond))

	// Inside the window (minus a second of margin): served from the cached keys and policy.
	checks := 0
	for time.Now().Before(freshUntil.Add(-time.Second)) {
		if err := prot.get(valid); err != nil {
			t.Fatalf("valid token %v into the outage: %v", time.Since(killed).Round(time.Millisecond), err)
		}
		if err := prot.get(revoked); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("revoked token %v into the outage: %v, want Unauthenticated", time.Since(killed).Round(time.Millisecond), err)
		}
		checks++
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%d check pairs during the outage: valid authorized, revoked rejected, for %v", checks, time.Since(killed).Round(time.Millisecond))

	// After the window: fail closed.
	waitCode(t, staleness+10*time.Second, "stale policy copy fails closed", connect.CodeUnavailable, func() error { return prot.get(valid) })
	stale := time.Now()
	if stale.Before(freshUntil) {
		t.Fatalf("Unavailable %v before the window ended", freshUntil.Sub(stale))
	}
	t.Logf("Unavailable %v after the kill (%v after the window ended)", stale.Sub(killed).Round(time.Millisecond), stale.Sub(freshUntil).Round(time.Millisecond))
	if err := prot.get(revoked); err == nil {
		t.Fatal("revoked token accepted by a stale service")
	}

	// One replica back: the follower resumes, the service recovers without a restart.
	if err := e.replicas[0].Start(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	d, _ := waitCode(t, 30*time.Second, "service recovers after a replica restarts", 0, func() error { return prot.get(valid) })
	t.Logf("service authorizes again %v after the restart began (%v after it)", time.Since(restarted).Round(time.Millisecond), d)
	if err := prot.get(revoked); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("revoked token after recovery: %v", err)
	}
	rctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := admin.ListUsers(rctx, &iamv1.ListUsersRequest{}); err != nil {
		t.Fatalf("admin call after the restart: %v", err)
	}
}

// TestChainFireDown freezes ChainFire (SIGSTOP: sockets open, nothing answers) under a
// running replica: logins and admin calls fail Unavailable within a bound instead of
// hanging, /readyz reports it, JWKS keeps being served, a pkg/auth service keeps
// verifying; once ChainFire resumes, logins work again.
func TestChainFireDown(t *testing.T) {
	e := startEnv(t, 1)
	admin := e.admin(t)
	base := e.client(t, nil)
	ctx := bg(t)
	if _, err := admin.CreateUser(ctx, &iamv1.CreateUserRequest{User: &iamv1.User{Name: "alice"}, Password: "alice-pass-1234"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
		Principal: "user:alice", Role: "reader", Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	prot := startProtected(t, e.endpoints(), e.watcher(t, admin, "verifier"), protectedConfig{})
	valid := login(t, base, "alice", "alice-pass-1234", "").AccessToken
	adminTok := login(t, base, "admin", adminPassword, "").AccessToken
	if err := prot.get(valid); err != nil {
		t.Fatal(err)
	}

	cf := e.cf.Members[0]
	if err := cf.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := true
	defer func() {
		if stopped {
			_ = cf.Cont()
		}
	}()
	url := e.replicas[0].URL
	hc := resilience.NewHTTPClient(resilience.TransportOptions{})

	// No retries here (the raw generated clients): one attempt each, bounded by 30 s.
	tokens := iamv1connect.NewTokenServiceClient(hc, url)
	users := iamv1connect.NewUserServiceClient(hc, url, connect.WithInterceptors(auth.BearerInterceptor(
		func(context.Context) (string, error) { return adminTok, nil })))
	for _, tc := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"password login", func(ctx context.Context) error {
			_, err := tokens.Token(ctx, connect.NewRequest(&iamv1.TokenRequest{GrantType: "password", Username: "alice", Password: "alice-pass-1234"}))
			return err
		}},
		{"admin read", func(ctx context.Context) error {
			_, err := users.ListUsers(ctx, connect.NewRequest(&iamv1.ListUsersRequest{}))
			return err
		}},
		{"admin write", func(ctx context.Context) error {
			_, err := users.CreateUser(ctx, connect.NewRequest(&iamv1.CreateUserRequest{User: &iamv1.User{Name: "bob"}, Password: "bob-pass-12345"}))
			return err
		}},
	} {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		start := time.Now()
		err := tc.call(cctx)
		cancel()
		d := time.Since(start)
		t.Logf("%s with ChainFire frozen: %v after %v", tc.name, err, d.Round(time.Millisecond))
		if connect.CodeOf(err) != connect.CodeUnavailable {
			t.Errorf("%s with ChainFire frozen: %v after %v, want Unavailable", tc.name, err, d)
		}
		if d > 15*time.Second {
			t.Errorf("%s took %v with ChainFire frozen, want a bounded failure", tc.name, d)
		}
	}

	d := waitFor(t, 30*time.Second, "/readyz reports ChainFire", func() error {
		resp, err := hc.Get(url + "/readyz")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return fmt.Errorf("still ready: %s", body)
		}
		t.Logf("/readyz: %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		return nil
	})
	t.Logf("/readyz not ready %v into the freeze (after the calls above)", d.Round(time.Millisecond))
	resp, err := hc.Get(url + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("JWKS with ChainFire frozen: %d", resp.StatusCode)
	}
	if err := prot.get(valid); err != nil {
		t.Fatalf("verification with ChainFire frozen: %v", err)
	}

	if err := cf.Cont(); err != nil {
		t.Fatal(err)
	}
	stopped = false
	resumed := time.Now()
	waitFor(t, 30*time.Second, "login after ChainFire resumed", func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := tokens.Token(cctx, connect.NewRequest(&iamv1.TokenRequest{GrantType: "password", Username: "alice", Password: "alice-pass-1234"}))
		return err
	})
	t.Logf("login works again %v after ChainFire resumed", time.Since(resumed).Round(time.Millisecond))
	e.waitReady(t, e.replicas[0])
}
