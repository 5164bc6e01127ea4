package api

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// Admin serves IAM's administration API — UserService, ServiceAccountService,
// ProjectService, RoleService and BindingService — over a store.Store. Permissions are
// checked before a call reaches it, by pkg/auth's interceptor with the table of
// AdminPermissions; Admin audits every change (success or failure) with the caller
// from the request's auth.Identity. It holds no state of its own and is safe for
// concurrent use.
type Admin struct {
	store *store.Store
	audit *audit.Logger
	log   *slog.Logger
}

// Compile-time checks that Admin serves the five services.
var (
	_ iamv1connect.UserServiceHandler           = (*Admin)(nil)
	_ iamv1connect.ServiceAccountServiceHandler = (*Admin)(nil)
	_ iamv1connect.ProjectServiceHandler        = (*Admin)(nil)
	_ iamv1connect.RoleServiceHandler           = (*Admin)(nil)
	_ iamv1connect.BindingServiceHandler        = (*Admin)(nil)
)

// NewAdmin returns the admin handlers over s. A nil audit logger or log discards.
func NewAdmin(s *store.Store, a *audit.Logger, log *slog.Logger) *Admin {
	if a == nil {
		a = audit.New(nil)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Admin{store: s, audit: a, log: log}
}

// Register mounts the five services on mux with opts (the auth interceptor among
// them).
func (a *Admin) Register(mux *http.ServeMux, opts ...connect.HandlerOption) {
	mux.Handle(iamv1connect.NewUserServiceHandler(a, opts...))
	mux.Handle(iamv1connect.NewServiceAccountServiceHandler(a, opts...))
	mux.Handle(iamv1connect.NewProjectServiceHandler(a, opts...))
	mux.Handle(iamv1connect.NewRoleServiceHandler(a, opts...))
	mux.Handle(iamv1connect.NewBindingServiceHandler(a, opts...))
}

// AdminPermissions returns the permission each procedure of the five admin services
// requires (procedure → permission), for pkg/auth's interceptor table.
func AdminPermissions() map[string]string {
	return map[string]string{
		iamv1connect.UserServiceCreateUserProcedure: "iam.user.create",
		iamv1connect.UserServiceGetUserProcedure:    "iam.user.get",
		iamv1connect.UserServiceListUsersProcedure:  "iam.user.list",
		iamv1connect.UserServiceUpdateUserProcedure: "iam.user.update",
		iamv1connect.UserServiceDeleteUserProcedure: "iam.user.delete",

		iamv1connect.ServiceAccountServiceCreateServiceAccountProcedure:      "iam.serviceaccount.create",
		iamv1connect.ServiceAccountServiceGetServiceAccountProcedure:         "iam.serviceaccount.get",
		iamv1connect.ServiceAccountServiceListServiceAccountsProcedure:       "iam.serviceaccount.list",
		iamv1connect.ServiceAccountServiceUpdateServiceAccountProcedure:      "iam.serviceaccount.update",
		iamv1connect.ServiceAccountServiceDeleteServiceAccountProcedure:      "iam.serviceaccount.delete",
		iamv1connect.ServiceAccountServiceResetServiceAccountSecretProcedure: "iam.serviceaccount.reset",

		iamv1connect.ProjectServiceCreateProjectProcedure: "iam.project.create",
		iamv1connect.ProjectServiceGetProjectProcedure:    "iam.project.get",
		iamv1connect.ProjectServiceListProjectsProcedure:  "iam.project.list",
		iamv1connect.ProjectServiceDeleteProjectProcedure: "iam.project.delete",

		iamv1connect.RoleServiceCreateRoleProcedure: "iam.role.create",
		iamv1connect.RoleServiceGetRoleProcedure:    "iam.role.get",
		iamv1connect.RoleServiceListRolesProcedure:  "iam.role.list",
		iamv1connect.RoleServiceUpdateRoleProcedure: "iam.role.update",
		iamv1connect.RoleServiceDeleteRoleProcedure: "iam.role.delete",

		iamv1connect.BindingServiceCreateBindingProcedure: "iam.binding.create",
		iamv1connect.BindingServiceListBindingsProcedure:  "iam.binding.list",
		iamv1connect.BindingServiceDeleteBindingProcedure: "iam.binding.delete",
	}
}

// adminActor is the principal making the request, "" when unauthenticated.
func adminActor(ctx context.Context) string {
	if id, ok := auth.IdentityFromContext(ctx); ok {
		return id.Subject
	}
	return ""
}

// adminError converts err for the caller, logging what the conversion hides
// (Internal and Unavailable lose their detail on the wire).
func (a *Admin) adminError(ctx context.Context, procedure string, err error) error {
	if err == nil {
		return nil
	}
	ce := ConnectError(err)
	var c *connect.Error
	if errors.As(ce, &c) && (c.Code() == connect.CodeInternal || c.Code() == connect.CodeUnavailable) {
		a.log.LogAttrs(ctx, slog.LevelError, "admin call failed", slog.String("procedure", procedure), slog.Any("error", err))
	}
	return ce
}

// record audits a change: action like "user.create", target the object's name. A
// failure is recorded with its error message, which never holds a secret.
func (a *Admin) record(ctx context.Context, peer connect.Peer, action, target string, err error) {
	ev := audit.Event{Action: action, Actor: adminActor(ctx), Target: target, Source: adminPeerHost(peer.Addr)}
	if err != nil {
		ev.Outcome, ev.Reason = audit.Failure, err.Error()
	}
	a.audit.Record(ctx, ev)
}

// adminPeerHost strips the port from a peer address.
func adminPeerHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
