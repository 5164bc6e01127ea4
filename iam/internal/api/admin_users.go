package api

import (
	"context"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/store"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// CreateUser creates a user with a password (audited as user.create).
func (a *Admin) CreateUser(ctx context.Context, req *connect.Request[iamv1.CreateUserRequest]) (*connect.Response[iamv1.CreateUserResponse], error) {
	u, err := a.store.CreateUser(ctx, req.Msg.GetUser(), req.Msg.GetPassword())
	a.record(ctx, req.Peer(), "user.create", store.UserPrincipal(req.Msg.GetUser().GetName()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.UserServiceCreateUserProcedure, err)
	}
	return connect.NewResponse(&iamv1.CreateUserResponse{User: u}), nil
}

// GetUser returns one user.
func (a *Admin) GetUser(ctx context.Context, req *connect.Request[iamv1.GetUserRequest]) (*connect.Response[iamv1.GetUserResponse], error) {
	u, err := a.store.GetUser(ctx, req.Msg.GetName())
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.UserServiceGetUserProcedure, err)
	}
	return connect.NewResponse(&iamv1.GetUserResponse{User: u}), nil
}

// ListUsers returns every user.
func (a *Admin) ListUsers(ctx context.Context, req *connect.Request[iamv1.ListUsersRequest]) (*connect.Response[iamv1.ListUsersResponse], error) {
	us, err := a.store.ListUsers(ctx)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.UserServiceListUsersProcedure, err)
	}
	return connect.NewResponse(&iamv1.ListUsersResponse{Users: us}), nil
}

// UpdateUser changes the fields set (audited as user.update, or user.disable when it
// disables the user, which also revokes the user's tokens).
func (a *Admin) UpdateUser(ctx context.Context, req *connect.Request[iamv1.UpdateUserRequest]) (*connect.Response[iamv1.UpdateUserResponse], error) {
	m := req.Msg
	u, err := a.store.UpdateUser(ctx, m.GetName(), store.UserUpdate{DisplayName: m.DisplayName, Disabled: m.Disabled, Password: m.Password})
	action := "user.update"
	if m.Disabled != nil && *m.Disabled {
		action = "user.disable"
	}
	a.record(ctx, req.Peer(), action, store.UserPrincipal(m.GetName()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.UserServiceUpdateUserProcedure, err)
	}
	return connect.NewResponse(&iamv1.UpdateUserResponse{User: u}), nil
}

// DeleteUser deletes a user and its bindings (audited as user.delete).
func (a *Admin) DeleteUser(ctx context.Context, req *connect.Request[iamv1.DeleteUserRequest]) (*connect.Response[iamv1.DeleteUserResponse], error) {
	err := a.store.DeleteUser(ctx, req.Msg.GetName())
	a.record(ctx, req.Peer(), "user.delete", store.UserPrincipal(req.Msg.GetName()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.UserServiceDeleteUserProcedure, err)
	}
	return connect.NewResponse(&iamv1.DeleteUserResponse{}), nil
}
