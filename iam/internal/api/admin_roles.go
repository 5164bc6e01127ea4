package api

import (
	"context"

	"connectrpc.com/connect"

	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// CreateRole creates a custom role (audited as role.create).
func (a *Admin) CreateRole(ctx context.Context, req *connect.Request[iamv1.CreateRoleRequest]) (*connect.Response[iamv1.CreateRoleResponse], error) {
	r, err := a.store.CreateRole(ctx, req.Msg.GetRole())
	a.record(ctx, req.Peer(), "role.create", req.Msg.GetRole().GetName(), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.RoleServiceCreateRoleProcedure, err)
	}
	return connect.NewResponse(&iamv1.CreateRoleResponse{Role: r}), nil
}

// GetRole returns one role.
func (a *Admin) GetRole(ctx context.Context, req *connect.Request[iamv1.GetRoleRequest]) (*connect.Response[iamv1.GetRoleResponse], error) {
	r, err := a.store.GetRole(ctx, req.Msg.GetName())
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.RoleServiceGetRoleProcedure, err)
	}
	return connect.NewResponse(&iamv1.GetRoleResponse{Role: r}), nil
}

// ListRoles returns every role, built-in ones included.
func (a *Admin) ListRoles(ctx context.Context, req *connect.Request[iamv1.ListRolesRequest]) (*connect.Response[iamv1.ListRolesResponse], error) {
	rs, err := a.store.ListRoles(ctx)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.RoleServiceListRolesProcedure, err)
	}
	return connect.NewResponse(&iamv1.ListRolesResponse{Roles: rs}), nil
}

// UpdateRole replaces a custom role's permissions (audited as role.update).
func (a *Admin) UpdateRole(ctx context.Context, req *connect.Request[iamv1.UpdateRoleRequest]) (*connect.Response[iamv1.UpdateRoleResponse], error) {
	r, err := a.store.UpdateRole(ctx, req.Msg.GetName(), req.Msg.GetPermissions(), req.Msg.Description)
	a.record(ctx, req.Peer(), "role.update", req.Msg.GetName(), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.RoleServiceUpdateRoleProcedure, err)
	}
	return connect.NewResponse(&iamv1.UpdateRoleResponse{Role: r}), nil
}

// DeleteRole deletes a custom role that nothing is bound to (audited as role.delete).
func (a *Admin) DeleteRole(ctx context.Context, req *connect.Request[iamv1.DeleteRoleRequest]) (*connect.Response[iamv1.DeleteRoleResponse], error) {
	err := a.store.DeleteRole(ctx, req.Msg.GetName())
	a.record(ctx, req.Peer(), "role.delete", req.Msg.GetName(), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.RoleServiceDeleteRoleProcedure, err)
	}
	return connect.NewResponse(&iamv1.DeleteRoleResponse{}), nil
}
