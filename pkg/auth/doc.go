// Package auth is how every PlasmaCloud service checks who is calling and
// what they may do, offline: an IAM outage stops new logins and nothing
// else.
//
// # Model
//
// IAM issues short-lived access tokens: JWTs (RFC 9068, typ "at+jwt")
// signed with EdDSA or ES256, carrying identity and scope — sub (the
// principal), project (optional), aud, iss, exp/iat/nbf, jti — never
// permissions. A service checks a token in two steps:
//
//   - [Verifier.Verify] checks the token against IAM's published public keys
//     (a [KeySource]; services use [JWKS], a cache of
//     /.well-known/jwks.json) and its claims, then revocation against the
//     local [Policy] copy, and returns the [Identity];
//   - [Policy.Authorize] decides whether that identity holds the
//     procedure's permission, from roles and bindings evaluated at each
//     request: a role change or a deny binding (deny always wins) takes
//     effect as soon as the policy stream delivers it, not at token expiry.
//     Permission patterns use "*" segment wildcards ([MatchPermission]).
//     A project-scoped token gets its project's bindings and the global
//     ones; an unscoped token only the global ones.
//
// The [Policy] copy is fed by a [Follower] that streams
// PolicyService.WatchPolicy from IAM (resuming from the last revision after
// any disconnect, rotating endpoints, backing off), or in-process by
// [Policy.Apply] (IAM itself). Revocation is a revoked-jti set plus
// watermarks: a token is revoked iff its iat is below the newest applicable
// watermark (principal, project, global) rounded up to a whole second.
// Signing-key changes on the stream make the [JWKS] cache refresh, so a
// rotated-in key is known before it signs and a removed key stops verifying.
//
// # Failure behaviour
//
// Keys are served from cache through an IAM outage; an unknown kid causes at
// most one refresh per MinRefreshInterval, shared by concurrent callers.
// The policy copy counts as current while it heard from IAM (heartbeats
// included) within the staleness window (default 15 min); past it,
// authorization fails closed with Unavailable. So a short outage is
// invisible and a long one cannot hide revocations indefinitely.
//
// Tokens never choose their key: jku, x5u, jwk and x5c headers are refused
// and never fetched; "none" and HMAC algorithms are refused whatever the
// configuration; a token's alg must be in the allowlist and equal its key's.
//
// # Errors
//
// Errors wrap the package's sentinels ([ErrTokenInvalid], [ErrTokenExpired],
// [ErrTokenRevoked], [ErrUnknownKey], [ErrPermissionDenied],
// [ErrPolicyStale], ...). [Code] maps them to Connect codes once, at the
// edge: Unauthenticated for any token problem, PermissionDenied naming the
// permission, principal and project, Unavailable for a stale policy or keys
// never loaded. Messages never contain the token.
//
// # Concurrency
//
// Everything is safe for concurrent use. The request path takes no
// exclusive lock: key lookups read an atomically replaced map, the policy
// takes a read lock and reads only the caller's bindings (indexed by
// principal, patterns compiled when applied), and the verifier's cache of
// already-verified tokens is read-locked. The background work — JWKS
// refresh and the policy follower — runs in the goroutines that call
// [JWKS.Run] and [Follower.Run] (or [Service.Run]); they end when its
// context ends.
//
// # Wiring
//
// A service calls [Setup] with its IAM endpoints, credentials for the
// policy stream and its permission table, installs
// [Service.Interceptor] on its Connect handlers, runs [Service.Run] for its
// lifetime and reports [Service.Ready] on /readyz (see the example). With
// --auth none it installs [None] instead. Calls to other services carry a
// token through [BearerInterceptor] or [BearerTransport].
package auth
