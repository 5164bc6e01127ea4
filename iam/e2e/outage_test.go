package e2e

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	iamv1 "plasmacloud.dev/proto/iam/v1"
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
