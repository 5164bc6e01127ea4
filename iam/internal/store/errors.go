package store

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of IAM's model. Every package of IAM wraps these with %w and the API
// layer maps them to Connect codes (and OAuth error codes on /oauth2/token), so one
// condition always surfaces the same way whichever path reached it.
var (
	// ErrInvalid: bad input; the wrapping message names the field. → InvalidArgument.
	ErrInvalid = errors.New("iam: invalid argument")
	// ErrNotFound: no such object. → NotFound.
	ErrNotFound = errors.New("iam: not found")
	// ErrAlreadyExists: an object with that name or identity exists. → AlreadyExists.
	ErrAlreadyExists = errors.New("iam: already exists")
	// ErrFailedPrecondition: refused because of other state (a project still bound, a
	// built-in role). The message names what is in the way. → FailedPrecondition.
	ErrFailedPrecondition = errors.New("iam: failed precondition")
	// ErrBadCredentials: wrong password or secret, or unknown user or client; the two
	// are never distinguished. → Unauthenticated / OAuth invalid_grant|invalid_client.
	ErrBadCredentials = errors.New("iam: invalid credentials")
	// ErrDisabled: the principal exists but is disabled. Only ever returned after the
	// credentials were verified, so it reveals nothing to a guesser. → PermissionDenied.
	ErrDisabled = errors.New("iam: principal disabled")
	// ErrLocked: too many failed logins; wrapped in a *LockedError carrying when to retry.
	// → ResourceExhausted / HTTP 429 with Retry-After.
	ErrLocked = errors.New("iam: locked out after repeated failures")
	// ErrUnavailable: ChainFire could not be reached in time. → Unavailable (retryable).
	ErrUnavailable = errors.New("iam: storage unavailable")
)

// LockedError says a principal (or a source address) is locked out until RetryAfter has
// passed. errors.Is(err, ErrLocked) holds for it.
type LockedError struct {
	Subject    string        // "user:alice" or "source:10.0.0.9"
	RetryAfter time.Duration // how long until the next attempt is considered
}

func (e *LockedError) Error() string {
	return fmt.Sprintf("%v: %s; retry after %s", ErrLocked, e.Subject, e.RetryAfter.Round(time.Second))
}

func (e *LockedError) Unwrap() error { return ErrLocked }
