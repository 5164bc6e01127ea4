package iamclient

import (
	"context"
	"fmt"
	"slices"

	"connectrpc.com/connect"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// create runs a create call of kind create. match reads the object back after an
// AlreadyExists that follows an uncertain attempt; it returns the stored response when the
// object is the one asked for, or nil when it differs.
func create[Req, Res any](ctx context.Context, c *Client, name string, msg *Req,
	method func(cn *conn) func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
	match func(ctx context.Context) (*Res, error),
) (*Res, error) {
	var resolved *Res
	o := callOptions{name: name, kind: kindCreate}
	o.resolve = func(ctx context.Context, err error) error {
		if !isAlreadyExists(err) {
			return err
		}
		if match != nil {
			got, merr := match(ctx)
			if merr == nil && got != nil {
				resolved = got
				return nil
			}
		}
		return fmt.Errorf("%w: a retry found it already exists: %w", ErrOutcomeUnknown, err)
	}
	out, err := unary(ctx, c, o, msg, method)
	if err == nil && out == nil {
		out = resolved
	}
	return out, err
}

// ---- users

// CreateUser creates a user with a password (kind create). After an uncertain attempt
// the user found is taken for ours when its display name and disabled flag match.
func (c *Client) CreateUser(ctx context.Context, req *iamv1.CreateUserRequest) (*iamv1.CreateUserResponse, error) {
	return create(ctx, c, "create user", req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.CreateUserRequest]) (*connect.Response[iamv1.CreateUserResponse], error) {
			return cn.users.CreateUser
		},
		func(ctx context.Context) (*iamv1.CreateUserResponse, error) {
			got, err := c.GetUser(ctx, &iamv1.GetUserRequest{Name: req.GetUser().GetName()})
			if err != nil {
				return nil, err
			}
			u, want := got.GetUser(), req.GetUser()
			if u.GetDisplayName() != want.GetDisplayName() || u.GetDisabled() != want.GetDisabled() {
				return nil, nil
			}
			return &iamv1.CreateUserResponse{User: u}, nil
		})
}

// GetUser reads a user (kind read).
func (c *Client) GetUser(ctx context.Context, req *iamv1.GetUserRequest) (*iamv1.GetUserResponse, error) {
	return unary(ctx, c, callOptions{name: "get user", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.GetUserRequest]) (*connect.Response[iamv1.GetUserResponse], error) {
			return cn.users.GetUser
		})
}

// ListUsers lists every user (kind read).
func (c *Client) ListUsers(ctx context.Context, req *iamv1.ListUsersRequest) (*iamv1.ListUsersResponse, error) {
	return unary(ctx, c, callOptions{name: "list users", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.ListUsersRequest]) (*connect.Response[iamv1.ListUsersResponse], error) {
			return cn.users.ListUsers
		})
}

// UpdateUser changes the fields set in req (kind idempotent). Disabling a user revokes
// every token issued to it before.
func (c *Client) UpdateUser(ctx context.Context, req *iamv1.UpdateUserRequest) (*iamv1.UpdateUserResponse, error) {
	return unary(ctx, c, callOptions{name: "update user", kind: kindIdempotent}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.UpdateUserRequest]) (*connect.Response[iamv1.UpdateUserResponse], error) {
			return cn.users.UpdateUser
		})
}

// DeleteUser deletes a user (kind idempotent).
func (c *Client) DeleteUser(ctx context.Context, req *iamv1.DeleteUserRequest) (*iamv1.DeleteUserResponse, error) {
	return unary(ctx, c, callOptions{name: "delete user", kind: kindIdempotent, resolve: deleted}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.DeleteUserRequest]) (*connect.Response[iamv1.DeleteUserResponse], error) {
			return cn.users.DeleteUser
		})
}

// ---- service accounts

// CreateServiceAccount creates a service account and returns its client secret, the only
// time it is shown (kind create, never resolved: an AlreadyExists after an uncertain
// attempt wraps [ErrOutcomeUnknown]; reset the secret to recover).
func (c *Client) CreateServiceAccount(ctx context.Context, req *iamv1.CreateServiceAccountRequest) (*iamv1.CreateServiceAccountResponse, error) {
	return create(ctx, c, "create service account", req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.CreateServiceAccountRequest]) (*connect.Response[iamv1.CreateServiceAccountResponse], error) {
			return cn.sas.CreateServiceAccount
		}, nil)
}

