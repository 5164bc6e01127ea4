package auth

import (
	"context"
	"time"
)

// AnonymousDev is the Subject of the identity [None] puts on every request
// when a service runs with --auth none. It is not a valid principal name, so
// no binding can ever match it.
const AnonymousDev = "anonymous-dev"

// Identity is who a verified access token speaks for. It carries identity and
// scope, never permissions: those come from the policy copy at each request.
// An Identity is a plain value; copy it freely.
type Identity struct {
	// Subject is the principal: "user:<name>" or "serviceaccount:<name>"
	// ([AnonymousDev] under --auth none).
	Subject string
	// Project is the token's project scope; empty for an unscoped token,
	// which only global bindings apply to.
	Project string
	// ClientID is the OAuth client the token was issued to.
	ClientID string
	// JTI is the token's unique id (what revoking an access token names).
	JTI string
	// Audience is the token's aud claim.
	Audience []string
	// IssuedAt and ExpiresAt are iat and exp.
	IssuedAt, ExpiresAt time.Time
}

// IsAnonymousDev reports whether the identity is the one [None] attaches.
func (id Identity) IsAnonymousDev() bool { return id.Subject == AnonymousDev }

type identityKey struct{}

// WithIdentity returns a copy of ctx carrying id. The interceptors call it;
// tests and in-process callers may too.
func WithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// IdentityFromContext returns the identity the interceptor attached to ctx,
// and false when there is none (a public procedure called without a valid
// token, or a context that never went through an interceptor).
func IdentityFromContext(ctx context.Context) (Identity, bool) {
	id, ok := ctx.Value(identityKey{}).(Identity)
	return id, ok
}
