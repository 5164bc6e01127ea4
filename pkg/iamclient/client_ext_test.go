package iamclient_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// TestFailoverDeadEndpoint: the first replica refuses connections; every kind of call
// lands on the second without an error, and stays there.
func TestFailoverDeadEndpoint(t *testing.T) {
	t.Parallel()
	_, reps := newFakeReplicas(t, 1)
	good := reps[0]
	c := newClient(t, iamclient.Config{Endpoints: []string{deadURL(t), good.url}})
	ctx := testCtx(t)
	if _, err := c.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "p1"}}); err != nil {
		t.Fatalf("CreateProject: %v", err)
	}
	if _, err := c.GetProject(ctx, &iamv1.GetProjectRequest{Name: "p1"}); err != nil {
		t.Fatalf("GetProject: %v", err)
	}
	// A refresh grant is "once", but a refused connection proves it was never sent.
	tr, err := c.Token(ctx, &iamv1.TokenRequest{GrantType: "password", Username: "admin", Password: "secret"})
	if err != nil {
		t.Fatalf("password grant: %v", err)
	}
	c2 := newClient(t, iamclient.Config{Endpoints: []string{deadURL(t), good.url}})
	if _, err := c2.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: tr.GetRefreshToken()}); err != nil {
		t.Fatalf("refresh grant after a refused connection: %v", err)
	}
	if c.Endpoints()[1] != good.url {
		t.Fatalf("endpoints = %v", c.Endpoints())
	}
}

// TestFailoverKillMidLoad: two replicas, one killed while callers are busy; no caller
// sees an error.
func TestFailoverKillMidLoad(t *testing.T) {
	t.Parallel()
	st, reps := newFakeReplicas(t, 2)
	st.projects["p"] = &iamv1.Project{Name: "p"}
	c := newClient(t, iamclient.Config{Endpoints: []string{reps[0].url, reps[1].url}})
	ctx := testCtx(t)
	var (
		wg     sync.WaitGroup
		ok     atomic.Int32
		errsMu sync.Mutex
		errs   []error
	)
	stop := make(chan struct{})
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if i%2 == 0 {
					_, err = c.GetProject(ctx, &iamv1.GetProjectRequest{Name: "p"})
				} else {
					_, err = c.Token(ctx, &iamv1.TokenRequest{GrantType: "password", Username: "admin", Password: "secret"})
				}
				if err != nil {
					errsMu.Lock()
					errs = append(errs, err)
					errsMu.Unlock()
					return
				}
				ok.Add(1)
			}
		}()
	}
	waitFor(t, func() bool { return reps[0].calls.Load() > 50 })
	reps[0].kill()
	before := reps[1].calls.Load()
	waitFor(t, func() bool { return reps[1].calls.Load() > before+50 })
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d callers saw errors, first: %v", len(errs), errs[0])
	}
	t.Logf("%d calls ok; replica 1 served %d, replica 2 %d", ok.Load(), reps[0].calls.Load(), reps[1].calls.Load())
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRetryRules: per kind of call, which failures are retried (on the other replica),
// and what the caller sees.
func TestRetryRules(t *testing.T) {
	t.Parallel()
	type call func(ctx context.Context, c *iamclient.Client, st *fakeState) error
	createProject := func(desc string) call {
		return func(ctx context.Context, c *iamclient.Client, _ *fakeState) error {
			resp, err := c.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "p1", Description: desc}})
			if err == nil && resp.GetProject().GetName() != "p1" {
				return errors.New("no project in response")
			}
			return err
		}
	}
	getProject := func(ctx context.Context, c *iamclient.Client, _ *fakeState) error {
		_, err := c.GetProject(ctx, &iamv1.GetProjectRequest{Name: "existing"})
		return err
	}
	deleteProject := func(ctx context.Context, c *iamclient.Client, _ *fakeState) error {
		_, err := c.DeleteProject(ctx, &iamv1.DeleteProjectRequest{Name: "existing"})
		return err
	}
	createSA := func(ctx context.Context, c *iamclient.Client, _ *fakeState) error {
		_, err := c.CreateServiceAccount(ctx, &iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: "robot"}})
		return err
	}
	rotate := func(ctx context.Context, c *iamclient.Client, _ *fakeState) error {
		_, err := c.RotateKey(ctx, &iamv1.RotateKeyRequest{})
		return err
	}
	refresh := func(ctx context.Context, c *iamclient.Client, st *fakeState) error {
		st.mu.Lock()
		st.refresh["rt-x"] = true
		st.mu.Unlock()
		_, err := c.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: "rt-x"})
		return err
	}
	password := func(ctx context.Context, c *iamclient.Client, _ *fakeState) error {
		_, err := c.Token(ctx, &iamv1.TokenRequest{GrantType: "password", Username: "admin", Password: "secret"})
		return err
	}
	unavailable := fault{code: connect.CodeUnavailable}
	appliedThenReset := fault{apply: true, abort: true}
	tests := []struct {
		name        string
		call        call
		fault       fault
		wantCalls   int32 // calls that reached the first replica
		wantSecond  bool  // the call was repeated on the second replica
		wantCode    connect.Code
		wantUnknown bool
	}{
		{"read retried on unavailable", getProject, unavailable, 1, true, 0, false},
		{"read retried after reset", getProject, appliedThenReset, 1, true, 0, false},
		{"read retried after a stream reset", getProject, fault{apply: true, reset: true}, 1, true, 0, false},
		{"create after a stream reset: read back, success", createProject("d"), fault{apply: true, reset: true}, 1, true, 0, false},
		{"read not retried on not found", func(ctx context.Context, c *iamclient.Client, st *fakeState) error {
			_, err := c.GetProject(ctx, &iamv1.GetProjectRequest{Name: "nope"})
			return err
		}, fault{}, 1, false, connect.CodeNotFound, false},
		{"invalid argument returned at once", getProject, fault{code: connect.CodeInvalidArgument}, 1, false, connect.CodeInvalidArgument, false},
		{"permission denied returned at once", password, fault{code: connect.CodePermissionDenied}, 1, false, connect.CodePermissionDenied, false},
		{"password grant retried after reset", password, appliedThenReset, 1, true, 0, false},
		{"delete applied then reset: NotFound on retry is success", deleteProject, appliedThenReset, 1, true, 0, false},
		{"create retried on unavailable", createProject(""), unavailable, 1, true, 0, false},
		{"create applied then reset: read back, same, success", createProject(""), appliedThenReset, 1, true, 0, false},
		{"create of an existing project is AlreadyExists", func(ctx context.Context, c *iamclient.Client, _ *fakeState) error {
			_, err := c.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "existing"}})
			return err
		}, fault{}, 1, false, connect.CodeAlreadyExists, false},
		{"service account create applied then reset: outcome unknown", createSA, appliedThenReset, 1, true, connect.CodeAlreadyExists, true},
		{"refresh applied then reset: not retried", refresh, appliedThenReset, 1, false, 0, true},
		{"refresh unavailable: not retried", refresh, unavailable, 1, false, connect.CodeUnavailable, true},
		{"rotate unavailable: not retried", rotate, unavailable, 1, false, connect.CodeUnavailable, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st, reps := newFakeReplicas(t, 2)
			st.projects["existing"] = &iamv1.Project{Name: "existing"}
			if tt.fault.code != 0 || tt.fault.apply {
				reps[0].inject(tt.fault)
			}
			c := newClient(t, iamclient.Config{Endpoints: []string{reps[0].url, reps[1].url}})
			err := tt.call(testCtx(t), c, st)
			if got := reps[0].calls.Load(); got != tt.wantCalls {
				t.Errorf("first replica saw %d calls, want %d", got, tt.wantCalls)
			}
			if got := reps[1].calls.Load() > 0; got != tt.wantSecond {
				t.Errorf("second replica used = %v, want %v", got, tt.wantSecond)
			}
			if got := errors.Is(err, iamclient.ErrOutcomeUnknown); got != tt.wantUnknown {
				t.Errorf("outcome unknown = %v, want %v (err %v)", got, tt.wantUnknown, err)
			}
			switch {
			case tt.wantCode == 0 && !tt.wantUnknown && err != nil:
				t.Fatalf("err = %v, want success", err)
			case tt.wantCode != 0 && connect.CodeOf(err) != tt.wantCode:
				t.Fatalf("err = %v, want code %v", err, tt.wantCode)
			}
		})
	}
}

