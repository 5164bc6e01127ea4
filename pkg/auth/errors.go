package auth

import (
	"errors"

	"connectrpc.com/connect"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// them; inspect with errors.Is, and turn into a Connect error with
// [ConnectError] (or read the code with [Code]). Messages never contain the
// token itself.
var (
	// ErrTokenMissing: the request carries no bearer token. Unauthenticated.
	ErrTokenMissing = errors.New("auth: missing bearer token")
	// ErrTokenInvalid: the token is malformed, oversized, signed with a
	// refused algorithm, has a bad signature, the wrong type, issuer or
	// audience, or lacks a required claim. Unauthenticated.
	ErrTokenInvalid = errors.New("auth: invalid token")
	// ErrTokenExpired: exp is in the past (beyond the clock skew).
	// Unauthenticated.
	ErrTokenExpired = errors.New("auth: token expired")
	// ErrTokenNotYetValid: nbf or iat is in the future (beyond the clock
	// skew). Unauthenticated.
	ErrTokenNotYetValid = errors.New("auth: token not yet valid")
	// ErrTokenRevoked: the token's jti is revoked, or it was issued before
	// an applicable watermark. Unauthenticated.
	ErrTokenRevoked = errors.New("auth: token revoked")
	// ErrUnknownKey: no published key has the token's kid (also after a
	// refresh of the key set). Unauthenticated.
	ErrUnknownKey = errors.New("auth: unknown signing key")
	// ErrKeysUnavailable: the key set was never loaded (IAM unreachable
	// since start), so no token can be checked. Unavailable.
	ErrKeysUnavailable = errors.New("auth: signing keys not loaded")
	// ErrPermissionDenied: the identity lacks the permission, or a deny
	// binding removes it, or the procedure has no permission in the table
	// (fail closed). PermissionDenied. See [*DeniedError].
	ErrPermissionDenied = errors.New("auth: permission denied")
	// ErrPolicyStale: the local policy copy was never loaded or has not
	// heard from IAM within the staleness window, so revocations and role
	// changes may be missed: authorization fails closed. Unavailable.
	ErrPolicyStale = errors.New("auth: policy copy is stale")
)

// DeniedError is the [ErrPermissionDenied] returned by [Policy.Authorize]. Its
// message names the permission, the principal and the project:
//
//	permission "vm.create" denied for user:alice in project p1
type DeniedError struct {
	Permission string
	Principal  string
	// Project is the token's project scope; empty for an unscoped token.
	Project string
}

// Error implements error.
func (e *DeniedError) Error() string {
	where := "without a project (global bindings only)"
	if e.Project != "" {
		where = "in project " + e.Project
	}
	return "permission " + quote(e.Permission) + " denied for " + e.Principal + " " + where
}

// Is makes errors.Is(err, ErrPermissionDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrPermissionDenied }

// Code returns the Connect code for an error of this package:
// Unauthenticated for token problems, PermissionDenied for denials,
// Unavailable for a stale policy or keys never loaded, Canceled or
// DeadlineExceeded for a context error, and Internal for anything else.
func Code(err error) connect.Code {
	switch {
	case errors.Is(err, ErrPermissionDenied):
		return connect.CodePermissionDenied
	case errors.Is(err, ErrPolicyStale), errors.Is(err, ErrKeysUnavailable):
		return connect.CodeUnavailable
	case errors.Is(err, ErrTokenMissing), errors.Is(err, ErrTokenInvalid),
		errors.Is(err, ErrTokenExpired), errors.Is(err, ErrTokenNotYetValid),
		errors.Is(err, ErrTokenRevoked), errors.Is(err, ErrUnknownKey):
		return connect.CodeUnauthenticated
	}
	if ce := new(connect.Error); errors.As(err, &ce) {
		return ce.Code()
	}
	return connect.CodeOf(err)
}

// ConnectError wraps err in a *connect.Error with the code [Code] gives it;
// nil stays nil and a *connect.Error is returned unchanged.
func ConnectError(err error) error {
	if err == nil {
		return nil
	}
	if ce := new(connect.Error); errors.As(err, &ce) {
		return err
	}
	return connect.NewError(Code(err), err)
}

// quote is strconv.Quote without the import, for the short ASCII names used
// in messages.
func quote(s string) string { return `"` + s + `"` }
