package api_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/api"
	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

// clients are Connect clients of the five admin services.
type clients struct {
	users    iamv1connect.UserServiceClient
	sas      iamv1connect.ServiceAccountServiceClient
	projects iamv1connect.ProjectServiceClient
	roles    iamv1connect.RoleServiceClient
	bindings iamv1connect.BindingServiceClient
}

// serve runs the admin handlers over s behind an httptest server; every request runs
// as user:root (standing in for pkg/auth's interceptor, tested on its own).
func serve(t *testing.T, s *store.Store, auditOut *lockedBuffer) clients {
	t.Helper()
	mux := http.NewServeMux()
	api.NewAdmin(s, audit.New(slog.New(slog.NewJSONHandler(auditOut, nil))), nil).Register(mux)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r.WithContext(auth.WithIdentity(r.Context(), auth.Identity{Subject: "user:root"})))
	}))
	t.Cleanup(srv.Close)
	hc, url := srv.Client(), srv.URL
	return clients{
		users:    iamv1connect.NewUserServiceClient(hc, url),
		sas:      iamv1connect.NewServiceAccountServiceClient(hc, url),
		projects: iamv1connect.NewProjectServiceClient(hc, url),
		roles:    iamv1connect.NewRoleServiceClient(hc, url),
		bindings: iamv1connect.NewBindingServiceClient(hc, url),
	}
}

func code(t *testing.T, err error, want connect.Code, mention string) {
	t.Helper()
	if got := connect.CodeOf(err); got != want || (err != nil && !strings.Contains(err.Error(), mention)) {
		t.Fatalf("error %v: want code %v mentioning %q", err, want, mention)
	}
}

func req[T any](m *T) *connect.Request[T] { return connect.NewRequest(m) }

