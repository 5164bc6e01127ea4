package store

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// CreateProject stores a new project (name validated, create_time set). A duplicate is
// ErrAlreadyExists.
func (s *Store) CreateProject(ctx context.Context, p *iamv1.Project) (*iamv1.Project, error) {
	if err := ValidateName("project.name", p.GetName()); err != nil {
		return nil, err
	}
	if err := validateText("project.description", p.GetDescription()); err != nil {
		return nil, err
	}
	n := &iamv1.Project{Name: p.GetName(), Description: p.GetDescription(), CreateTime: timestamppb.New(s.now())}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	key := projectKey(n.Name)
	ok, err := commit("create project", s.c.Txn(ctx).If(absent(key)).Then(chainfire.OpPut(key, marshal(n))))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, alreadyExists("project", n.Name)
	}
	return n, nil
}

// GetProject returns the project name, or ErrNotFound.
func (s *Store) GetProject(ctx context.Context, name string) (*iamv1.Project, error) {
	if err := ValidateName("name", name); err != nil {
		return nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kv, err := s.get(ctx, projectKey(name))
	if err != nil {
		return nil, err
	}
	if kv == nil {
		return nil, notFound("project", name)
	}
	p := new(iamv1.Project)
	return p, unmarshal(string(kv.Key), kv.Value, p)
}

// ProjectExists returns nil if the project exists, else ErrNotFound (ErrInvalid for a
// malformed name).
func (s *Store) ProjectExists(ctx context.Context, name string) error {
	_, err := s.GetProject(ctx, name)
	return err
}

// ListProjects returns every project, ordered by name.
func (s *Store) ListProjects(ctx context.Context) ([]*iamv1.Project, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kvs, _, err := s.list(ctx, PrefixProjects)
	if err != nil {
		return nil, err
	}
	out := make([]*iamv1.Project, 0, len(kvs))
	for _, kv := range kvs {
		p := new(iamv1.Project)
		if err := unmarshal(string(kv.Key), kv.Value, p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// DeleteProject deletes the project name. It is refused with ErrFailedPrecondition,
// naming them, while bindings in the project or service accounts belonging to it exist
// (checked atomically with the delete). ErrNotFound if absent.
func (s *Store) DeleteProject(ctx context.Context, name string) error {
	if err := ValidateName("name", name); err != nil {
		return err
	}
	key := projectKey(name)
	bprefix := PrefixBindings + name + "/"
	return s.retry(ctx, "delete project "+name, func(ctx context.Context) (bool, error) {
		kv, err := s.get(ctx, key)
		if err != nil {
			return false, err
		}
		if kv == nil {
			return false, notFound("project", name)
		}
		bindings, brev, err := s.list(ctx, bprefix)
		if err != nil {
			return false, err
		}
		sas, srev, err := s.list(ctx, PrefixServiceAccounts)
		if err != nil {
			return false, err
		}
		var inTheWay []string
		for _, b := range bindings {
			p := splitKey(string(b.Key), PrefixBindings)
			if len(p) == 3 {
				inTheWay = append(inTheWay, fmt.Sprintf("binding %s/%s", p[1], p[2]))
			}
		}
		for _, kv := range sas {
			sa, _, _, err := decodeSA(kv.Key, kv.Value, kv.ModRevision)
			if err != nil {
				return false, err
			}
			if sa.Project == name {
				inTheWay = append(inTheWay, "service account "+sa.Name)
			}
		}
		if len(inTheWay) > 0 {
			return false, fmt.Errorf("%w: project %q is still referred to by %s", ErrFailedPrecondition, name, summarize(inTheWay))
		}
		return commit("delete project", s.c.Txn(ctx).
			If(unchanged(key, kv.ModRevision), unchangedSince(bprefix, brev), unchangedSince(PrefixServiceAccounts, srev)).
			Then(chainfire.OpDelete(key)))
	})
}

// summarize lists at most 10 items, saying how many more there are.
func summarize(items []string) string {
	const max = 10
	if len(items) <= max {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:max], ", "), len(items)-max)
}
