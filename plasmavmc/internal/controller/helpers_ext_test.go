package controller_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/controller"
	"plasmacloud.dev/plasmavmc/internal/state"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
	"plasmacloud.dev/proto/plasmavmc/v1/plasmavmcv1connect"
)

// env is one real ChainFire plus the auth stack of a service (static key, a policy
// snapshot with roles and bindings) for controllers served over httptest.
type env struct {
	t    *testing.T
	cf   *chainfiretest.Cluster
	st   *state.Store
	priv ed25519.PrivateKey
	ic   *auth.Interceptor
}

// Principals of the policy: alice is member of project pa, bob member of pb, carol a
// global reader, root a global admin.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, cf: chainfiretest.Start(t, 1, chainfiretest.Options{})}
	e.st = state.New(e.client(), nil)
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	e.priv = priv
	keys, err := auth.NewStaticKeys(auth.PublicKey{KID: "k1", Alg: auth.AlgEdDSA, Key: pub})
	if err != nil {
		t.Fatal(err)
	}
	policy := auth.NewPolicy(auth.PolicyConfig{})
	put := func(o any) *iamv1.PolicyChange {
		c := &iamv1.PolicyChange{Op: iamv1.PolicyChange_OP_PUT}
		switch x := o.(type) {
		case *iamv1.Role:
			c.Object = &iamv1.PolicyChange_Role{Role: x}
		case *iamv1.Binding:
			c.Object = &iamv1.PolicyChange_Binding{Binding: x}
		}
		return c
	}
	allow := func(p, r, proj string) *iamv1.Binding {
		return &iamv1.Binding{Principal: p, Role: r, Project: proj, Effect: iamv1.Effect_EFFECT_ALLOW}
	}
	if err := policy.Apply(&iamv1.WatchPolicyResponse{Revision: 1, Snapshot: true, Changes: []*iamv1.PolicyChange{
		put(&iamv1.Role{Name: "admin", Permissions: []string{"*"}}),
		put(&iamv1.Role{Name: "member", Permissions: []string{"vm.*", "image.*", "*.get", "*.list"}}),
		put(&iamv1.Role{Name: "reader", Permissions: []string{"*.get", "*.list"}}),
		put(allow("user:alice", "member", "pa")),
		put(allow("user:bob", "member", "pb")),
		put(allow("user:carol", "reader", "")),
		put(allow("user:root", "admin", "")),
	}}); err != nil {
		t.Fatal(err)
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: keys, Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	if e.ic, err = auth.NewInterceptor(auth.InterceptorConfig{Verifier: v, Permissions: controller.Permissions()}); err != nil {
		t.Fatal(err)
	}
	return e
}

