package api

import (
	"context"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/store"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// CreateServiceAccount creates a service account and returns its client secret, once
// (audited as serviceaccount.create; the secret is never logged).
func (a *Admin) CreateServiceAccount(ctx context.Context, req *connect.Request[iamv1.CreateServiceAccountRequest]) (*connect.Response[iamv1.CreateServiceAccountResponse], error) {
	sa, secret, err := a.store.CreateServiceAccount(ctx, req.Msg.GetServiceAccount())
	a.record(ctx, req.Peer(), "serviceaccount.create", store.ServiceAccountPrincipal(req.Msg.GetServiceAccount().GetName()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ServiceAccountServiceCreateServiceAccountProcedure, err)
	}
	return connect.NewResponse(&iamv1.CreateServiceAccountResponse{ServiceAccount: sa, ClientSecret: secret}), nil
}

// GetServiceAccount returns one service account.
func (a *Admin) GetServiceAccount(ctx context.Context, req *connect.Request[iamv1.GetServiceAccountRequest]) (*connect.Response[iamv1.GetServiceAccountResponse], error) {
	sa, err := a.store.GetServiceAccount(ctx, req.Msg.GetName())
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ServiceAccountServiceGetServiceAccountProcedure, err)
	}
	return connect.NewResponse(&iamv1.GetServiceAccountResponse{ServiceAccount: sa}), nil
}

// ListServiceAccounts returns every service account.
func (a *Admin) ListServiceAccounts(ctx context.Context, req *connect.Request[iamv1.ListServiceAccountsRequest]) (*connect.Response[iamv1.ListServiceAccountsResponse], error) {
	sas, err := a.store.ListServiceAccounts(ctx)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ServiceAccountServiceListServiceAccountsProcedure, err)
	}
	return connect.NewResponse(&iamv1.ListServiceAccountsResponse{ServiceAccounts: sas}), nil
}

// UpdateServiceAccount changes the fields set (audited as serviceaccount.update, or
// serviceaccount.disable).
func (a *Admin) UpdateServiceAccount(ctx context.Context, req *connect.Request[iamv1.UpdateServiceAccountRequest]) (*connect.Response[iamv1.UpdateServiceAccountResponse], error) {
	m := req.Msg
	sa, err := a.store.UpdateServiceAccount(ctx, m.GetName(), store.ServiceAccountUpdate{
		Description: m.Description, Disabled: m.Disabled, RateLimitExempt: m.RateLimitExempt})
	action := "serviceaccount.update"
	if m.Disabled != nil && *m.Disabled {
		action = "serviceaccount.disable"
	}
	a.record(ctx, req.Peer(), action, store.ServiceAccountPrincipal(m.GetName()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ServiceAccountServiceUpdateServiceAccountProcedure, err)
	}
	return connect.NewResponse(&iamv1.UpdateServiceAccountResponse{ServiceAccount: sa}), nil
}

// DeleteServiceAccount deletes a service account and its bindings (audited as
// serviceaccount.delete).
func (a *Admin) DeleteServiceAccount(ctx context.Context, req *connect.Request[iamv1.DeleteServiceAccountRequest]) (*connect.Response[iamv1.DeleteServiceAccountResponse], error) {
	err := a.store.DeleteServiceAccount(ctx, req.Msg.GetName())
	a.record(ctx, req.Peer(), "serviceaccount.delete", store.ServiceAccountPrincipal(req.Msg.GetName()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ServiceAccountServiceDeleteServiceAccountProcedure, err)
	}
	return connect.NewResponse(&iamv1.DeleteServiceAccountResponse{}), nil
}

// ResetServiceAccountSecret issues a new client secret; the old one stops working at
// once (audited as serviceaccount.reset).
func (a *Admin) ResetServiceAccountSecret(ctx context.Context, req *connect.Request[iamv1.ResetServiceAccountSecretRequest]) (*connect.Response[iamv1.ResetServiceAccountSecretResponse], error) {
	secret, err := a.store.ResetServiceAccountSecret(ctx, req.Msg.GetName())
	a.record(ctx, req.Peer(), "serviceaccount.reset", store.ServiceAccountPrincipal(req.Msg.GetName()), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ServiceAccountServiceResetServiceAccountSecretProcedure, err)
	}
	return connect.NewResponse(&iamv1.ResetServiceAccountSecretResponse{ClientSecret: secret}), nil
}
