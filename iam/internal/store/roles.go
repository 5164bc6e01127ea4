package store

import (
	"context"
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// Names of the built-in roles.
const (
	RoleAdmin  = "admin"
	RoleMember = "member"
	RoleReader = "reader"
)

// BuiltinRoles returns fresh copies of the built-in roles, as EnsureBuiltins stores
// them.
func BuiltinRoles() []*iamv1.Role {
	return []*iamv1.Role{
		{Name: RoleAdmin, Builtin: true, Description: "Everything.", Permissions: []string{"*"}},
		{Name: RoleMember, Builtin: true, Description: "Manage compute, network, volume and image resources; read everything.",
			Permissions: []string{"vm.*", "network.*", "volume.*", "image.*", "metrics.*", "events.*", "*.get", "*.list", "*.watch"}},
		{Name: RoleReader, Builtin: true, Description: "Read everything.", Permissions: []string{"*.get", "*.list", "*.watch"}},
	}
}

func isBuiltinRole(name string) bool {
	return name == RoleAdmin || name == RoleMember || name == RoleReader
}

// normalizePermissions validates perms and returns them deduplicated, in order of
// first appearance.
func normalizePermissions(field string, perms []string) ([]string, error) {
	if len(perms) == 0 {
		return nil, fmt.Errorf("%w: %s must name at least one permission", ErrInvalid, field)
	}
	if len(perms) > MaxPermissions {
		return nil, fmt.Errorf("%w: %s has more than %d permissions", ErrInvalid, field, MaxPermissions)
	}
	out := make([]string, 0, len(perms))
	for i, p := range perms {
		if err := ValidatePermission(fmt.Sprintf("%s[%d]", field, i), p); err != nil {
			return nil, err
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// EnsureBuiltins stores the built-in roles, or restores them when their stored form
// differs from BuiltinRoles (an upgrade changed them). It is idempotent and safe to
// run concurrently from every replica at startup.
func (s *Store) EnsureBuiltins(ctx context.Context) error {
	for _, want := range BuiltinRoles() {
		key := roleKey(want.Name)
		err := s.retry(ctx, "ensure role "+want.Name, func(ctx context.Context) (bool, error) {
			kv, err := s.get(ctx, key)
			if err != nil {
				return false, err
			}
			var rev int64
			if kv != nil {
				have := new(iamv1.Role)
				if unmarshal(key, kv.Value, have) == nil && proto.Equal(have, want) {
					return true, nil
				}
				rev = kv.ModRevision
			}
			return commit("ensure role", s.c.Txn(ctx).If(unchanged(key, rev)).Then(chainfire.OpPut(key, marshal(want))))
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// CreateRole stores a new custom role (name and permission patterns validated,
// duplicates dropped, builtin forced false). A duplicate name, including a built-in's,
// is ErrAlreadyExists.
func (s *Store) CreateRole(ctx context.Context, r *iamv1.Role) (*iamv1.Role, error) {
	if err := ValidateName("role.name", r.GetName()); err != nil {
		return nil, err
	}
	if err := validateText("role.description", r.GetDescription()); err != nil {
		return nil, err
	}
	perms, err := normalizePermissions("role.permissions", r.GetPermissions())
	if err != nil {
		return nil, err
	}
	n := &iamv1.Role{Name: r.GetName(), Permissions: perms, Description: r.GetDescription()}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	key := roleKey(n.Name)
	ok, err := commit("create role", s.c.Txn(ctx).If(absent(key)).Then(chainfire.OpPut(key, marshal(n))))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, alreadyExists("role", n.Name)
	}
	return n, nil
}

func (s *Store) roleRecord(ctx context.Context, name string) (*iamv1.Role, int64, error) {
	kv, err := s.get(ctx, roleKey(name))
	if err != nil {
		return nil, 0, err
	}
	if kv == nil {
		return nil, 0, notFound("role", name)
	}
	r := new(iamv1.Role)
	return r, kv.ModRevision, unmarshal(string(kv.Key), kv.Value, r)
}

// GetRole returns the role name, or ErrNotFound.
func (s *Store) GetRole(ctx context.Context, name string) (*iamv1.Role, error) {
	if err := ValidateName("name", name); err != nil {
		return nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	r, _, err := s.roleRecord(ctx, name)
	return r, err
}

// ListRoles returns every role, built-in ones included, ordered by name.
func (s *Store) ListRoles(ctx context.Context) ([]*iamv1.Role, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kvs, _, err := s.list(ctx, PrefixRoles)
	if err != nil {
		return nil, err
	}
	out := make([]*iamv1.Role, 0, len(kvs))
	for _, kv := range kvs {
		r := new(iamv1.Role)
		if err := unmarshal(string(kv.Key), kv.Value, r); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, nil
}

// UpdateRole replaces a custom role's permissions (and its description when non-nil).
// Built-in roles are ErrFailedPrecondition; ErrNotFound if absent.
func (s *Store) UpdateRole(ctx context.Context, name string, permissions []string, description *string) (*iamv1.Role, error) {
	if err := ValidateName("name", name); err != nil {
		return nil, err
	}
	perms, err := normalizePermissions("permissions", permissions)
	if err != nil {
		return nil, err
	}
	if description != nil {
		if err := validateText("description", *description); err != nil {
			return nil, err
		}
	}
	var out *iamv1.Role
	err = s.retry(ctx, "update role "+name, func(ctx context.Context) (bool, error) {
		r, rev, err := s.roleRecord(ctx, name)
		if err != nil {
			return false, err
		}
		if r.Builtin || isBuiltinRole(name) {
			return false, fmt.Errorf("%w: role %q is built in and cannot be changed", ErrFailedPrecondition, name)
		}
		r.Permissions = perms
		if description != nil {
			r.Description = *description
		}
		out = r
		return commit("update role", s.c.Txn(ctx).If(unchanged(roleKey(name), rev)).Then(chainfire.OpPut(roleKey(name), marshal(r))))
	})
	return out, err
}

// DeleteRole deletes a custom role. Built-in roles and roles still bound (checked
// atomically with the delete) are refused with ErrFailedPrecondition naming the
// bindings; ErrNotFound if absent.
func (s *Store) DeleteRole(ctx context.Context, name string) error {
	if err := ValidateName("name", name); err != nil {
		return err
	}
	return s.retry(ctx, "delete role "+name, func(ctx context.Context) (bool, error) {
		r, rev, err := s.roleRecord(ctx, name)
		if err != nil {
			return false, err
		}
		if r.Builtin || isBuiltinRole(name) {
			return false, fmt.Errorf("%w: role %q is built in and cannot be deleted", ErrFailedPrecondition, name)
		}
		bindings, brev, err := s.list(ctx, PrefixBindings)
		if err != nil {
			return false, err
		}
		var inTheWay []string
		for _, b := range bindings {
			if p := splitKey(string(b.Key), PrefixBindings); len(p) == 3 && p[2] == name {
				inTheWay = append(inTheWay, fmt.Sprintf("binding %s/%s", p[0], p[1]))
			}
		}
		if len(inTheWay) > 0 {
			return false, fmt.Errorf("%w: role %q is still bound: %s", ErrFailedPrecondition, name, summarize(inTheWay))
		}
		return commit("delete role", s.c.Txn(ctx).
			If(unchanged(roleKey(name), rev), unchangedSince(PrefixBindings, brev)).
			Then(chainfire.OpDelete(roleKey(name))))
	})
}