func TestAdminAPI(t *testing.T) {
	cl := chainfiretest.Start(t, 1, chainfiretest.Options{})
	c, err := chainfire.New(chainfire.Config{Endpoints: cl.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := store.New(c, store.Options{Hash: store.TestHashParams()})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := s.EnsureBuiltins(ctx); err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	cs := serve(t, s, &out)

	t.Run("Users", func(t *testing.T) {
		r, err := cs.users.CreateUser(ctx, req(&iamv1.CreateUserRequest{User: &iamv1.User{Name: "alice", DisplayName: "Alice"}, Password: "password1"}))
		if err != nil || r.Msg.User.GetName() != "alice" || r.Msg.User.CreateTime == nil {
			t.Fatalf("CreateUser = %v, %v", r, err)
		}
		_, err = cs.users.CreateUser(ctx, req(&iamv1.CreateUserRequest{User: &iamv1.User{Name: "alice"}, Password: "password1"}))
		code(t, err, connect.CodeAlreadyExists, "alice")
		_, err = cs.users.CreateUser(ctx, req(&iamv1.CreateUserRequest{User: &iamv1.User{Name: "Bad Name"}, Password: "password1"}))
		code(t, err, connect.CodeInvalidArgument, "user.name")
		_, err = cs.users.CreateUser(ctx, req(&iamv1.CreateUserRequest{User: &iamv1.User{Name: "shortpw"}, Password: "x"}))
		code(t, err, connect.CodeInvalidArgument, "password")
		_, err = cs.users.GetUser(ctx, req(&iamv1.GetUserRequest{Name: "nobody"}))
		code(t, err, connect.CodeNotFound, "nobody")
		u, err := cs.users.UpdateUser(ctx, req(&iamv1.UpdateUserRequest{Name: "alice", Disabled: new(true)}))
		if err != nil || !u.Msg.User.Disabled || u.Msg.User.DisplayName != "Alice" {
			t.Fatalf("UpdateUser = %v, %v (only set fields change)", u, err)
		}
		l, err := cs.users.ListUsers(ctx, req(&iamv1.ListUsersRequest{}))
		if err != nil || len(l.Msg.Users) != 1 {
			t.Fatalf("ListUsers = %v, %v", l, err)
		}
		if _, err := cs.users.DeleteUser(ctx, req(&iamv1.DeleteUserRequest{Name: "alice"})); err != nil {
			t.Fatal(err)
		}
		_, err = cs.users.DeleteUser(ctx, req(&iamv1.DeleteUserRequest{Name: "alice"}))
		code(t, err, connect.CodeNotFound, "alice")
	})

	t.Run("ServiceAccounts", func(t *testing.T) {
		r, err := cs.sas.CreateServiceAccount(ctx, req(&iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: "ci"}}))
		if err != nil || len(r.Msg.ClientSecret) != 43 {
			t.Fatalf("CreateServiceAccount = %v, %v", r, err)
		}
		secret := r.Msg.ClientSecret
		reset, err := cs.sas.ResetServiceAccountSecret(ctx, req(&iamv1.ResetServiceAccountSecretRequest{Name: "ci"}))
		if err != nil || reset.Msg.ClientSecret == secret {
			t.Fatalf("reset = %v, %v", reset, err)
		}
		if _, err := s.CheckClientSecret(ctx, "ci", reset.Msg.ClientSecret); err != nil {
			t.Fatalf("new secret: %v", err)
		}
		u, err := cs.sas.UpdateServiceAccount(ctx, req(&iamv1.UpdateServiceAccountRequest{Name: "ci", RateLimitExempt: new(true)}))
		if err != nil || !u.Msg.ServiceAccount.RateLimitExempt {
			t.Fatalf("update = %v, %v", u, err)
		}
		g, err := cs.sas.GetServiceAccount(ctx, req(&iamv1.GetServiceAccountRequest{Name: "ci"}))
		if err != nil || g.Msg.ServiceAccount.Name != "ci" {
			t.Fatalf("get = %v, %v", g, err)
		}
		if l, err := cs.sas.ListServiceAccounts(ctx, req(&iamv1.ListServiceAccountsRequest{})); err != nil || len(l.Msg.ServiceAccounts) != 1 {
			t.Fatalf("list = %v, %v", l, err)
		}
		_, err = cs.sas.CreateServiceAccount(ctx, req(&iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: "x", Project: "nowhere"}}))
		code(t, err, connect.CodeNotFound, "nowhere")
		if strings.Contains(out.String(), secret) || strings.Contains(out.String(), reset.Msg.ClientSecret) {
			t.Fatal("audit log holds a client secret")
		}
	})

	t.Run("ProjectsRolesBindings", func(t *testing.T) {
		if _, err := cs.projects.CreateProject(ctx, req(&iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "p1"}})); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.users.CreateUser(ctx, req(&iamv1.CreateUserRequest{User: &iamv1.User{Name: "bob"}, Password: "password1"})); err != nil {
			t.Fatal(err)
		}
		_, err := cs.roles.CreateRole(ctx, req(&iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: "ops", Permissions: []string{"vm..get"}}}))
		code(t, err, connect.CodeInvalidArgument, "role.permissions[0]")
		if _, err := cs.roles.CreateRole(ctx, req(&iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: "ops", Permissions: []string{"vm.*"}}})); err != nil {
			t.Fatal(err)
		}
		r, err := cs.roles.UpdateRole(ctx, req(&iamv1.UpdateRoleRequest{Name: "ops", Permissions: []string{"vm.get", "vm.list"}, Description: new("ops")}))
		if err != nil || len(r.Msg.Role.Permissions) != 2 {
			t.Fatalf("UpdateRole = %v, %v", r, err)
		}
		_, err = cs.roles.UpdateRole(ctx, req(&iamv1.UpdateRoleRequest{Name: "admin", Permissions: []string{"vm.get"}}))
		code(t, err, connect.CodeFailedPrecondition, "built in")
		_, err = cs.roles.DeleteRole(ctx, req(&iamv1.DeleteRoleRequest{Name: "reader"}))
		code(t, err, connect.CodeFailedPrecondition, "built in")
		if l, err := cs.roles.ListRoles(ctx, req(&iamv1.ListRolesRequest{})); err != nil || len(l.Msg.Roles) != 4 {
			t.Fatalf("ListRoles = %v, %v", l, err)
		}
		if g, err := cs.roles.GetRole(ctx, req(&iamv1.GetRoleRequest{Name: "member"})); err != nil || !g.Msg.Role.Builtin {
			t.Fatalf("GetRole = %v, %v", g, err)
		}

		b := &iamv1.Binding{Principal: "user:bob", Role: "ops", Project: "p1", Effect: iamv1.Effect_EFFECT_DENY}
		if _, err := cs.bindings.CreateBinding(ctx, req(&iamv1.CreateBindingRequest{Binding: b})); err != nil {
			t.Fatal(err)
		}
		_, err = cs.bindings.CreateBinding(ctx, req(&iamv1.CreateBindingRequest{Binding: b}))
		code(t, err, connect.CodeAlreadyExists, "user:bob")
		_, err = cs.bindings.CreateBinding(ctx, req(&iamv1.CreateBindingRequest{Binding: &iamv1.Binding{Principal: "user:ghost", Role: "ops"}}))
		code(t, err, connect.CodeNotFound, "ghost")
		l, err := cs.bindings.ListBindings(ctx, req(&iamv1.ListBindingsRequest{Project: "p1"}))
		if err != nil || len(l.Msg.Bindings) != 1 || l.Msg.Bindings[0].Effect != iamv1.Effect_EFFECT_DENY {
			t.Fatalf("ListBindings = %v, %v", l, err)
		}
		_, err = cs.projects.DeleteProject(ctx, req(&iamv1.DeleteProjectRequest{Name: "p1"}))
		code(t, err, connect.CodeFailedPrecondition, "user:bob/ops")
		_, err = cs.roles.DeleteRole(ctx, req(&iamv1.DeleteRoleRequest{Name: "ops"}))
		code(t, err, connect.CodeFailedPrecondition, "user:bob")
		if _, err := cs.bindings.DeleteBinding(ctx, req(&iamv1.DeleteBindingRequest{Principal: "user:bob", Role: "ops", Project: "p1"})); err != nil {
			t.Fatal(err)
		}
		_, err = cs.bindings.DeleteBinding(ctx, req(&iamv1.DeleteBindingRequest{Principal: "user:bob", Role: "ops", Project: "p1"}))
		code(t, err, connect.CodeNotFound, "user:bob")
		if _, err := cs.roles.DeleteRole(ctx, req(&iamv1.DeleteRoleRequest{Name: "ops"})); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.projects.DeleteProject(ctx, req(&iamv1.DeleteProjectRequest{Name: "p1"})); err != nil {
			t.Fatal(err)
		}
		_, err = cs.projects.GetProject(ctx, req(&iamv1.GetProjectRequest{Name: "p1"}))
		code(t, err, connect.CodeNotFound, "p1")
		if l, err := cs.projects.ListProjects(ctx, req(&iamv1.ListProjectsRequest{})); err != nil || len(l.Msg.Projects) != 0 {
			t.Fatalf("ListProjects = %v, %v", l, err)
		}
	})

	t.Run("Audit", func(t *testing.T) {
		log := out.String()
		for _, want := range []string{
			`"action":"user.create","outcome":"success","actor":"user:root","target":"user:alice"`,
			`"action":"user.disable"`, `"action":"user.delete"`,
			`"action":"serviceaccount.reset","outcome":"success","actor":"user:root","target":"serviceaccount:ci"`,
			`"action":"binding.create","outcome":"success","actor":"user:root","target":"user:bob/ops@p1"`,
			`"action":"project.delete","outcome":"failure"`, `"action":"role.update"`,
			`"source":"127.0.0.1"`,
		} {
			if !strings.Contains(log, want) {
				t.Errorf("audit log lacks %s", want)
			}
		}
		if strings.Contains(log, "password1") || strings.Contains(log, "argon2id") {
			t.Fatal("audit log holds a password or hash")
		}
	})
}

