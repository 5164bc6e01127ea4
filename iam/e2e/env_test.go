// Package e2e holds IAM's end-to-end acceptance tests: a real ChainFire cluster, real
// `iam server` replicas (bin/iam), pkg/iamclient as the caller and an in-test Connect
// service protected by pkg/auth. Run with PLASMA_BIN_DIR=/work/main/bin after `make build`
// (without it the binaries are built by the test).
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/pkg/iamclient"
	"plasmacloud.dev/pkg/resilience"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

const adminPassword = "e2e-admin-pass-1234"

// replica is one running `iam server`.
type replica struct {
	*harness.Process
	URL string
}

// env is one ChainFire cluster and the IAM replicas over it, all sharing a master key and
// the bootstrap admin password. Its fields are set up once by startEnv and read-only after.
type env struct {
	cf       *chainfiretest.Cluster
	replicas []*replica
	bin      string
	dir      string
}

// startEnv starts a one-member ChainFire cluster and n IAM replicas, each with the
// given extra server flags, and waits until every replica is ready.
func startEnv(t *testing.T, n int, extra ...string) *env {
	t.Helper()
	e := &env{
		cf:  chainfiretest.Start(t, 1, chainfiretest.Options{}),
		bin: harness.Binary(t, "plasmacloud.dev/iam/cmd/iam"),
		dir: t.TempDir(),
	}
	if err := os.WriteFile(e.path("master.key"), []byte(keys.GenerateMasterKeyText()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.path("admin.pw"), []byte(adminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports, err := harness.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		u := fmt.Sprintf("http://127.0.0.1:%d", ports[i])
		args := append([]string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]),
			"--chainfire-endpoints", strings.Join(e.cf.Endpoints(), ","),
			"--master-key-file", e.path("master.key"),
			"--bootstrap-admin-password-file", e.path("admin.pw"),
			"--key-publish-delay", "1s"}, extra...)
		p := harness.StartProcess(t, harness.ProcessConfig{Name: fmt.Sprintf("iam%d", i+1), Path: e.bin, Args: args, ReadyURL: u + "/readyz"})
		e.replicas = append(e.replicas, &replica{Process: p, URL: u})
	}
	for _, r := range e.replicas {
		e.waitReady(t, r)
	}
	return e
}

func (e *env) path(name string) string { return filepath.Join(e.dir, name) }

// waitReady waits (up to 60 s) for r's /readyz.
func (e *env) waitReady(t *testing.T, r *replica) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := r.WaitReady(ctx); err != nil {
		t.Fatalf("%s not ready: %v\n%s", r.Name(), err, tail(r.Logs()))
	}
}

// endpoints lists every replica's URL.
func (e *env) endpoints() []string {
	var eps []string
	for _, r := range e.replicas {
		eps = append(eps, r.URL)
	}
	return eps
}

// client returns a pkg/iamclient client over every replica sending ts's tokens (nil: none).
func (e *env) client(t *testing.T, ts iamclient.TokenSource) *iamclient.Client {
	t.Helper()
	c, err := iamclient.New(iamclient.Config{Endpoints: e.endpoints(), Token: ts, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// login runs the password grant through c.
func login(t *testing.T, c *iamclient.Client, user, password, project string) *iamv1.TokenResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := c.Token(ctx, &iamv1.TokenRequest{GrantType: "password", Username: user, Password: password, Project: project})
	if err != nil {
		t.Fatalf("login %s (project %q): %v", user, project, err)
	}
	return resp
}

// admin logs admin in and returns a client that keeps its token fresh with the refresh
// token (the access token may be short-lived in some tests).
func (e *env) admin(t *testing.T) *iamclient.Client {
	t.Helper()
	base := e.client(t, nil)
	resp := login(t, base, "admin", adminPassword, "")
	ts, err := base.NewTokenSource(iamclient.TokenSourceConfig{RefreshToken: resp.RefreshToken})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ts.Close)
	return base.WithToken(ts)
}

// watcher creates the service account a protected service's policy follower uses
// (global role with iam.policy.watch) and returns a client-credentials token source for it.
func (e *env) watcher(t *testing.T, admin *iamclient.Client, name string) *iamclient.CachingTokenSource {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := admin.CreateRole(ctx, &iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: name + "-role", Permissions: []string{"iam.policy.watch"}}}); err != nil {
		t.Fatal(err)
	}
	sa, err := admin.CreateServiceAccount(ctx, &iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: name, RateLimitExempt: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
		Principal: "serviceaccount:" + name, Role: name + "-role", Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	ts, err := e.client(t, nil).NewTokenSource(iamclient.TokenSourceConfig{ClientID: name, ClientSecret: sa.ClientSecret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ts.Close)
	return ts
}

// Procedures of the protected service and the permissions they need.
const (
	procGet    = iamv1connect.ProjectServiceGetProjectProcedure    // demo.project.get (member: *.get)
	procCreate = iamv1connect.ProjectServiceCreateProjectProcedure // vm.create (member: vm.*)
	procDelete = iamv1connect.ProjectServiceDeleteProjectProcedure // demo.project.delete (not in member)
	procList   = iamv1connect.ProjectServiceListProjectsProcedure  // demo.project.list (member: *.list)
)

var demoPermissions = map[string]string{
	procGet:    "demo.project.get",
	procCreate: "vm.create",
	procDelete: "demo.project.delete",
	procList:   "demo.project.list",
}

// demoProjects is the protected service's trivial implementation: it echoes the caller.
type demoProjects struct {
	iamv1connect.UnimplementedProjectServiceHandler
	calls atomic.Int64
}

func (d *demoProjects) GetProject(ctx context.Context, req *connect.Request[iamv1.GetProjectRequest]) (*connect.Response[iamv1.GetProjectResponse], error) {
	d.calls.Add(1)
	id, ok := auth.IdentityFromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeInternal, errors.New("no identity in context"))
	}
	return connect.NewResponse(&iamv1.GetProjectResponse{Project: &iamv1.Project{Name: req.Msg.Name, Description: id.Subject}}), nil
}