// GetServiceAccount reads a service account (kind read).
func (c *Client) GetServiceAccount(ctx context.Context, req *iamv1.GetServiceAccountRequest) (*iamv1.GetServiceAccountResponse, error) {
	return unary(ctx, c, callOptions{name: "get service account", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.GetServiceAccountRequest]) (*connect.Response[iamv1.GetServiceAccountResponse], error) {
			return cn.sas.GetServiceAccount
		})
}

// ListServiceAccounts lists every service account (kind read).
func (c *Client) ListServiceAccounts(ctx context.Context, req *iamv1.ListServiceAccountsRequest) (*iamv1.ListServiceAccountsResponse, error) {
	return unary(ctx, c, callOptions{name: "list service accounts", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.ListServiceAccountsRequest]) (*connect.Response[iamv1.ListServiceAccountsResponse], error) {
			return cn.sas.ListServiceAccounts
		})
}

// UpdateServiceAccount changes the fields set in req (kind idempotent).
func (c *Client) UpdateServiceAccount(ctx context.Context, req *iamv1.UpdateServiceAccountRequest) (*iamv1.UpdateServiceAccountResponse, error) {
	return unary(ctx, c, callOptions{name: "update service account", kind: kindIdempotent}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.UpdateServiceAccountRequest]) (*connect.Response[iamv1.UpdateServiceAccountResponse], error) {
			return cn.sas.UpdateServiceAccount
		})
}

// DeleteServiceAccount deletes a service account (kind idempotent).
func (c *Client) DeleteServiceAccount(ctx context.Context, req *iamv1.DeleteServiceAccountRequest) (*iamv1.DeleteServiceAccountResponse, error) {
	return unary(ctx, c, callOptions{name: "delete service account", kind: kindIdempotent, resolve: deleted}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.DeleteServiceAccountRequest]) (*connect.Response[iamv1.DeleteServiceAccountResponse], error) {
			return cn.sas.DeleteServiceAccount
		})
}

// ResetServiceAccountSecret replaces a service account's secret (kind idempotent: a
// repeated reset only replaces the secret once more, and the secret returned is the one
// that works).
func (c *Client) ResetServiceAccountSecret(ctx context.Context, req *iamv1.ResetServiceAccountSecretRequest) (*iamv1.ResetServiceAccountSecretResponse, error) {
	return unary(ctx, c, callOptions{name: "reset service account secret", kind: kindIdempotent}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.ResetServiceAccountSecretRequest]) (*connect.Response[iamv1.ResetServiceAccountSecretResponse], error) {
			return cn.sas.ResetServiceAccountSecret
		})
}

// ---- projects

// CreateProject creates a project (kind create; resolved by comparing the description).
func (c *Client) CreateProject(ctx context.Context, req *iamv1.CreateProjectRequest) (*iamv1.CreateProjectResponse, error) {
	return create(ctx, c, "create project", req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.CreateProjectRequest]) (*connect.Response[iamv1.CreateProjectResponse], error) {
			return cn.projects.CreateProject
		},
		func(ctx context.Context) (*iamv1.CreateProjectResponse, error) {
			got, err := c.GetProject(ctx, &iamv1.GetProjectRequest{Name: req.GetProject().GetName()})
			if err != nil {
				return nil, err
			}
			if got.GetProject().GetDescription() != req.GetProject().GetDescription() {
				return nil, nil
			}
			return &iamv1.CreateProjectResponse{Project: got.GetProject()}, nil
		})
}

// GetProject reads a project (kind read).
func (c *Client) GetProject(ctx context.Context, req *iamv1.GetProjectRequest) (*iamv1.GetProjectResponse, error) {
	return unary(ctx, c, callOptions{name: "get project", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.GetProjectRequest]) (*connect.Response[iamv1.GetProjectResponse], error) {
			return cn.projects.GetProject
		})
}

// ListProjects lists every project (kind read).
func (c *Client) ListProjects(ctx context.Context, req *iamv1.ListProjectsRequest) (*iamv1.ListProjectsResponse, error) {
	return unary(ctx, c, callOptions{name: "list projects", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.ListProjectsRequest]) (*connect.Response[iamv1.ListProjectsResponse], error) {
			return cn.projects.ListProjects
		})
}