// TestAdminUnavailable: with ChainFire unreachable the handlers answer Unavailable
// without naming ChainFire's endpoints.
func TestAdminUnavailable(t *testing.T) {
	c, err := chainfire.New(chainfire.Config{Endpoints: []string{"http://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := store.New(c, store.Options{Hash: store.TestHashParams(), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	cs := serve(t, s, &lockedBuffer{})
	_, err = cs.projects.ListProjects(context.Background(), req(&iamv1.ListProjectsRequest{}))
	code(t, err, connect.CodeUnavailable, "unavailable")
	if strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("error leaks the endpoint: %v", err)
	}
}

// TestAdminPermissions: every procedure of the five admin services has a permission
// from the brief's iam.* namespace, and nothing else is listed.
func TestAdminPermissions(t *testing.T) {
	perms := api.AdminPermissions()
	services := iamv1.File_iam_v1_iam_proto.Services()
	n := 0
	for _, svc := range []string{"UserService", "ServiceAccountService", "ProjectService", "RoleService", "BindingService"} {
		sd := services.ByName(protoName(svc))
		for i := range sd.Methods().Len() {
			proc := "/" + string(sd.FullName()) + "/" + string(sd.Methods().Get(i).Name())
			p, ok := perms[proc]
			if !ok || !strings.HasPrefix(p, "iam.") {
				t.Errorf("%s: permission %q", proc, p)
			}
			if err := store.ValidatePermission("p", p); err != nil || strings.Contains(p, "*") {
				t.Errorf("%s: %v", proc, err)
			}
			n++
		}
	}
	if n != len(perms) {
		t.Errorf("table has %d entries, services have %d methods", len(perms), n)
	}
}
