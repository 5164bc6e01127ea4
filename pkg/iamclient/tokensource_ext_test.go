package iamclient_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// fakeClock is a settable clock, safe for concurrent use.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// tokens calls ts.Token from n goroutines at once and returns the distinct tokens seen.
func tokens(t *testing.T, ts iamclient.TokenSource, n int) map[string]int {
	t.Helper()
	var (
		mu   sync.Mutex
		seen = map[string]int{}
		wg   sync.WaitGroup
	)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tok, err := ts.Token(testCtx(t))
			if err != nil {
				t.Errorf("Token: %v", err)
				return
			}
			mu.Lock()
			seen[tok]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return seen
}

// TestTokenSourceCaching: one grant for many concurrent callers; cached until 80% of the
// lifetime; then served at once while one background grant runs; after expiry callers
// wait for one grant.
func TestTokenSourceCaching(t *testing.T) {
	t.Parallel()
	st, reps := newFakeReplicas(t, 1)
	st.expiresIn = 100
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	c := newClient(t, iamclient.Config{Endpoints: []string{reps[0].url}})
	ts, err := c.NewTokenSource(iamclient.TokenSourceConfig{ClientID: "robot", ClientSecret: "s3cret", Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()

	if seen := tokens(t, ts, 50); len(seen) != 1 || st.grants.Load() != 1 {
		t.Fatalf("first burst: tokens %v, grants %d; want one token from one grant", seen, st.grants.Load())
	}
	clock.Advance(79 * time.Second) // below 80%
	if seen := tokens(t, ts, 20); len(seen) != 1 || st.grants.Load() != 1 {
		t.Fatalf("before 80%%: tokens %v, grants %d", seen, st.grants.Load())
	}
	clock.Advance(2 * time.Second) // past 80%, still valid: cached token at once, one refresh
	if seen := tokens(t, ts, 20); seen["at-1"] == 0 {
		t.Fatalf("past 80%%: tokens %v; want the cached token served", seen)
	}
	waitFor(t, func() bool {
		tok, _ := ts.Token(testCtx(t))
		return tok == "at-2"
	})
	if got := st.grants.Load(); got != 2 {
		t.Fatalf("grants = %d, want 2 (one background refresh)", got)
	}
	clock.Advance(200 * time.Second) // at-2 expired: callers block on one grant
	if seen := tokens(t, ts, 30); len(seen) != 1 || seen["at-3"] != 30 || st.grants.Load() != 3 {
		t.Fatalf("after expiry: tokens %v, grants %d; want at-3 for all from one grant", seen, st.grants.Load())
	}
}

// TestTokenSourceRefreshRotation: a refresh-token source keeps the rotated refresh token
// and reports it; a refresh whose outcome is unknown makes the source refuse to present
// the old token again.
func TestTokenSourceRefreshRotation(t *testing.T) {
	t.Parallel()
	st, reps := newFakeReplicas(t, 2)
	st.refresh["rt-0"] = true
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	c := newClient(t, iamclient.Config{Endpoints: []string{reps[0].url, reps[1].url}})
	var saved atomic.Value
	ts, err := c.NewTokenSource(iamclient.TokenSourceConfig{
		RefreshToken: "rt-0",
		Now:          clock.Now,
		OnToken:      func(r *iamv1.TokenResponse) { saved.Store(r.GetRefreshToken()) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	if seen := tokens(t, ts, 20); len(seen) != 1 || st.grants.Load() != 1 {
		t.Fatalf("tokens %v grants %d", seen, st.grants.Load())
	}
	if ts.RefreshToken() != "rt-1" || saved.Load() != "rt-1" {
		t.Fatalf("refresh token = %q, saved %v; want rt-1", ts.RefreshToken(), saved.Load())
	}
	// The next refresh is applied by the replica, which then dies before answering.
	reps[0].inject(fault{apply: true, abort: true})
	clock.Advance(time.Hour)
	_, err = ts.Token(testCtx(t))
	if !errors.Is(err, iamclient.ErrRefreshTokenLost) || !errors.Is(err, iamclient.ErrOutcomeUnknown) {
		t.Fatalf("err = %v, want ErrRefreshTokenLost wrapping ErrOutcomeUnknown", err)
	}
	if reps[1].calls.Load() != 0 {
		t.Fatal("the uncertain refresh was repeated on the other replica")
	}
	// Sticky: no further grant is attempted with the burnt token.
	before := reps[0].calls.Load() + reps[1].calls.Load()
	if _, err := ts.Token(testCtx(t)); !errors.Is(err, iamclient.ErrRefreshTokenLost) {
		t.Fatalf("second Token: %v", err)
	}
	if after := reps[0].calls.Load() + reps[1].calls.Load(); after != before {
		t.Fatalf("%d more calls after the refresh token was lost", after-before)
	}
}

func TestTokenSourceConfig(t *testing.T) {
	t.Parallel()
	c := newClient(t, iamclient.Config{Endpoints: []string{"127.0.0.1:1"}})
	tests := []struct {
		name string
		cfg  iamclient.TokenSourceConfig
		ok   bool
	}{
		{"nothing", iamclient.TokenSourceConfig{}, false},
		{"both", iamclient.TokenSourceConfig{ClientID: "a", ClientSecret: "b", RefreshToken: "r"}, false},
		{"id without secret", iamclient.TokenSourceConfig{ClientID: "a"}, false},
		{"client credentials", iamclient.TokenSourceConfig{ClientID: "a", ClientSecret: "b"}, true},
		{"refresh", iamclient.TokenSourceConfig{RefreshToken: "r"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ts, err := c.NewTokenSource(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			if ts != nil {
				ts.Close()
			}
		})
	}
}

// TestTokenSourceWaiterContext: a caller waiting for a grant gives up with its context.
func TestTokenSourceWaiterContext(t *testing.T) {
	t.Parallel()
	c := newClient(t, iamclient.Config{Endpoints: []string{deadURL(t)}})
	ts, err := c.NewTokenSource(iamclient.TokenSourceConfig{ClientID: "a", ClientSecret: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := ts.Token(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
}
