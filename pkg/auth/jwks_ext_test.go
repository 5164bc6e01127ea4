package auth_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

func TestJWKSOutageServedFromCache(t *testing.T) {
	t.Parallel()
	ed := newSigner(t, auth.AlgEdDSA, "k1")
	iam := newFakeJWKS(t, ed.jwk(t))
	keys, err := auth.NewJWKS(auth.JWKSConfig{Endpoints: []string{iam.srv.URL},
		RefreshInterval: 20 * time.Millisecond, MinRefreshInterval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = keys.Run(ctx) }()
	<-keys.Loaded()
	iam.fail.Store(true)
	before := iam.hits.Load()
	for iam.hits.Load() < before+3 { // several refreshes fail
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := keys.Key(ctx, "k1"); err != nil {
		t.Fatalf("cached key lost in outage: %v", err)
	}
	if err := keys.Ready(); err != nil {
		t.Fatalf("Ready during outage: %v", err)
	}
	if _, err := keys.Key(ctx, "nope"); !errors.Is(err, auth.ErrUnknownKey) {
		t.Fatalf("unknown kid during outage: %v", err)
	}
	cancel()
	<-done
}

func TestJWKSNeverLoadedIsUnavailable(t *testing.T) {
	t.Parallel()
	iam := newFakeJWKS(t)
	iam.fail.Store(true)
	keys, _ := auth.NewJWKS(auth.JWKSConfig{Endpoints: []string{iam.srv.URL}})
	_, err := keys.Key(ctxT(t), "k1")
	if !errors.Is(err, auth.ErrKeysUnavailable) || auth.Code(err).String() != "unavailable" {
		t.Fatalf("err %v", err)
	}
	if keys.Ready() == nil {
		t.Fatal("ready without keys")
	}
}

func TestJWKSUnknownKidRateLimited(t *testing.T) {
	t.Parallel()
	k1 := newSigner(t, auth.AlgEdDSA, "k1")
	k2 := newSigner(t, auth.AlgES256, "k2")
	iam := newFakeJWKS(t, k1.jwk(t))
	clk := newClock(t0)
	keys, _ := auth.NewJWKS(auth.JWKSConfig{Endpoints: []string{iam.srv.URL}, Now: clk.Now})
	ctx := ctxT(t)
	if err := keys.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if iam.hits.Load() != 1 {
		t.Fatalf("hits %d", iam.hits.Load())
	}
	// Many concurrent lookups of unknown kids within the min interval:
	// no fetch at all (the last one started 0 s ago).
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { _, _ = keys.Key(ctx, "unknown") })
	}
	wg.Wait()
	if n := iam.hits.Load(); n != 1 {
		t.Fatalf("unknown kid within the min interval fetched: hits %d", n)
	}
	// Past the interval: one fetch for all concurrent callers, which then
	// finds a newly published key.
	iam.setKeys(k1.jwk(t), k2.jwk(t))
	clk.Add(auth.DefaultJWKSMinRefreshInterval)
	var mu sync.Mutex
	found := 0
	for range 50 {
		wg.Go(func() {
			if _, err := keys.Key(ctx, "k2"); err == nil {
				mu.Lock()
				found++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if n := iam.hits.Load(); n != 2 {
		t.Fatalf("concurrent unknown-kid refreshes not coalesced: hits %d", n)
	}
	if found != 50 {
		t.Fatalf("only %d of 50 callers found the new key", found)
	}
	// Still unknown right after: no new fetch.
	if _, err := keys.Key(ctx, "k3"); !errors.Is(err, auth.ErrUnknownKey) {
		t.Fatal(err)
	}
	if n := iam.hits.Load(); n != 2 {
		t.Fatalf("hits %d", n)
	}
}

func TestJWKSEndpointFailover(t *testing.T) {
	t.Parallel()
	k1 := newSigner(t, auth.AlgEdDSA, "k1")
	down := newFakeJWKS(t, k1.jwk(t))
	down.fail.Store(true)
	dead := newFakeJWKS(t)
	deadURL := dead.srv.URL
	dead.srv.Close() // connection refused
	up := newFakeJWKS(t, k1.jwk(t))
	keys, _ := auth.NewJWKS(auth.JWKSConfig{Endpoints: []string{down.srv.URL, deadURL, up.srv.URL}})
	if err := keys.Refresh(ctxT(t)); err != nil {
		t.Fatalf("refresh with one healthy endpoint of three: %v", err)
	}
	if _, err := keys.Key(ctxT(t), "k1"); err != nil {
		t.Fatal(err)
	}
	if down.hits.Load() != 1 || up.hits.Load() != 1 {
		t.Fatalf("hits down=%d up=%d", down.hits.Load(), up.hits.Load())
	}
	// Sticky: the next refresh goes straight to the healthy endpoint.
	if err := keys.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if down.hits.Load() != 1 || up.hits.Load() != 2 {
		t.Fatalf("hits down=%d up=%d", down.hits.Load(), up.hits.Load())
	}
}

func TestJWKSKeyChangedTriggersRefresh(t *testing.T) {
	t.Parallel()
	k1 := newSigner(t, auth.AlgEdDSA, "k1")
	k2 := newSigner(t, auth.AlgEdDSA, "k2")
	iam := newFakeJWKS(t, k1.jwk(t))
	keys, _ := auth.NewJWKS(auth.JWKSConfig{Endpoints: []string{iam.srv.URL}, MinRefreshInterval: 10 * time.Millisecond})
	policy := auth.NewPolicy(auth.PolicyConfig{OnSigningKey: keys.KeyChanged})
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	go func() { _ = keys.Run(ctx) }()
	<-keys.Loaded()
	iam.setKeys(k1.jwk(t), k2.jwk(t))
	mustApply(t, policy, builtinSnapshot(5, put(&iamv1.SigningKey{Kid: "k2", State: iamv1.KeyState_KEY_STATE_PENDING})))
	waitFor(t, func() bool { return keys.Known("k2") })
	iam.setKeys(k2.jwk(t))
	mustApply(t, policy, changes(6, put(&iamv1.SigningKey{Kid: "k1", State: iamv1.KeyState_KEY_STATE_REMOVED})))
	waitFor(t, func() bool { return !keys.Known("k1") })
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
