package iamclient_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/iamclient"
	"plasmacloud.dev/pkg/resilience"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// fakeState is the state the fake replicas share, as real replicas share ChainFire.
type fakeState struct {
	mu        sync.Mutex
	projects  map[string]*iamv1.Project
	sas       map[string]*iamv1.ServiceAccount
	refresh   map[string]bool // refresh token -> still valid
	issued    int
	grants    atomic.Int32 // token grants answered
	expiresIn int64
	// badTokens are access tokens the replicas refuse once with Unauthenticated.
	badTokens map[string]bool
	// requireAuth: non-token calls need a bearer token starting with "at-".
	requireAuth bool
}

func newFakeState() *fakeState {
	return &fakeState{
		projects:  map[string]*iamv1.Project{},
		sas:       map[string]*iamv1.ServiceAccount{},
		refresh:   map[string]bool{},
		badTokens: map[string]bool{},
		expiresIn: 600,
	}
}

// fault is injected into one replica's next call.
type fault struct {
	code  connect.Code // error to answer (0: none)
	apply bool         // run the handler first (the call is applied)
	abort bool         // after applying, reset the stream instead of answering
	after func()       // run after applying, before answering
	reset bool         // after applying, reset the stream (RST_STREAM) instead of answering
}

// fakeReplica is one IAM replica serving the fake state over h2c.
type fakeReplica struct {
	st    *fakeState
	srv   *httptest.Server
	url   string
	calls atomic.Int32

	mu     sync.Mutex
	faults []fault
}

func (r *fakeReplica) inject(fs ...fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, fs...)
}

func (r *fakeReplica) nextFault() (fault, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.faults) == 0 {
		return fault{}, false
	}
	f := r.faults[0]
	r.faults = r.faults[1:]
	return f, true
}

// kill closes the replica's connections and listener, as SIGKILL would.
func (r *fakeReplica) kill() {
	r.srv.CloseClientConnections()
	r.srv.Close()
}

// newFakeReplicas starts n replicas over one state.
func newFakeReplicas(t *testing.T, n int) (*fakeState, []*fakeReplica) {
	t.Helper()
	st := newFakeState()
	out := make([]*fakeReplica, n)
	for i := range out {
		out[i] = startReplica(t, st)
	}
	return st, out
}

func startReplica(t *testing.T, st *fakeState) *fakeReplica {
	t.Helper()
	r := &fakeReplica{st: st}
	opts := connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			r.calls.Add(1)
			if !strings.HasPrefix(req.Spec().Procedure, "/iam.v1.TokenService/Token") {
				tok := strings.TrimPrefix(req.Header().Get("Authorization"), "Bearer ")
				st.mu.Lock()
				bad := st.badTokens[tok]
				delete(st.badTokens, tok)
				need := st.requireAuth
				st.mu.Unlock()
				if bad || (need && !strings.HasPrefix(tok, "at-")) {
					return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("token refused"))
				}
			}
			f, ok := r.nextFault()
			if !ok {
				return next(ctx, req)
			}
			if !f.apply {
				return nil, connect.NewError(f.code, fmt.Errorf("injected %v", f.code))
			}
			resp, err := next(ctx, req)
			if f.after != nil {
				f.after()
			}
			if f.reset {
				panic(http.ErrAbortHandler)
			}
			if f.abort {
				// The replica dies after applying: its connections break, the client
				// cannot know whether the call was applied.
				go r.srv.CloseClientConnections()
				<-ctx.Done()
				return nil, ctx.Err()
			}
			if f.code != 0 {
				return nil, connect.NewError(f.code, fmt.Errorf("injected %v after applying", f.code))
			}
			return resp, err
		}
	}))
	mux := http.NewServeMux()
	h := &fakeHandlers{st: st}
	mux.Handle(iamv1connect.NewProjectServiceHandler(h, opts))
	mux.Handle(iamv1connect.NewServiceAccountServiceHandler(h, opts))
	mux.Handle(iamv1connect.NewTokenServiceHandler(h, opts))
	mux.Handle(iamv1connect.NewKeyServiceHandler(h, opts))
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Config.ErrorLog = nil
	srv.Start()
	t.Cleanup(srv.Close)
	r.srv, r.url = srv, srv.URL
	return r
}

// fakeHandlers implements the few IAM procedures the client tests use.
type fakeHandlers struct {
	iamv1connect.UnimplementedProjectServiceHandler
	iamv1connect.UnimplementedServiceAccountServiceHandler
	iamv1connect.UnimplementedTokenServiceHandler
	iamv1connect.UnimplementedKeyServiceHandler
	st *fakeState
}

