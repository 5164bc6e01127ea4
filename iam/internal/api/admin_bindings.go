package api

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/audit"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// bindingTarget names a binding in the audit log: "<principal>/<role>@<project or *>".
func bindingTarget(principal, role, project string) string {
	if project == "" {
		project = "*"
	}
	return principal + "/" + role + "@" + project
}

// CreateBinding binds a principal to a role in a project or globally (audited as
// binding.create with the effect).
func (a *Admin) CreateBinding(ctx context.Context, req *connect.Request[iamv1.CreateBindingRequest]) (*connect.Response[iamv1.CreateBindingResponse], error) {
	in := req.Msg.GetBinding()
	b, err := a.store.CreateBinding(ctx, in)
	ev := audit.Event{Action: "binding.create", Actor: adminActor(ctx), Target: bindingTarget(in.GetPrincipal(), in.GetRole(), in.GetProject()),
		Source: adminPeerHost(req.Peer().Addr), Attrs: []slog.Attr{slog.String("effect", in.GetEffect().String())}}
	if err != nil {
		ev.Outcome, ev.Reason = audit.Failure, err.Error()
	}
	a.audit.Record(ctx, ev)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.BindingServiceCreateBindingProcedure, err)
	}
	return connect.NewResponse(&iamv1.CreateBindingResponse{Binding: b}), nil
}

// ListBindings returns bindings filtered by principal and/or project ("*" = global
// only).
func (a *Admin) ListBindings(ctx context.Context, req *connect.Request[iamv1.ListBindingsRequest]) (*connect.Response[iamv1.ListBindingsResponse], error) {
	bs, err := a.store.ListBindings(ctx, req.Msg.GetPrincipal(), req.Msg.GetProject())
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.BindingServiceListBindingsProcedure, err)
	}
	return connect.NewResponse(&iamv1.ListBindingsResponse{Bindings: bs}), nil
}

// DeleteBinding removes one binding (audited as binding.delete).
func (a *Admin) DeleteBinding(ctx context.Context, req *connect.Request[iamv1.DeleteBindingRequest]) (*connect.Response[iamv1.DeleteBindingResponse], error) {
	m := req.Msg
	err := a.store.DeleteBinding(ctx, m.GetPrincipal(), m.GetRole(), m.GetProject())
	a.record(ctx, req.Peer(), "binding.delete", bindingTarget(m.GetPrincipal(), m.GetRole(), m.GetProject()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.BindingServiceDeleteBindingProcedure, err)
	}
	return connect.NewResponse(&iamv1.DeleteBindingResponse{}), nil
}
