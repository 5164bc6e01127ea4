package controller

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/auth"
)

// scope is what a caller may see: every project, or one.
type scope struct {
	all     bool
	project string
}

// sees reports whether the caller may see objects of project.
func (s scope) sees(project string) bool { return s.all || s.project == project }

// callerScope derives the caller's scope from the identity the auth interceptor
// attached: a project-scoped token → its project; an unscoped token (authorized by
// global bindings only) or --auth none → every project. A context without an identity
// (no interceptor installed) is refused: the controller never serves unauthenticated.
func callerScope(ctx context.Context) (scope, error) {
	id, ok := auth.IdentityFromContext(ctx)
	if !ok {
		return scope{}, connect.NewError(connect.CodeUnauthenticated, errors.New("no identity on the request"))
	}
	if id.IsAnonymousDev() || id.Project == "" {
		return scope{all: true}, nil
	}
	return scope{project: id.Project}, nil
}
