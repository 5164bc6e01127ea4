package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"

	"connectrpc.com/connect"
)

// InterceptorConfig configures an [Interceptor].
type InterceptorConfig struct {
	// Verifier checks bearer tokens. Required.
	Verifier *Verifier
	// Policy authorizes; nil uses the verifier's policy. One of the two is
	// required.
	Policy *Policy
	// Permissions maps a Connect procedure ("/iam.v1.UserService/GetUser")
	// to the permission it requires ("iam.user.get").
	Permissions map[string]string
	// Public lists procedures callable without a token. A valid token on a
	// public call still puts its Identity in the context; an invalid one is
	// ignored there.
	Public []string
	// Logger receives one debug line per refusal (default: discard).
	Logger *slog.Logger
}

// Interceptor is the handler-side Connect interceptor that authenticates
// and authorizes every call, unary and streaming. A procedure in the
// permission table needs a valid bearer token whose identity holds the
// permission; a public procedure needs nothing; any other procedure is
// refused with PermissionDenied (fail closed). On success the handler's
// context carries the [Identity] ([IdentityFromContext]).
//
// Codes: Unauthenticated for a missing, malformed, expired, unknown-key or
// revoked token (the message says why, never echoing the token),
// PermissionDenied naming the permission, principal and project, and
// Unavailable when the policy copy is stale or the keys were never loaded.
//
// On the client side (a client built with it) it does nothing. Safe for
// concurrent use.
type Interceptor struct {
	v      *Verifier
	p      *Policy
	perms  map[string]string
	public map[string]bool
	log    *slog.Logger
}

var _ connect.Interceptor = (*Interceptor)(nil)

// NewInterceptor validates cfg: a procedure may not be both public and in
// the table, and no permission may be empty.
func NewInterceptor(cfg InterceptorConfig) (*Interceptor, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("auth: interceptor needs a verifier")
	}
	i := &Interceptor{
		v:      cfg.Verifier,
		p:      cfg.Policy,
		perms:  make(map[string]string, len(cfg.Permissions)),
		public: make(map[string]bool, len(cfg.Public)),
		log:    cfg.Logger,
	}
	if i.p == nil {
		i.p = cfg.Verifier.Policy()
	}
	if i.p == nil {
		return nil, errors.New("auth: interceptor needs a policy")
	}
	if i.log == nil {
		i.log = slog.New(slog.DiscardHandler)
	}
	for _, proc := range cfg.Public {
		i.public[proc] = true
	}
	for proc, perm := range cfg.Permissions {
		if perm == "" {
			return nil, fmt.Errorf("auth: procedure %s has an empty permission", proc)
		}
		if i.public[proc] {
			return nil, fmt.Errorf("auth: procedure %s is both public and mapped to %q", proc, perm)
		}
		i.perms[proc] = perm
	}
	return i, nil
}

// WrapUnary implements connect.Interceptor.
func (i *Interceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if req.Spec().IsClient {
			return next(ctx, req)
		}
		ctx, err := i.Authenticate(ctx, req.Spec().Procedure, req.Header())
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

// WrapStreamingClient implements connect.Interceptor; it does nothing.
func (i *Interceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

// WrapStreamingHandler implements connect.Interceptor.
func (i *Interceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := i.Authenticate(ctx, conn.Spec().Procedure, conn.RequestHeader())
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// Authenticate is the check both wrappers run, exposed for non-Connect
// handlers (plain HTTP endpoints): it returns ctx with the Identity, or a
// *connect.Error.
func (i *Interceptor) Authenticate(ctx context.Context, procedure string, h http.Header) (context.Context, error) {
	if i.public[procedure] {
		if raw, err := BearerToken(h.Get("Authorization")); err == nil {
			if id, err := i.v.Verify(ctx, raw); err == nil {
				ctx = WithIdentity(ctx, id)
			}
		}
		return ctx, nil
	}
	perm, ok := i.perms[procedure]
	if !ok {
		return ctx, connect.NewError(connect.CodePermissionDenied,
			fmt.Errorf("%w: procedure %s has no permission defined (fail closed)", ErrPermissionDenied, procedure))
	}
	raw, err := BearerToken(h.Get("Authorization"))
	if err != nil {
		return ctx, i.refuse(procedure, err)
	}
	id, err := i.v.Verify(ctx, raw)
	if err != nil {
		return ctx, i.refuse(procedure, err)
	}
	if err := i.p.Authorize(id, perm); err != nil {
		return ctx, i.refuse(procedure, err)
	}
	return WithIdentity(ctx, id), nil
}

func (i *Interceptor) refuse(procedure string, err error) error {
	ce := ConnectError(err)
	i.log.Debug("auth: call refused", "procedure", procedure, "code", Code(err).String(), "error", err)
	return ce
}

// BearerToken extracts the token from an Authorization header value of the
// form "Bearer <token>" (scheme case-insensitive, RFC 6750 token68
// characters only). Errors wrap [ErrTokenMissing] (empty header) or
// [ErrTokenInvalid]; they never contain the header.
func BearerToken(header string) (string, error) {
	if header == "" {
		return "", ErrTokenMissing
	}
	scheme, tok, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", invalid("authorization header is not a bearer token")
	}
	tok = strings.TrimLeft(tok, " ")
	if tok == "" {
		return "", ErrTokenMissing
	}
	for j := 0; j < len(tok); j++ {
		c := tok[j]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/':
		case c == '=':
			// Padding is allowed only at the end.
			if strings.TrimRight(tok[j:], "=") != "" {
				return "", invalid("bearer token has characters outside token68")
			}
			return tok, nil
		default:
			return "", invalid("bearer token has characters outside token68")
		}
	}
	return tok, nil
}

// None returns the interceptor for --auth none: it allows every call and
// attaches the identity [AnonymousDev] to each. It logs a loud warning once,
// at construction. Never use it outside a development machine.
func None(logger *slog.Logger) connect.Interceptor {
	if logger == nil {
		logger = slog.Default()
	}
	logger.Warn("auth: AUTHENTICATION AND AUTHORIZATION ARE DISABLED (--auth none): every caller may do everything; " +
		"for development only, never expose this service")
	return noneInterceptor{}
}

type noneInterceptor struct{}

func (noneInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if !req.Spec().IsClient {
			ctx = WithIdentity(ctx, Identity{Subject: AnonymousDev})
		}
		return next(ctx, req)
	}
}

func (noneInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (noneInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		return next(WithIdentity(ctx, Identity{Subject: AnonymousDev}), conn)
	}
}