func (d *demoProjects) CreateProject(ctx context.Context, req *connect.Request[iamv1.CreateProjectRequest]) (*connect.Response[iamv1.CreateProjectResponse], error) {
	d.calls.Add(1)
	return connect.NewResponse(&iamv1.CreateProjectResponse{Project: req.Msg.Project}), nil
}

func (d *demoProjects) DeleteProject(context.Context, *connect.Request[iamv1.DeleteProjectRequest]) (*connect.Response[iamv1.DeleteProjectResponse], error) {
	d.calls.Add(1)
	return connect.NewResponse(&iamv1.DeleteProjectResponse{}), nil
}

func (d *demoProjects) ListProjects(context.Context, *connect.Request[iamv1.ListProjectsRequest]) (*connect.Response[iamv1.ListProjectsResponse], error) {
	d.calls.Add(1)
	return connect.NewResponse(&iamv1.ListProjectsResponse{}), nil
}

// protected is an in-test service using pkg/auth against the IAM replicas: an h2c
// Connect server whose ProjectService is guarded by demoPermissions.
type protected struct {
	URL  string
	svc  *auth.Service
	impl *demoProjects
	hc   *http.Client
}

// protectedConfig tunes startProtected; zero values mean pkg/auth's defaults.
type protectedConfig struct {
	Staleness           time.Duration
	JWKSRefreshInterval time.Duration
	ClockSkew           time.Duration
}

// startProtected starts the protected service and waits (up to 30 s) until its
// verifier is ready (keys loaded, policy copy fresh).
func startProtected(t *testing.T, endpoints []string, creds *iamclient.CachingTokenSource, pc protectedConfig) *protected {
	t.Helper()
	svc, err := auth.Setup(auth.Config{
		IAMEndpoints:           endpoints,
		Credentials:            creds.Token,
		Staleness:              pc.Staleness,
		JWKSRefreshInterval:    pc.JWKSRefreshInterval,
		ClockSkew:              pc.ClockSkew,
		JWKSMinRefreshInterval: 200 * time.Millisecond,
		Permissions:            demoPermissions,
	})
	if err != nil {
		t.Fatal(err)
	}
	impl := &demoProjects{}
	path, h := iamv1connect.NewProjectServiceHandler(impl, connect.WithInterceptors(svc.Interceptor))
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	p := &protected{URL: srv.URL, svc: svc, impl: impl, hc: resilience.NewHTTPClient(resilience.TransportOptions{})}
	waitFor(t, 30*time.Second, "protected service ready", func() error { return svc.Ready(context.Background()) })
	return p
}

// client returns a ProjectService client of the protected service sending token.
func (p *protected) client(token string) iamv1connect.ProjectServiceClient {
	return iamv1connect.NewProjectServiceClient(p.hc, p.URL, connect.WithInterceptors(auth.BearerInterceptor(
		func(context.Context) (string, error) { return token, nil })))
}

// get calls GetProject on the protected service with token.
func (p *protected) get(token string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := p.client(token).GetProject(ctx, connect.NewRequest(&iamv1.GetProjectRequest{Name: "p1"}))
	return err
}

// waitFor polls cond every 20 ms until it returns nil, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("%s: not reached within %v: %v", what, limit, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitCode polls call until it fails with code (connect.Code(0) = succeeds) and returns
// how long that took; the test fails after limit.
func waitCode(t *testing.T, limit time.Duration, what string, code connect.Code, call func() error) (time.Duration, error) {
	t.Helper()
	var last error
	d := waitFor(t, limit, what, func() error {
		last = call()
		got := connect.CodeOf(last)
		if last == nil {
			got = 0
		}
		if got == code {
			return nil
		}
		return fmt.Errorf("got %v", last)
	})
	return d, last
}

// tail returns the end of a log for failure messages.
func tail(s string) string {
	if len(s) > 4000 {
		return "…" + s[len(s)-4000:]
	}
	return s
}

func bg(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
