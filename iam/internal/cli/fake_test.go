package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws"
	"github.com/lestrrat-go/jwx/v3/jwt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// fakeIAM is a minimal in-memory IAM: enough of every service for the commands, a real
// Ed25519 signing key, and /.well-known/jwks.json. Calls other than the token grants
// need a token it issued.
type fakeIAM struct {
	iamv1connect.UnimplementedUserServiceHandler
	iamv1connect.UnimplementedServiceAccountServiceHandler
	iamv1connect.UnimplementedProjectServiceHandler
	iamv1connect.UnimplementedRoleServiceHandler
	iamv1connect.UnimplementedBindingServiceHandler
	iamv1connect.UnimplementedTokenServiceHandler
	iamv1connect.UnimplementedKeyServiceHandler

	url  string
	priv jwk.Key
	pub  jwk.Key

	mu        sync.Mutex
	users     map[string]*iamv1.User
	passwords map[string]string
	sas       map[string]*iamv1.ServiceAccount
	projects  map[string]*iamv1.Project
	roles     map[string]*iamv1.Role
	bindings  []*iamv1.Binding
	refresh   map[string]string // refresh token -> username
	revoked   []*iamv1.RevokeRequest
	keys      []*iamv1.SigningKey
	seq       int
	expiresIn int64
}

func newFakeIAM(t *testing.T) *fakeIAM {
	t.Helper()
	_, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := jwk.Import(edPriv)
	if err != nil {
		t.Fatal(err)
	}
	_ = priv.Set(jwk.KeyIDKey, "k1")
	_ = priv.Set(jwk.AlgorithmKey, jwa.EdDSA())
	pub, err := priv.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIAM{
		priv: priv, pub: pub,
		users:     map[string]*iamv1.User{"admin": {Name: "admin"}},
		passwords: map[string]string{"admin": "correct horse"},
		sas:       map[string]*iamv1.ServiceAccount{},
		projects:  map[string]*iamv1.Project{},
		roles: map[string]*iamv1.Role{
			"admin":  {Name: "admin", Permissions: []string{"*"}, Builtin: true},
			"reader": {Name: "reader", Permissions: []string{"*.get", "*.list", "*.watch"}, Builtin: true},
		},
		refresh:   map[string]string{},
		keys:      []*iamv1.SigningKey{{Kid: "k1", Alg: "EdDSA", State: iamv1.KeyState_KEY_STATE_ACTIVE}},
		expiresIn: 600,
	}
	auth := connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if req.Spec().Procedure != iamv1connect.TokenServiceTokenProcedure {
				if err := f.checkToken(strings.TrimPrefix(req.Header().Get("Authorization"), "Bearer ")); err != nil {
					return nil, connect.NewError(connect.CodeUnauthenticated, err)
				}
			}
			return next(ctx, req)
		}
	}))
	mux := http.NewServeMux()
	mux.Handle(iamv1connect.NewUserServiceHandler(f, auth))
	mux.Handle(iamv1connect.NewServiceAccountServiceHandler(f, auth))
	mux.Handle(iamv1connect.NewProjectServiceHandler(f, auth))
	mux.Handle(iamv1connect.NewRoleServiceHandler(f, auth))
	mux.Handle(iamv1connect.NewBindingServiceHandler(f, auth))
	mux.Handle(iamv1connect.NewTokenServiceHandler(f, auth))
	mux.Handle(iamv1connect.NewKeyServiceHandler(f, auth))
	mux.HandleFunc("GET /.well-known/jwks.json", func(w http.ResponseWriter, _ *http.Request) {
		set := jwk.NewSet()
		_ = set.AddKey(f.pub)
		_ = json.NewEncoder(w).Encode(set)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	f.url = srv.URL
	return f
}

// sign issues an access token for sub that expires in life.
func (f *fakeIAM) sign(sub, project string, life time.Duration, typ string) string {
	now := time.Now()
	f.seq++
	b := jwt.NewBuilder().Issuer("https://iam.plasmacloud.internal").Subject(sub).
		Audience([]string{"plasmacloud"}).IssuedAt(now).NotBefore(now).Expiration(now.Add(life)).
		JwtID(fmt.Sprintf("jti-%d", f.seq)).Claim("client_id", "iam-cli")
	if project != "" {
		b = b.Claim("project", project)
	}
	tok, err := b.Build()
	if err != nil {
		panic(err)
	}
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.TypeKey, typ)
	raw, err := jwt.Sign(tok, jwt.WithKey(jwa.EdDSA(), f.priv, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		panic(err)
	}
	return string(raw)
}

// checkToken verifies a token the fake issued.
func (f *fakeIAM) checkToken(raw string) error {
	if raw == "" {
		return errors.New("missing bearer token")
	}
	set := jwk.NewSet()
	_ = set.AddKey(f.pub)
	if _, err := jwt.Parse([]byte(raw), jwt.WithKeySet(set), jwt.WithValidate(true)); err != nil {
		return fmt.Errorf("bad token: %w", err)
	}
	return nil
}

func (f *fakeIAM) Token(_ context.Context, req *connect.Request[iamv1.TokenRequest]) (*connect.Response[iamv1.TokenResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := req.Msg
	var user string
	switch m.GetGrantType() {
	case "password":
		if pw, ok := f.passwords[m.GetUsername()]; !ok || pw != m.GetPassword() {
			return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("invalid credentials"))
		}
		user = m.GetUsername()
	case "refresh_token":
		u, ok := f.refresh[m.GetRefreshToken()]
		if !ok {
			return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("refresh token reused or unknown"))
		}
		delete(f.refresh, m.GetRefreshToken())
		user = u
	default:
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("grant_type: unsupported"))
	}
	at := f.sign("user:"+user, m.GetProject(), time.Duration(f.expiresIn)*time.Second, "at+jwt")
	f.seq++
	rt := fmt.Sprintf("rt-%d", f.seq)
	f.refresh[rt] = user
	return connect.NewResponse(&iamv1.TokenResponse{AccessToken: at, TokenType: "Bearer", ExpiresIn: f.expiresIn, RefreshToken: rt, Project: m.GetProject()}), nil
}

