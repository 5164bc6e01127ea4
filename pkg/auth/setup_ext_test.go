package auth_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// fakeIAM serves JWKS and a PolicyService whose stream sends a snapshot and
// then whatever is pushed on changes, with heartbeats.
type fakeIAM struct {
	iamv1connect.UnimplementedPolicyServiceHandler
	url     string
	mu      sync.Mutex
	keys    []json.RawMessage
	rev     int64
	pushed  chan []*iamv1.PolicyChange
	watchOK chan string // Authorization header of each WatchPolicy
}

func newFakeIAM(t testing.TB, keys ...json.RawMessage) *fakeIAM {
	f := &fakeIAM{keys: keys, rev: 100, pushed: make(chan []*iamv1.PolicyChange, 8), watchOK: make(chan string, 8)}
	mux := http.NewServeMux()
	mux.Handle(iamv1connect.NewPolicyServiceHandler(f))
	mux.HandleFunc(auth.JWKSPath, func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		body, _ := json.Marshal(map[string]any{"keys": f.keys})
		f.mu.Unlock()
		_, _ = w.Write(body)
	})
	f.url = newH2CServer(t, mux).URL
	return f
}

func (f *fakeIAM) WatchPolicy(ctx context.Context, req *connect.Request[iamv1.WatchPolicyRequest], st *connect.ServerStream[iamv1.WatchPolicyResponse]) error {
	select {
	case f.watchOK <- req.Header().Get("Authorization"):
	default:
	}
	f.mu.Lock()
	rev := f.rev
	f.mu.Unlock()
	if err := st.Send(builtinSnapshot(rev)); err != nil {
		return err
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case cs := <-f.pushed:
			f.mu.Lock()
			f.rev++
			rev = f.rev
			f.mu.Unlock()
			if err := st.Send(changes(rev, cs...)); err != nil {
				return err
			}
		case <-tick.C:
			if err := st.Send(changes(rev)); err != nil {
				return err
			}
		}
	}
}

func TestSetupEndToEnd(t *testing.T) {
	t.Parallel()
	k1 := newSigner(t, auth.AlgEdDSA, "k1")
	k2 := newSigner(t, auth.AlgES256, "k2")
	iam := newFakeIAM(t, k1.jwk(t))
	svc, err := auth.Setup(auth.Config{
		IAMEndpoints:           []string{iam.url},
		Credentials:            func(context.Context) (string, error) { return "svc", nil },
		Permissions:            map[string]string{procListKeys: "vm.get"},
		JWKSMinRefreshInterval: 10 * time.Millisecond,
		Logger:                 slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Ready(ctxT(t)); !errors.Is(err, auth.ErrKeysUnavailable) || !errors.Is(err, auth.ErrPolicyStale) {
		t.Fatalf("ready before Run: %v", err)
	}
	ctx, cancel := context.WithCancel(ctxT(t))
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	waitFor(t, func() bool { return svc.Ready(ctx) == nil })
	if h := <-iam.watchOK; h != "Bearer svc" {
		t.Fatalf("WatchPolicy credentials %q", h)
	}

	mux := http.NewServeMux()
	mux.Handle(iamv1connect.NewKeyServiceHandler(echoService{}, connect.WithInterceptors(svc.Interceptor)))
	srv := newH2CServer(t, mux)
	tok := ""
	client := iamv1connect.NewKeyServiceClient(srv.Client(), srv.URL,
		connect.WithInterceptors(auth.BearerInterceptor(func(context.Context) (string, error) { return tok, nil })))
	call := func() connect.Code {
		_, err := client.ListKeys(ctx, connect.NewRequest(&iamv1.ListKeysRequest{}))
		if err == nil {
			return 0
		}
		return connect.CodeOf(err)
	}
	tok = k1.token(t, time.Now(), func(_, c map[string]any) { c["jti"] = "e2e-1" })
	if c := call(); c != 0 {
		t.Fatalf("valid token: %v", c)
	}
	// Revocation arrives through the stream.
	iam.pushed <- []*iamv1.PolicyChange{put(&iamv1.RevokedToken{Jti: "e2e-1", ExpireTime: timestamppb.New(time.Now().Add(time.Hour))})}
	waitFor(t, func() bool { return call() == connect.CodeUnauthenticated })
	// Key rotation: the new key is published and announced; tokens it signs verify.
	iam.mu.Lock()
	iam.keys = append(iam.keys, k2.jwk(t))
	iam.mu.Unlock()
	iam.pushed <- []*iamv1.PolicyChange{put(&iamv1.SigningKey{Kid: "k2", Alg: auth.AlgES256, State: iamv1.KeyState_KEY_STATE_PENDING})}
	waitFor(t, func() bool { return svc.Keys.Known("k2") })
	tok = k2.token(t, time.Now(), nil)
	if c := call(); c != 0 {
		t.Fatalf("token of the rotated-in key: %v", c)
	}
	cancel()
	<-done
}

func TestBearerTransportAndNone(t *testing.T) {
	t.Parallel()
	var got string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.Header.Get("Authorization") }))
	defer srv.Close()
	c := &http.Client{Transport: auth.BearerTransport(nil, func(context.Context) (string, error) { return "abc", nil })}
	resp, err := c.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got != "Bearer abc" {
		t.Fatalf("header %q", got)
	}
	c = &http.Client{Transport: auth.BearerTransport(nil, func(context.Context) (string, error) { return "", errors.New("no creds") })}
	if _, err := c.Get(srv.URL); err == nil || !strings.Contains(err.Error(), "no creds") {
		t.Fatalf("err %v", err)
	}

	// None: everything allowed, identity anonymous-dev, a warning logged once.
	var logs strings.Builder
	ic := auth.None(slog.New(slog.NewTextHandler(&logs, nil)))
	if !strings.Contains(logs.String(), "DISABLED") {
		t.Fatalf("no warning: %q", logs.String())
	}
	mux := http.NewServeMux()
	mux.Handle(iamv1connect.NewKeyServiceHandler(echoService{}, connect.WithInterceptors(ic)))
	hs := newH2CServer(t, mux)
	resp2, err := iamv1connect.NewKeyServiceClient(hs.Client(), hs.URL).ListKeys(ctxT(t), connect.NewRequest(&iamv1.ListKeysRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if kid := resp2.Msg.GetKeys()[0].GetKid(); kid != auth.AnonymousDev+"/" {
		t.Fatalf("identity %q", kid)
	}
	if n := strings.Count(logs.String(), "DISABLED"); n != 1 {
		t.Fatalf("warned %d times", n)
	}

	// A failing TokenSource fails the call before it is sent.
	kc := iamv1connect.NewKeyServiceClient(hs.Client(), hs.URL, connect.WithInterceptors(
		auth.BearerInterceptor(func(context.Context) (string, error) { return "", errors.New("expired creds") })))
	if _, err := kc.ListKeys(ctxT(t), connect.NewRequest(&iamv1.ListKeysRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("err %v", err)
	}
}
