package auth_test

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// script is what the fake PolicyService does with one stream.
type script func(ctx context.Context, req *iamv1.WatchPolicyRequest, send func(*iamv1.WatchPolicyResponse) error) error

// fakePolicy is an httptest PolicyService: each stream runs the next
// script, or blocks until the client goes away when none is queued.
type fakePolicy struct {
	iamv1connect.UnimplementedPolicyServiceHandler
	url     string
	scripts chan script

	mu     sync.Mutex
	afters []int64
	auths  []string
}

func newFakePolicy(t testing.TB) *fakePolicy {
	f := &fakePolicy{scripts: make(chan script, 16)}
	mux := http.NewServeMux()
	mux.Handle(iamv1connect.NewPolicyServiceHandler(f))
	f.url = newH2CServer(t, mux).URL
	return f
}

func (f *fakePolicy) WatchPolicy(ctx context.Context, req *connect.Request[iamv1.WatchPolicyRequest], st *connect.ServerStream[iamv1.WatchPolicyResponse]) error {
	f.mu.Lock()
	f.afters = append(f.afters, req.Msg.GetAfterRevision())
	f.auths = append(f.auths, req.Header().Get("Authorization"))
	f.mu.Unlock()
	select {
	case s := <-f.scripts:
		return s(ctx, req.Msg, st.Send)
	case <-ctx.Done():
		return nil
	}
}

func (f *fakePolicy) requests() ([]int64, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]int64(nil), f.afters...), append([]string(nil), f.auths...)
}

// sendAll sends msgs then ends the stream with err (nil: hold it open
// until the client leaves).
func sendAll(err error, msgs ...*iamv1.WatchPolicyResponse) script {
	return func(ctx context.Context, _ *iamv1.WatchPolicyRequest, send func(*iamv1.WatchPolicyResponse) error) error {
		for _, m := range msgs {
			if e := send(m); e != nil {
				return e
			}
		}
		if err != nil {
			return err
		}
		<-ctx.Done()
		return nil
	}
}

func TestFollowerResumeFailoverSnapshot(t *testing.T) {
	t.Parallel()
	iamA, iamB := newFakePolicy(t), newFakePolicy(t)
	clk := newClock(t0)
	p := auth.NewPolicy(auth.PolicyConfig{Now: clk.Now})
	f, err := auth.NewFollower(p, auth.FollowerConfig{
		Endpoints:     []string{iamA.url, iamB.url},
		ClientOptions: []connect.ClientOption{connect.WithInterceptors(auth.BearerInterceptor(func(context.Context) (string, error) { return "svc-token", nil }))},
		Backoff:       fastBackoff,
		IdleTimeout:   300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	alice := auth.Identity{Subject: "user:alice", Project: "p1"}
	// A: snapshot at 10, a role change at 11, then the stream breaks.
	iamA.scripts <- sendAll(connect.NewError(connect.CodeUnavailable, errors.New("replica going away")),
		builtinSnapshot(10), changes(11, put(role("member", "vm.get"))))
	// B: resumes after 11: a change at 12 and heartbeats, then goes silent
	// (the idle timeout must reopen the stream).
	iamB.scripts <- func(ctx context.Context, _ *iamv1.WatchPolicyRequest, send func(*iamv1.WatchPolicyResponse) error) error {
		_ = send(changes(12, put(allow("user:alice", "reader", "p2"))))
		_ = send(changes(12))
		<-ctx.Done()
		return nil
	}
	// A again: cannot replay, sends a snapshot at 20 without alice.
	iamA.scripts <- sendAll(nil, &iamv1.WatchPolicyResponse{Revision: 20, Snapshot: true,
		Changes: []*iamv1.PolicyChange{put(role("admin", "*")), put(allow("user:bob", "admin", ""))}})

	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan struct{})
	go func() { defer close(done); _ = f.Run(ctx) }()

	waitFor(t, func() bool { return p.Revision() >= 11 })
	waitFor(t, func() bool { return p.Revision() >= 12 })
	if err := p.Authorize(auth.Identity{Subject: "user:alice", Project: "p2"}, "vm.list"); err != nil {
		t.Fatalf("change from B not applied: %v", err)
	}
	waitFor(t, func() bool { return p.Revision() == 20 })
	if err := p.Authorize(alice, "vm.get"); !errors.Is(err, auth.ErrPermissionDenied) {
		t.Fatalf("snapshot did not replace the copy: %v", err)
	}
	if err := p.Authorize(auth.Identity{Subject: "user:bob"}, "x.y"); err != nil {
		t.Fatal(err)
	}
	cancel()
	<-done

	aA, authA := iamA.requests()
	aB, _ := iamB.requests()
	if len(aA) < 2 || aA[0] != 0 || aA[1] != 12 || len(aB) < 1 || aB[0] != 11 {
		t.Fatalf("after_revision: A %v, B %v", aA, aB)
	}
	if authA[0] != "Bearer svc-token" {
		t.Fatalf("credentials not sent: %q", authA[0])
	}
}

var fastBackoff = auth.FollowerConfig{}.Backoff

func init() {
	fastBackoff.InitialInterval = 5 * time.Millisecond
	fastBackoff.MaxInterval = 20 * time.Millisecond
}

func TestFollowerOutageStaleness(t *testing.T) {
	t.Parallel()
	iam := newFakePolicy(t)
	clk := newClock(t0)
	p := auth.NewPolicy(auth.PolicyConfig{Now: clk.Now, Staleness: time.Minute})
	f, _ := auth.NewFollower(p, auth.FollowerConfig{Endpoints: []string{iam.url}, Backoff: fastBackoff})
	iam.scripts <- sendAll(connect.NewError(connect.CodeUnavailable, errors.New("IAM down")), builtinSnapshot(10))
	// Every later stream fails at once: IAM is down.
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	go func() {
		for {
			select {
			case iam.scripts <- sendAll(connect.NewError(connect.CodeUnavailable, errors.New("IAM down"))):
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() { _ = f.Run(ctx) }()
	waitFor(t, func() bool { return p.Revision() == 10 })
	alice := auth.Identity{Subject: "user:alice", Project: "p1"}
	clk.Add(59 * time.Second) // a short outage is invisible
	if err := p.Authorize(alice, "vm.create"); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second) // a long one fails closed
	err := p.Authorize(alice, "vm.create")
	if !errors.Is(err, auth.ErrPolicyStale) || auth.Code(err) != connect.CodeUnavailable {
		t.Fatalf("after the staleness window: %v", err)
	}
	waitFor(t, func() bool { return f.Streams() >= 3 }) // keeps retrying
}