func (f *fakeIAM) Revoke(_ context.Context, req *connect.Request[iamv1.RevokeRequest]) (*connect.Response[iamv1.RevokeResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, req.Msg)
	if rt := req.Msg.GetRefreshToken(); rt != "" {
		delete(f.refresh, rt)
	}
	return connect.NewResponse(&iamv1.RevokeResponse{}), nil
}

func notFound(kind, name string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("%s %q not found", kind, name))
}

func exists(kind, name string) error {
	return connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("%s %q already exists", kind, name))
}

func (f *fakeIAM) CreateUser(_ context.Context, req *connect.Request[iamv1.CreateUserRequest]) (*connect.Response[iamv1.CreateUserResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := proto.Clone(req.Msg.GetUser()).(*iamv1.User)
	if _, ok := f.users[u.GetName()]; ok {
		return nil, exists("user", u.GetName())
	}
	if len(req.Msg.GetPassword()) < 8 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("password: at least 8 characters"))
	}
	u.CreateTime = timestamppb.Now()
	f.users[u.GetName()], f.passwords[u.GetName()] = u, req.Msg.GetPassword()
	return connect.NewResponse(&iamv1.CreateUserResponse{User: u}), nil
}

func (f *fakeIAM) GetUser(_ context.Context, req *connect.Request[iamv1.GetUserRequest]) (*connect.Response[iamv1.GetUserResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.users[req.Msg.GetName()]
	if !ok {
		return nil, notFound("user", req.Msg.GetName())
	}
	return connect.NewResponse(&iamv1.GetUserResponse{User: u}), nil
}

func (f *fakeIAM) ListUsers(context.Context, *connect.Request[iamv1.ListUsersRequest]) (*connect.Response[iamv1.ListUsersResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &iamv1.ListUsersResponse{}
	for _, u := range f.users {
		resp.Users = append(resp.Users, u)
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeIAM) UpdateUser(_ context.Context, req *connect.Request[iamv1.UpdateUserRequest]) (*connect.Response[iamv1.UpdateUserResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	u, ok := f.users[req.Msg.GetName()]
	if !ok {
		return nil, notFound("user", req.Msg.GetName())
	}
	if req.Msg.DisplayName != nil {
		u.DisplayName = req.Msg.GetDisplayName()
	}
	if req.Msg.Disabled != nil {
		u.Disabled = req.Msg.GetDisabled()
	}
	if req.Msg.Password != nil {
		f.passwords[u.GetName()] = req.Msg.GetPassword()
	}
	return connect.NewResponse(&iamv1.UpdateUserResponse{User: u}), nil
}

func (f *fakeIAM) DeleteUser(_ context.Context, req *connect.Request[iamv1.DeleteUserRequest]) (*connect.Response[iamv1.DeleteUserResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.users[req.Msg.GetName()]; !ok {
		return nil, notFound("user", req.Msg.GetName())
	}
	delete(f.users, req.Msg.GetName())
	return connect.NewResponse(&iamv1.DeleteUserResponse{}), nil
}

func (f *fakeIAM) CreateServiceAccount(_ context.Context, req *connect.Request[iamv1.CreateServiceAccountRequest]) (*connect.Response[iamv1.CreateServiceAccountResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sa := req.Msg.GetServiceAccount()
	if _, ok := f.sas[sa.GetName()]; ok {
		return nil, exists("service account", sa.GetName())
	}
	f.sas[sa.GetName()] = sa
	return connect.NewResponse(&iamv1.CreateServiceAccountResponse{ServiceAccount: sa, ClientSecret: "secret-1"}), nil
}

func (f *fakeIAM) ResetServiceAccountSecret(_ context.Context, req *connect.Request[iamv1.ResetServiceAccountSecretRequest]) (*connect.Response[iamv1.ResetServiceAccountSecretResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.sas[req.Msg.GetName()]; !ok {
		return nil, notFound("service account", req.Msg.GetName())
	}
	return connect.NewResponse(&iamv1.ResetServiceAccountSecretResponse{ClientSecret: "secret-2"}), nil
}

func (f *fakeIAM) CreateProject(_ context.Context, req *connect.Request[iamv1.CreateProjectRequest]) (*connect.Response[iamv1.CreateProjectResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := req.Msg.GetProject()
	if _, ok := f.projects[p.GetName()]; ok {
		return nil, exists("project", p.GetName())
	}
	f.projects[p.GetName()] = p
	return connect.NewResponse(&iamv1.CreateProjectResponse{Project: p}), nil
}

func (f *fakeIAM) ListProjects(context.Context, *connect.Request[iamv1.ListProjectsRequest]) (*connect.Response[iamv1.ListProjectsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &iamv1.ListProjectsResponse{}
	for _, p := range f.projects {
		resp.Projects = append(resp.Projects, p)
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeIAM) DeleteProject(_ context.Context, req *connect.Request[iamv1.DeleteProjectRequest]) (*connect.Response[iamv1.DeleteProjectResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.bindings {
		if b.GetProject() == req.Msg.GetName() {
			return nil, connect.NewError(connect.CodeFailedPrecondition,
				fmt.Errorf("project %q still has bindings: %s %s", req.Msg.GetName(), b.GetPrincipal(), b.GetRole()))
		}
	}
	delete(f.projects, req.Msg.GetName())
	return connect.NewResponse(&iamv1.DeleteProjectResponse{}), nil
}

func (f *fakeIAM) CreateRole(_ context.Context, req *connect.Request[iamv1.CreateRoleRequest]) (*connect.Response[iamv1.CreateRoleResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := req.Msg.GetRole()
	if _, ok := f.roles[r.GetName()]; ok {
		return nil, exists("role", r.GetName())
	}
	f.roles[r.GetName()] = r
	return connect.NewResponse(&iamv1.CreateRoleResponse{Role: r}), nil
}

func (f *fakeIAM) UpdateRole(_ context.Context, req *connect.Request[iamv1.UpdateRoleRequest]) (*connect.Response[iamv1.UpdateRoleResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r, ok := f.roles[req.Msg.GetName()]
	if !ok {
		return nil, notFound("role", req.Msg.GetName())
	}
	if r.GetBuiltin() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("role %q is built in", r.GetName()))
	}
	r.Permissions = req.Msg.GetPermissions()
	return connect.NewResponse(&iamv1.UpdateRoleResponse{Role: r}), nil
}

func (f *fakeIAM) ListRoles(context.Context, *connect.Request[iamv1.ListRolesRequest]) (*connect.Response[iamv1.ListRolesResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &iamv1.ListRolesResponse{}
	for _, r := range f.roles {
		resp.Roles = append(resp.Roles, r)
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeIAM) CreateBinding(_ context.Context, req *connect.Request[iamv1.CreateBindingRequest]) (*connect.Response[iamv1.CreateBindingResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b := req.Msg.GetBinding()
	f.bindings = append(f.bindings, b)
	return connect.NewResponse(&iamv1.CreateBindingResponse{Binding: b}), nil
}

func (f *fakeIAM) ListBindings(_ context.Context, req *connect.Request[iamv1.ListBindingsRequest]) (*connect.Response[iamv1.ListBindingsResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &iamv1.ListBindingsResponse{}
	for _, b := range f.bindings {
		if p := req.Msg.GetPrincipal(); p != "" && b.GetPrincipal() != p {
			continue
		}
		if p := req.Msg.GetProject(); p != "" && b.GetProject() != strings.TrimPrefix(p, "*") {
			continue
		}
		resp.Bindings = append(resp.Bindings, b)
	}
	return connect.NewResponse(resp), nil
}

func (f *fakeIAM) DeleteBinding(_ context.Context, req *connect.Request[iamv1.DeleteBindingRequest]) (*connect.Response[iamv1.DeleteBindingResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, b := range f.bindings {
		if b.GetPrincipal() == req.Msg.GetPrincipal() && b.GetRole() == req.Msg.GetRole() && b.GetProject() == req.Msg.GetProject() {
			f.bindings = append(f.bindings[:i], f.bindings[i+1:]...)
			return connect.NewResponse(&iamv1.DeleteBindingResponse{}), nil
		}
	}
	return nil, notFound("binding", req.Msg.GetPrincipal()+"/"+req.Msg.GetRole())
}

func (f *fakeIAM) ListKeys(context.Context, *connect.Request[iamv1.ListKeysRequest]) (*connect.Response[iamv1.ListKeysResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return connect.NewResponse(&iamv1.ListKeysResponse{Keys: f.keys}), nil
}

func (f *fakeIAM) RotateKey(context.Context, *connect.Request[iamv1.RotateKeyRequest]) (*connect.Response[iamv1.RotateKeyResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := &iamv1.SigningKey{Kid: fmt.Sprintf("k%d", len(f.keys)+1), Alg: "EdDSA", State: iamv1.KeyState_KEY_STATE_PENDING, CreateTime: timestamppb.Now()}
	f.keys = append(f.keys, k)
	return connect.NewResponse(&iamv1.RotateKeyResponse{Key: k}), nil
}