// DeleteProject deletes a project (kind idempotent). It is refused with
// FailedPrecondition while bindings or service accounts refer to the project.
func (c *Client) DeleteProject(ctx context.Context, req *iamv1.DeleteProjectRequest) (*iamv1.DeleteProjectResponse, error) {
	return unary(ctx, c, callOptions{name: "delete project", kind: kindIdempotent, resolve: deleted}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.DeleteProjectRequest]) (*connect.Response[iamv1.DeleteProjectResponse], error) {
			return cn.projects.DeleteProject
		})
}

// ---- roles

// CreateRole creates a role (kind create; resolved by comparing permissions, as sets, and
// description).
func (c *Client) CreateRole(ctx context.Context, req *iamv1.CreateRoleRequest) (*iamv1.CreateRoleResponse, error) {
	return create(ctx, c, "create role", req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.CreateRoleRequest]) (*connect.Response[iamv1.CreateRoleResponse], error) {
			return cn.roles.CreateRole
		},
		func(ctx context.Context) (*iamv1.CreateRoleResponse, error) {
			got, err := c.GetRole(ctx, &iamv1.GetRoleRequest{Name: req.GetRole().GetName()})
			if err != nil {
				return nil, err
			}
			r, want := got.GetRole(), req.GetRole()
			if r.GetBuiltin() || r.GetDescription() != want.GetDescription() || !sameSet(r.GetPermissions(), want.GetPermissions()) {
				return nil, nil
			}
			return &iamv1.CreateRoleResponse{Role: r}, nil
		})
}

// GetRole reads a role (kind read).
func (c *Client) GetRole(ctx context.Context, req *iamv1.GetRoleRequest) (*iamv1.GetRoleResponse, error) {
	return unary(ctx, c, callOptions{name: "get role", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.GetRoleRequest]) (*connect.Response[iamv1.GetRoleResponse], error) {
			return cn.roles.GetRole
		})
}

// ListRoles lists every role, built-in ones included (kind read).
func (c *Client) ListRoles(ctx context.Context, req *iamv1.ListRolesRequest) (*iamv1.ListRolesResponse, error) {
	return unary(ctx, c, callOptions{name: "list roles", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.ListRolesRequest]) (*connect.Response[iamv1.ListRolesResponse], error) {
			return cn.roles.ListRoles
		})
}

// UpdateRole replaces a role's permissions (kind idempotent).
func (c *Client) UpdateRole(ctx context.Context, req *iamv1.UpdateRoleRequest) (*iamv1.UpdateRoleResponse, error) {
	return unary(ctx, c, callOptions{name: "update role", kind: kindIdempotent}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.UpdateRoleRequest]) (*connect.Response[iamv1.UpdateRoleResponse], error) {
			return cn.roles.UpdateRole
		})
}

// DeleteRole deletes a role (kind idempotent); refused for built-in roles and roles still
// bound.
func (c *Client) DeleteRole(ctx context.Context, req *iamv1.DeleteRoleRequest) (*iamv1.DeleteRoleResponse, error) {
	return unary(ctx, c, callOptions{name: "delete role", kind: kindIdempotent, resolve: deleted}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.DeleteRoleRequest]) (*connect.Response[iamv1.DeleteRoleResponse], error) {
			return cn.roles.DeleteRole
		})
}

// ---- bindings

// CreateBinding binds a principal to a role in a project, or globally (kind create;
// resolved by comparing the effect, unspecified counting as allow).
func (c *Client) CreateBinding(ctx context.Context, req *iamv1.CreateBindingRequest) (*iamv1.CreateBindingResponse, error) {
	return create(ctx, c, "create binding", req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.CreateBindingRequest]) (*connect.Response[iamv1.CreateBindingResponse], error) {
			return cn.bindings.CreateBinding
		},
		func(ctx context.Context) (*iamv1.CreateBindingResponse, error) {
			want := req.GetBinding()
			project := want.GetProject()
			if project == "" {
				project = "*" // global bindings only
			}
			got, err := c.ListBindings(ctx, &iamv1.ListBindingsRequest{Principal: want.GetPrincipal(), Project: project})
			if err != nil {
				return nil, err
			}
			for _, b := range got.GetBindings() {
				if b.GetRole() == want.GetRole() && b.GetProject() == want.GetProject() &&
					effectOf(b) == effectOf(want) {
					return &iamv1.CreateBindingResponse{Binding: b}, nil
				}
			}
			return nil, nil
		})
}