// TestCreateResolvedMismatch: when the object found after an uncertain attempt differs
// from the one asked for (someone else changed or made it), the create is not taken for
// ours: the caller gets AlreadyExists wrapped with ErrOutcomeUnknown.
func TestCreateResolvedMismatch(t *testing.T) {
	t.Parallel()
	st, reps := newFakeReplicas(t, 2)
	reps[0].inject(fault{apply: true, abort: true, after: func() {
		st.mu.Lock()
		st.projects["p"].Description = "theirs"
		st.mu.Unlock()
	}})
	c := newClient(t, iamclient.Config{Endpoints: []string{reps[0].url, reps[1].url}})
	_, err := c.CreateProject(testCtx(t), &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "p", Description: "mine"}})
	if !errors.Is(err, iamclient.ErrOutcomeUnknown) || connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Fatalf("err = %v, want AlreadyExists wrapped with ErrOutcomeUnknown", err)
	}
}

// TestBearerToken: calls carry the source's token, token grants none; a token refused
// with Unauthenticated is replaced once.
func TestBearerToken(t *testing.T) {
	t.Parallel()
	st, reps := newFakeReplicas(t, 1)
	st.requireAuth = true
	st.projects["p"] = &iamv1.Project{Name: "p"}
	base := newClient(t, iamclient.Config{Endpoints: []string{reps[0].url}})
	ctx := testCtx(t)

	if _, err := base.GetProject(ctx, &iamv1.GetProjectRequest{Name: "p"}); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("no token: err = %v, want Unauthenticated", err)
	}
	static := base.WithToken(iamclient.StaticToken("at-static"))
	if _, err := static.GetProject(ctx, &iamv1.GetProjectRequest{Name: "p"}); err != nil {
		t.Fatalf("static token: %v", err)
	}

	ts, err := base.NewTokenSource(iamclient.TokenSourceConfig{ClientID: "robot", ClientSecret: "s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	defer ts.Close()
	c := base.WithToken(ts)
	tok, err := ts.Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	st.badTokens[tok] = true // e.g. revoked: refused once
	st.mu.Unlock()
	if _, err := c.GetProject(ctx, &iamv1.GetProjectRequest{Name: "p"}); err != nil {
		t.Fatalf("after a refused token: %v", err)
	}
	if got := st.grants.Load(); got != 2 {
		t.Fatalf("grants = %d, want 2 (the refused token replaced once)", got)
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, eps := range [][]string{nil, {"ftp://x"}, {""}} {
		if _, err := iamclient.New(iamclient.Config{Endpoints: eps}); err == nil {
			t.Errorf("New(%q) succeeded", eps)
		}
	}
	c := newClient(t, iamclient.Config{Endpoints: []string{"127.0.0.1:7001"}})
	c.Close()
	if _, err := c.ListUsers(context.Background(), &iamv1.ListUsersRequest{}); !errors.Is(err, iamclient.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}
