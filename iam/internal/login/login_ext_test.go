package login_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/login"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// syncBuffer collects audit output from concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func newStore(t *testing.T, hash store.HashParams) *store.Store {
	t.Helper()
	cl := chainfiretest.Start(t, 1, chainfiretest.Options{})
	c, err := chainfire.New(chainfire.Config{Endpoints: cl.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := store.New(c, store.Options{Hash: hash})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newAuth(t *testing.T, s *store.Store, clk *clock, p login.Policy, auditOut *syncBuffer) *login.Authenticator {
	t.Helper()
	var al *audit.Logger
	if auditOut != nil {
		al = audit.New(slog.New(slog.NewJSONHandler(auditOut, nil)))
	}
	a, err := login.New(login.Config{Store: s, Audit: al, Policy: p, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func isLocked(t *testing.T, err error, subject string, retry time.Duration) {
	t.Helper()
	var le *store.LockedError
	if !errors.As(err, &le) || !errors.Is(err, store.ErrLocked) || le.Subject != subject || le.RetryAfter != retry {
		t.Fatalf("error %v, want locked %s for %v", err, subject, retry)
	}
}

func TestAuthenticator(t *testing.T) {
	s := newStore(t, store.TestHashParams())
	ctx := t.Context()
	for _, name := range []string{"alice", "bob", "carol", "dave", "erin"} {
		if _, err := s.CreateUser(ctx, &iamv1.User{Name: name}, "password-"+name); err != nil {
			t.Fatal(err)
		}
	}
	clk := &clock{now: time.Now()}
	loose := login.Policy{SourceRate: 1000, SourceBurst: 1000, Threshold: 3, BaseLockout: time.Second, MaxLockout: 4 * time.Second}

	t.Run("SuccessAndWrongPassword", func(t *testing.T) {
		var out syncBuffer
		a := newAuth(t, s, clk, loose, &out)
		p, err := a.AuthenticatePassword(ctx, "alice", "password-alice", "10.0.0.1:4000")
		if err != nil || p != "user:alice" {
			t.Fatalf("AuthenticatePassword = %q, %v", p, err)
		}
		_, err = a.AuthenticatePassword(ctx, "alice", "nope-nope", "10.0.0.1")
		if !errors.Is(err, store.ErrBadCredentials) {
			t.Fatalf("wrong password: %v", err)
		}
		_, err = a.AuthenticatePassword(ctx, "nobody", "nope-nope", "10.0.0.1")
		if !errors.Is(err, store.ErrBadCredentials) {
			t.Fatalf("unknown user: %v", err)
		}
		_, err = a.AuthenticatePassword(ctx, "Not Valid", "nope-nope", "10.0.0.1")
		if !errors.Is(err, store.ErrBadCredentials) {
			t.Fatalf("invalid name: %v", err)
		}
		log := out.String()
		for _, want := range []string{`"action":"login.success"`, `"action":"login.failure"`, `"target":"user:alice"`, `"source":"10.0.0.1:4000"`, `"reason":"invalid credentials"`} {
			if !strings.Contains(log, want) {
				t.Errorf("audit log lacks %s:\n%s", want, log)
			}
		}
		if strings.Contains(log, "password-alice") || strings.Contains(log, "nope-nope") {
			t.Fatalf("audit log leaks a password:\n%s", log)
		}
	})

	t.Run("LockoutAndBackoff", func(t *testing.T) {
		var out syncBuffer
		a := newAuth(t, s, clk, loose, &out)
		other := newAuth(t, s, clk, loose, nil) // another replica
		fail := func() error {
			_, err := a.AuthenticatePassword(ctx, "bob", "wrong-pass", "10.0.0.2")
			return err
		}
		for range 3 {
			if err := fail(); !errors.Is(err, store.ErrBadCredentials) {
				t.Fatalf("failure below threshold: %v", err)
			}
		}
		// Locked for 1 s: even the right password is refused unchecked, on every replica.
		_, err := a.AuthenticatePassword(ctx, "bob", "password-bob", "10.0.0.2")
		isLocked(t, err, "user:bob", time.Second)
		_, err = other.AuthenticatePassword(ctx, "bob", "password-bob", "10.0.0.3")
		isLocked(t, err, "user:bob", time.Second)
		// Each further failure doubles the lock, up to MaxLockout.
		for _, want := range []time.Duration{2 * time.Second, 4 * time.Second, 4 * time.Second} {
			clk.Add(time.Second * 5)
			if err := fail(); !errors.Is(err, store.ErrBadCredentials) {
				t.Fatalf("failure after the lock ended: %v", err)
			}
			isLocked(t, fail(), "user:bob", want)
		}
		if !strings.Contains(out.String(), `"action":"login.locked"`) {
			t.Fatalf("no login.locked audit record:\n%s", out.String())
		}
		// A success after the lock resets the count.
		clk.Add(5 * time.Second)
		if _, err := a.AuthenticatePassword(ctx, "bob", "password-bob", "10.0.0.2"); err != nil {
			t.Fatalf("login after lock: %v", err)
		}
		if l, _ := s.GetLockout(ctx, "user:bob"); l.Failures != 0 {
			t.Fatalf("failures not reset on success: %+v", l)
		}
		for range 2 {
			if err := fail(); !errors.Is(err, store.ErrBadCredentials) {
				t.Fatalf("count should start over after success: %v", err)
			}
		}
	})

	t.Run("UnknownUsersLockToo", func(t *testing.T) {
		a := newAuth(t, s, clk, loose, nil)
		for range 3 {
			_, _ = a.AuthenticatePassword(ctx, "ghost", "whatever1", "10.0.0.4")
		}
		_, err := a.AuthenticatePassword(ctx, "ghost", "whatever1", "10.0.0.4")
		isLocked(t, err, "user:ghost", time.Second)
	})

	t.Run("DisabledAfterRightPassword", func(t *testing.T) {
		a := newAuth(t, s, clk, loose, nil)
		if _, err := s.UpdateUser(ctx, "carol", store.UserUpdate{Disabled: new(true)}); err != nil {
			t.Fatal(err)
		}
		if _, err := a.AuthenticatePassword(ctx, "carol", "password-carol", "10.0.0.5"); !errors.Is(err, store.ErrDisabled) {
			t.Fatalf("disabled user: %v", err)
		}
		if _, err := a.AuthenticatePassword(ctx, "carol", "wrong-pass", "10.0.0.5"); !errors.Is(err, store.ErrBadCredentials) {
			t.Fatalf("disabled user, wrong password: %v (must not reveal the account state)", err)
		}
	})

	t.Run("SourceRateLimit", func(t *testing.T) {
		a := newAuth(t, s, clk, login.Policy{SourceRate: 0.001, SourceBurst: 3, Threshold: 100}, nil)
		for range 3 {
			if _, err := a.AuthenticatePassword(ctx, "dave", "password-dave", "192.0.2.7:1"); err != nil {
				t.Fatal(err)
			}
		}
		_, err := a.AuthenticatePassword(ctx, "dave", "password-dave", "192.0.2.7:2")
		var le *store.LockedError
		if !errors.As(err, &le) || le.Subject != "source:192.0.2.7" || le.RetryAfter <= 0 {
			t.Fatalf("4th attempt from one source: %v", err)
		}
		if _, err := a.AuthenticatePassword(ctx, "dave", "password-dave", "192.0.2.8"); err != nil {
			t.Fatalf("another source: %v", err)
		}
		if _, err := a.AuthenticateClient(ctx, "whoever", "x", "192.0.2.7"); !errors.As(err, &le) {
			t.Fatalf("client credentials from a limited source: %v", err)
		}
	})

	t.Run("ServiceAccounts", func(t *testing.T) {
		a := newAuth(t, s, clk, login.Policy{SourceRate: 0.001, SourceBurst: 4, Threshold: 2}, nil)
		_, exemptSecret, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "ci", RateLimitExempt: true})
		if err != nil {
			t.Fatal(err)
		}
		_, secret, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "batch"})
		if err != nil {
			t.Fatal(err)
		}
		if p, err := a.AuthenticateClient(ctx, "batch", secret, "198.51.100.1"); err != nil || p != "serviceaccount:batch" {
			t.Fatalf("AuthenticateClient = %q, %v", p, err)
		}
		for range 2 {
			if _, err := a.AuthenticateClient(ctx, "batch", "bad", "198.51.100.1"); !errors.Is(err, store.ErrBadCredentials) {
				t.Fatalf("wrong secret: %v", err)
			}
		}
		_, err = a.AuthenticateClient(ctx, "batch", secret, "198.51.100.1")
		isLocked(t, err, "serviceaccount:batch", time.Second)
		// The exempt account is never locked nor source-limited, from the same source.
		for i := range 10 {
			if _, err := a.AuthenticateClient(ctx, "ci", "bad", "198.51.100.1"); !errors.Is(err, store.ErrBadCredentials) {
				t.Fatalf("exempt attempt %d: %v", i, err)
			}
		}
		if p, err := a.AuthenticateClient(ctx, "ci", exemptSecret, "198.51.100.1"); err != nil || p != "serviceaccount:ci" {
			t.Fatalf("exempt account after failures: %q, %v", p, err)
		}
	})
}

// TestUnknownUserTiming: an unknown user costs what a wrong password costs. Hashing
// parameters heavy enough to dominate (a few ms) make the comparison meaningful; the
// bound is generous because the machine is shared.
func TestUnknownUserTiming(t *testing.T) {
	s := newStore(t, store.HashParams{Time: 1, MemoryKiB: 8 * 1024, Threads: 1, KeyLen: 32, SaltLen: 16})
	ctx := t.Context()
	const n = 15
	for i := range n {
		if _, err := s.CreateUser(ctx, &iamv1.User{Name: fmt.Sprintf("real%d", i)}, "the-right-password"); err != nil {
			t.Fatal(err)
		}
	}
	a := newAuth(t, s, &clock{now: time.Now()}, login.Policy{SourceRate: 1e6, SourceBurst: 1e6, Threshold: 1e6}, nil)
	measure := func(user string) time.Duration {
		start := time.Now()
		if _, err := a.AuthenticatePassword(ctx, user, "a-wrong-password", "10.9.9.9"); !errors.Is(err, store.ErrBadCredentials) {
			t.Fatalf("%s: %v", user, err)
		}
		return time.Since(start)
	}
	// Each name is tried once, so both sides take the same lockout path (first failure).
	var known, unknown []time.Duration
	for i := range n {
		known = append(known, measure(fmt.Sprintf("real%d", i)))
		unknown = append(unknown, measure(fmt.Sprintf("ghost%d", i)))
	}
	slices.Sort(known)
	slices.Sort(unknown)
	k, u := known[n/2], unknown[n/2]
	ratio := float64(u) / float64(k)
	t.Logf("median wrong password %v, unknown user %v, ratio %.2f", k, u, ratio)
	if ratio < 0.5 || ratio > 2 {
		t.Fatalf("unknown user takes %v, wrong password %v: ratio %.2f outside [0.5, 2]", u, k, ratio)
	}
}