// ListBindings lists bindings, filtered by principal and/or project when set (project
// "*" = global bindings only) (kind read).
func (c *Client) ListBindings(ctx context.Context, req *iamv1.ListBindingsRequest) (*iamv1.ListBindingsResponse, error) {
	return unary(ctx, c, callOptions{name: "list bindings", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.ListBindingsRequest]) (*connect.Response[iamv1.ListBindingsResponse], error) {
			return cn.bindings.ListBindings
		})
}

// DeleteBinding removes a binding (kind idempotent).
func (c *Client) DeleteBinding(ctx context.Context, req *iamv1.DeleteBindingRequest) (*iamv1.DeleteBindingResponse, error) {
	return unary(ctx, c, callOptions{name: "delete binding", kind: kindIdempotent, resolve: deleted}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.DeleteBindingRequest]) (*connect.Response[iamv1.DeleteBindingResponse], error) {
			return cn.bindings.DeleteBinding
		})
}

// ---- tokens

// Token runs an OAuth 2.0 grant through TokenService.Token; no bearer token is sent. The
// password and client_credentials grants are kind idempotent (a repeat only issues
// another token); the refresh_token grant is kind once, because a refresh applied by a
// replica rotates the refresh token and presenting the old one again would revoke its
// whole family: its failures after the request left the client wrap
// [ErrOutcomeUnknown].
func (c *Client) Token(ctx context.Context, req *iamv1.TokenRequest) (*iamv1.TokenResponse, error) {
	k := kindIdempotent
	if req.GetGrantType() == GrantRefreshToken {
		k = kindOnce
	}
	return unary(ctx, c, callOptions{name: "token " + req.GetGrantType(), kind: k, noAuth: true}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.TokenRequest]) (*connect.Response[iamv1.TokenResponse], error) {
			return cn.tokens.Token
		})
}

// Revoke revokes a refresh token (and its family), an access token, a jti, or everything
// issued before a watermark (kind idempotent: revoking twice revokes the same thing; a
// repeated watermark without not_before may land a moment later and so cover tokens
// issued in between, which the caller asked to revoke anyway). Revoking one's own
// refresh token needs no permission; anything else needs iam.token.revoke.
func (c *Client) Revoke(ctx context.Context, req *iamv1.RevokeRequest) (*iamv1.RevokeResponse, error) {
	return unary(ctx, c, callOptions{name: "revoke", kind: kindIdempotent}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.RevokeRequest]) (*connect.Response[iamv1.RevokeResponse], error) {
			return cn.tokens.Revoke
		})
}

// ---- keys

// ListKeys lists the signing keys (public parts and lifecycle) (kind read).
func (c *Client) ListKeys(ctx context.Context, req *iamv1.ListKeysRequest) (*iamv1.ListKeysResponse, error) {
	return unary(ctx, c, callOptions{name: "list keys", kind: kindRead}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.ListKeysRequest]) (*connect.Response[iamv1.ListKeysResponse], error) {
			return cn.keys.ListKeys
		})
}

// RotateKey creates a pending signing key that becomes active once verifiers can have
// fetched it (kind once: a repeat would create a second key).
func (c *Client) RotateKey(ctx context.Context, req *iamv1.RotateKeyRequest) (*iamv1.RotateKeyResponse, error) {
	return unary(ctx, c, callOptions{name: "rotate key", kind: kindOnce}, req,
		func(cn *conn) func(context.Context, *connect.Request[iamv1.RotateKeyRequest]) (*connect.Response[iamv1.RotateKeyResponse], error) {
			return cn.keys.RotateKey
		})
}

// sameSet reports whether a and b hold the same strings, ignoring order and repeats.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// effectOf returns b's effect with unspecified read as allow.
func effectOf(b *iamv1.Binding) iamv1.Effect {
	if b.GetEffect() == iamv1.Effect_EFFECT_UNSPECIFIED {
		return iamv1.Effect_EFFECT_ALLOW
	}
	return b.GetEffect()
}