// newEnvB is the ChainFire part of env for benchmarks.
func newEnvB(b *testing.B) *env {
	e := &env{cf: chainfiretest.Start(b, 1, chainfiretest.Options{})}
	c, err := chainfire.New(chainfire.Config{Endpoints: e.cf.Endpoints()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	e.st = state.New(c, nil)
	return e
}

func (e *env) addHostB(b *testing.B, name string, vcpus int32, mem int64) {
	ctx := context.Background()
	if err := e.st.RegisterHost(ctx, &pb.Host{Name: name, Capacity: &pb.Resources{Vcpus: vcpus, MemoryMib: mem}, Pools: []string{"local", "shared"}}); err != nil {
		b.Fatal(err)
	}
	if _, err := e.st.Client().Put(ctx, state.AliveKey(name), "x"); err != nil {
		b.Fatal(err)
	}
}

// client is a new ChainFire client closed with the test.
func (e *env) client() *chainfire.Client {
	c, err := chainfire.New(chainfire.Config{Endpoints: e.cf.Endpoints()})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

var jti atomic.Int64

// token mints an access token for user name scoped to project ("" unscoped).
func (e *env) token(name, project string) string {
	enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
	now := time.Now()
	claims := map[string]any{
		"iss": auth.DefaultIssuer, "sub": "user:" + name, "aud": []string{auth.DefaultAudience},
		"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nbf": now.Unix(),
		"jti": fmt.Sprintf("jti-%d", jti.Add(1)), "client_id": "test",
	}
	if project != "" {
		claims["project"] = project
	}
	in := enc(map[string]any{"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"}) + "." + enc(claims)
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(e.priv, []byte(in)))
}

// ctrl is a controller served over httptest with its own ChainFire client.
type ctrl struct {
	*controller.Controller
	url    string
	cf     *chainfire.Client
	cancel context.CancelFunc
	done   chan struct{}
}

// controller starts a controller; run starts its election loop too.
func (e *env) controller(run bool, mod func(*controller.Config)) *ctrl {
	e.t.Helper()
	cf := e.client()
	cfg := controller.Config{Store: state.New(cf, nil), LeaseTTL: 2, ScheduleInterval: 100 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	c, err := controller.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	mux := http.NewServeMux()
	for p, h := range c.Handlers(connect.WithInterceptors(e.ic)) {
		mux.Handle(p, h)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Start()
	e.t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	out := &ctrl{Controller: c, url: srv.URL, cf: cf, cancel: cancel, done: make(chan struct{})}
	if run {
		go func() { defer close(out.done); _ = c.Run(ctx) }()
	} else {
		close(out.done)
	}
	e.t.Cleanup(func() { cancel(); <-out.done })
	return out
}

type clients struct {
	vms    plasmavmcv1connect.VMServiceClient
	hosts  plasmavmcv1connect.HostServiceClient
	images plasmavmcv1connect.ImageServiceClient
	ops    plasmavmcv1connect.OperationServiceClient
}

// as returns API clients of c calling with token.
func (c *ctrl) as(token string) clients {
	opt := connect.WithInterceptors(auth.BearerInterceptor(func(context.Context) (string, error) { return token, nil }))
	return clients{
		vms:    plasmavmcv1connect.NewVMServiceClient(http.DefaultClient, c.url, opt),
		hosts:  plasmavmcv1connect.NewHostServiceClient(http.DefaultClient, c.url, opt),
		images: plasmavmcv1connect.NewImageServiceClient(http.DefaultClient, c.url, opt),
		ops:    plasmavmcv1connect.NewOperationServiceClient(http.DefaultClient, c.url, opt),
	}
}

// addHost registers a host and its heartbeat as an agent would.
func (e *env) addHost(name string, vcpus int32, mem int64, pools ...string) {
	e.t.Helper()
	ctx := context.Background()
	if len(pools) == 0 {
		pools = []string{"local", "shared"}
	}
	if err := e.st.RegisterHost(ctx, &pb.Host{Name: name, Capacity: &pb.Resources{Vcpus: vcpus, MemoryMib: mem}, Pools: pools, AgentVersion: "test"}); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.st.Client().Put(ctx, state.AliveKey(name), "agent-"+name); err != nil {
		e.t.Fatal(err)
	}
}

// count is the number of keys under prefix.
func (e *env) count(prefix string) int {
	e.t.Helper()
	g, err := e.st.Client().Get(context.Background(), prefix, chainfire.WithPrefix(), chainfire.WithCountOnly())
	if err != nil {
		e.t.Fatal(err)
	}
	return int(g.Count)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// createReq is a valid create of a kernel-booted VM without disks.
func createReq(project, name string, vcpus int32, mem int64) *pb.CreateVMRequest {
	return &pb.CreateVMRequest{Name: name, Project: project, RequestId: "req-" + project + "-" + name,
		Spec: &pb.VMSpec{Vcpus: vcpus, MemoryMib: mem, Boot: &pb.Boot{KernelImage: "kernel"}}}
}

// wantCode checks err's code and that its message contains every want.
func wantCode(t *testing.T, err error, code connect.Code, want ...string) {
	t.Helper()
	if connect.CodeOf(err) != code {
		t.Fatalf("got %v (code %v), want %v", err, connect.CodeOf(err), code)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Fatalf("error %q does not name %q", err, w)
		}
	}
}

func (e *env) registerImages(c clients) {
	e.t.Helper()
	for _, img := range []*pb.Image{
		{Name: "kernel", Pool: "local", Format: "kernel", Path: "vmlinuz"},
		{Name: "initrd", Pool: "local", Format: "initrd", Path: "initrd.img"},
		{Name: "base", Pool: "local", Format: "qcow2", Path: "base.qcow2"},
		{Name: "base", Pool: "shared", Format: "qcow2", Path: "base.qcow2"},
	} {
		if _, err := c.images.RegisterImage(context.Background(), connect.NewRequest(&pb.RegisterImageRequest{Image: img})); err != nil {
			e.t.Fatal(err)
		}
	}
}