func (h *fakeHandlers) CreateProject(_ context.Context, req *connect.Request[iamv1.CreateProjectRequest]) (*connect.Response[iamv1.CreateProjectResponse], error) {
	h.st.mu.Lock()
	defer h.st.mu.Unlock()
	p := req.Msg.GetProject()
	if _, ok := h.st.projects[p.GetName()]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("project %q already exists", p.GetName()))
	}
	h.st.projects[p.GetName()] = proto.Clone(p).(*iamv1.Project)
	return connect.NewResponse(&iamv1.CreateProjectResponse{Project: p}), nil
}

func (h *fakeHandlers) GetProject(_ context.Context, req *connect.Request[iamv1.GetProjectRequest]) (*connect.Response[iamv1.GetProjectResponse], error) {
	h.st.mu.Lock()
	defer h.st.mu.Unlock()
	p, ok := h.st.projects[req.Msg.GetName()]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("project %q not found", req.Msg.GetName()))
	}
	return connect.NewResponse(&iamv1.GetProjectResponse{Project: p}), nil
}

func (h *fakeHandlers) DeleteProject(_ context.Context, req *connect.Request[iamv1.DeleteProjectRequest]) (*connect.Response[iamv1.DeleteProjectResponse], error) {
	h.st.mu.Lock()
	defer h.st.mu.Unlock()
	if _, ok := h.st.projects[req.Msg.GetName()]; !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("project %q not found", req.Msg.GetName()))
	}
	delete(h.st.projects, req.Msg.GetName())
	return connect.NewResponse(&iamv1.DeleteProjectResponse{}), nil
}

func (h *fakeHandlers) CreateServiceAccount(_ context.Context, req *connect.Request[iamv1.CreateServiceAccountRequest]) (*connect.Response[iamv1.CreateServiceAccountResponse], error) {
	h.st.mu.Lock()
	defer h.st.mu.Unlock()
	sa := req.Msg.GetServiceAccount()
	if _, ok := h.st.sas[sa.GetName()]; ok {
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("service account %q already exists", sa.GetName()))
	}
	h.st.sas[sa.GetName()] = sa
	return connect.NewResponse(&iamv1.CreateServiceAccountResponse{ServiceAccount: sa, ClientSecret: "s3cret"}), nil
}

func (h *fakeHandlers) RotateKey(context.Context, *connect.Request[iamv1.RotateKeyRequest]) (*connect.Response[iamv1.RotateKeyResponse], error) {
	return connect.NewResponse(&iamv1.RotateKeyResponse{Key: &iamv1.SigningKey{Kid: "k2", State: iamv1.KeyState_KEY_STATE_PENDING}}), nil
}

func (h *fakeHandlers) Token(_ context.Context, req *connect.Request[iamv1.TokenRequest]) (*connect.Response[iamv1.TokenResponse], error) {
	h.st.mu.Lock()
	defer h.st.mu.Unlock()
	m := req.Msg
	resp := &iamv1.TokenResponse{TokenType: "Bearer", ExpiresIn: h.st.expiresIn, Project: m.GetProject()}
	switch m.GetGrantType() {
	case "password":
		if m.GetUsername() != "admin" || m.GetPassword() != "secret" {
			return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("invalid credentials"))
		}
	case "client_credentials":
		if m.GetClientId() != "robot" || m.GetClientSecret() != "s3cret" {
			return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("invalid credentials"))
		}
	case "refresh_token":
		if !h.st.refresh[m.GetRefreshToken()] {
			return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("refresh token reused or unknown"))
		}
		h.st.refresh[m.GetRefreshToken()] = false
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("grant_type"))
	}
	h.st.issued++
	h.st.grants.Add(1)
	resp.AccessToken = fmt.Sprintf("at-%d", h.st.issued)
	if m.GetGrantType() != "client_credentials" {
		resp.RefreshToken = fmt.Sprintf("rt-%d", h.st.issued)
		h.st.refresh[resp.RefreshToken] = true
	}
	return connect.NewResponse(resp), nil
}

// ---- helpers

// deadURL returns a loopback URL nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func fastPolicy() resilience.Policy {
	return resilience.Policy{InitialInterval: time.Millisecond, MaxInterval: 10 * time.Millisecond}
}

func newClient(t *testing.T, cfg iamclient.Config) *iamclient.Client {
	t.Helper()
	if cfg.Policy.InitialInterval == 0 {
		cfg.Policy = fastPolicy()
	}
	c, err := iamclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}
