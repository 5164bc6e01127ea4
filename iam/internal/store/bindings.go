package store

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// validateBinding checks the identifying fields of a binding.
func validateBinding(principal, role, project string) error {
	if _, _, err := ParsePrincipal("binding.principal", principal); err != nil {
		return err
	}
	if err := ValidateName("binding.role", role); err != nil {
		return err
	}
	if project != "" {
		if err := ValidateName("binding.project", project); err != nil {
			return err
		}
	}
	return nil
}

// CreateBinding stores a binding of b.Principal to b.Role in b.Project (empty: global)
// with b.Effect (unspecified means allow). The principal, the role and the project
// (when set) must exist — ErrNotFound naming the missing one — and the check is atomic
// with the write. A binding with the same (principal, role, project), whatever its
// effect, is ErrAlreadyExists.
func (s *Store) CreateBinding(ctx context.Context, b *iamv1.Binding) (*iamv1.Binding, error) {
	if err := validateBinding(b.GetPrincipal(), b.GetRole(), b.GetProject()); err != nil {
		return nil, err
	}
	effect := b.GetEffect()
	switch effect {
	case iamv1.Effect_EFFECT_UNSPECIFIED:
		effect = iamv1.Effect_EFFECT_ALLOW
	case iamv1.Effect_EFFECT_ALLOW, iamv1.Effect_EFFECT_DENY:
	default:
		return nil, fmt.Errorf("%w: binding.effect %d is not ALLOW or DENY", ErrInvalid, effect)
	}
	kind, pname, _ := ParsePrincipal("binding.principal", b.GetPrincipal())
	n := &iamv1.Binding{Principal: b.GetPrincipal(), Role: b.GetRole(), Project: b.GetProject(), Effect: effect, CreateTime: timestamppb.New(s.now())}
	key := BindingKey(n.Project, n.Principal, n.Role)
	refs := []struct{ what, name, key string }{
		{kind, pname, principalKey(kind, pname)},
		{"role", n.Role, roleKey(n.Role)},
	}
	if n.Project != "" {
		refs = append(refs, struct{ what, name, key string }{"project", n.Project, projectKey(n.Project)})
	}
	err := s.retry(ctx, "create binding", func(ctx context.Context) (bool, error) {
		cmps := []chainfire.Cmp{absent(key)}
		for _, r := range refs {
			kv, err := s.get(ctx, r.key)
			if err != nil {
				return false, err
			}
			if kv == nil {
				if r.what == KindServiceAccount {
					r.what = "service account"
				}
				return false, notFound(r.what, r.name)
			}
			cmps = append(cmps, unchanged(r.key, kv.ModRevision))
		}
		resp, err := s.c.Txn(ctx).If(cmps...).Then(chainfire.OpPut(key, marshal(n))).Else(chainfire.OpGet(key)).Commit()
		if err != nil {
			return false, unavailable("create binding", err)
		}
		if !resp.Succeeded && len(resp.Responses) > 0 && len(resp.Responses[0].GetResponseRange().GetKvs()) > 0 {
			return false, fmt.Errorf("%w: binding of %s to role %q in %s", ErrAlreadyExists, n.Principal, n.Role, projectLabel(n.Project))
		}
		return resp.Succeeded, nil
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

func projectLabel(project string) string {
	if project == "" {
		return "global scope"
	}
	return fmt.Sprintf("project %q", project)
}

// ListBindings returns bindings, filtered by principal when non-empty and by project
// when non-empty ("*" selects global bindings only), ordered by project, principal,
// role.
func (s *Store) ListBindings(ctx context.Context, principal, project string) ([]*iamv1.Binding, error) {
	prefix := PrefixBindings
	switch project {
	case "":
	case "*":
		prefix += GlobalProject + "/"
	default:
		if err := ValidateName("project", project); err != nil {
			return nil, err
		}
		prefix += project + "/"
	}
	if principal != "" {
		if _, _, err := ParsePrincipal("principal", principal); err != nil {
			return nil, err
		}
		if project != "" {
			prefix += principal + "/"
		}
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kvs, _, err := s.list(ctx, prefix)
	if err != nil {
		return nil, err
	}
	var out []*iamv1.Binding
	for _, kv := range kvs {
		if p := splitKey(string(kv.Key), PrefixBindings); principal != "" && (len(p) != 3 || p[1] != principal) {
			continue
		}
		b := new(iamv1.Binding)
		if err := unmarshal(string(kv.Key), kv.Value, b); err != nil {
			return nil, err
		}
		out = append(out, b)
	}
	return out, nil
}

// DeleteBinding deletes the binding (principal, role, project); project "" is global.
// ErrNotFound if there is none.
func (s *Store) DeleteBinding(ctx context.Context, principal, role, project string) error {
	if err := validateBinding(principal, role, project); err != nil {
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	resp, err := s.c.Delete(ctx, BindingKey(project, principal, role))
	if err != nil {
		return unavailable("delete binding", err)
	}
	if resp.Deleted == 0 {
		return fmt.Errorf("%w: binding of %s to role %q in %s", ErrNotFound, principal, role, projectLabel(project))
	}
	return nil
}

// CanScope reports whether principal may obtain a token scoped to project: nil when it
// has an ALLOW binding in that project or a global one (deny bindings are applied per
// request by verifiers, not here), else ErrFailedPrecondition naming both. The project
// must exist (ErrNotFound). An empty project (an unscoped token) is always allowed.
func (s *Store) CanScope(ctx context.Context, principal, project string) error {
	if project == "" {
		return nil
	}
	if _, _, err := ParsePrincipal("principal", principal); err != nil {
		return err
	}
	if err := ValidateName("project", project); err != nil {
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	resp, err := s.c.Txn(ctx).Then(
		chainfire.OpGet(projectKey(project)),
		chainfire.OpGet(PrefixBindings+project+"/"+principal+"/", chainfire.WithPrefix()),
		chainfire.OpGet(PrefixBindings+GlobalProject+"/"+principal+"/", chainfire.WithPrefix()),
	).Commit()
	if err != nil {
		return unavailable("read bindings", err)
	}
	if len(resp.Responses) != 3 {
		return unavailable("read bindings", fmt.Errorf("txn returned %d responses, want 3", len(resp.Responses)))
	}
	if len(resp.Responses[0].GetResponseRange().GetKvs()) == 0 {
		return notFound("project", project)
	}
	for _, r := range resp.Responses[1:] {
		for _, kv := range r.GetResponseRange().GetKvs() {
			b := new(iamv1.Binding)
			if err := unmarshal(string(kv.Key), kv.Value, b); err != nil {
				return err
			}
			if b.Effect != iamv1.Effect_EFFECT_DENY {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: %s has no role in project %q", ErrFailedPrecondition, principal, project)
}

// PrincipalActive returns nil when principal ("user:<name>" or
// "serviceaccount:<name>") exists and is enabled, else ErrNotFound or ErrDisabled
// (ErrInvalid for a malformed principal).
func (s *Store) PrincipalActive(ctx context.Context, principal string) error {
	kind, name, err := ParsePrincipal("principal", principal)
	if err != nil {
		return err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var disabled bool
	if kind == KindUser {
		u, _, _, err := s.userRecord(ctx, name)
		if err != nil {
			return err
		}
		disabled = u.Disabled
	} else {
		sa, _, _, err := s.saRecord(ctx, name)
		if err != nil {
			return err
		}
		disabled = sa.Disabled
	}
	if disabled {
		return fmt.Errorf("%w: %s", ErrDisabled, principal)
	}
	return nil
}
