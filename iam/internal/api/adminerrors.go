package api

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/store"
)

// ConnectError maps an error of IAM's model to a Connect error, once, at the handler
// edge: ErrInvalid → InvalidArgument, ErrNotFound → NotFound, ErrAlreadyExists →
// AlreadyExists, ErrFailedPrecondition → FailedPrecondition, ErrBadCredentials →
// Unauthenticated, ErrDisabled → PermissionDenied, ErrLocked → ResourceExhausted (with a
// Retry-After header in seconds), ErrUnavailable → Unavailable, a caller's cancellation
// or deadline → Canceled / DeadlineExceeded. The messages of these name the field or
// object concerned; Unavailable says only that storage is unavailable. Any other
// *connect.Error passes through; anything else is Internal with no detail (the caller
// logs the original). nil stays nil.
func ConnectError(err error) error {
	if err == nil {
		return nil
	}
	var code connect.Code
	switch {
	case errors.Is(err, store.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, store.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, store.ErrAlreadyExists):
		code = connect.CodeAlreadyExists
	case errors.Is(err, store.ErrFailedPrecondition):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, store.ErrBadCredentials):
		code = connect.CodeUnauthenticated
	case errors.Is(err, store.ErrDisabled):
		code = connect.CodePermissionDenied
	case errors.Is(err, store.ErrLocked):
		ce := connect.NewError(connect.CodeResourceExhausted, err)
		var le *store.LockedError
		if errors.As(err, &le) {
			ce.Meta().Set("Retry-After", strconv.Itoa(max(1, int((le.RetryAfter+999_999_999)/1_000_000_000))))
		}
		return ce
	case errors.Is(err, store.ErrUnavailable):
		// The wrapped ChainFire error names endpoints: keep it for the log only.
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w; retry later", store.ErrUnavailable))
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, errors.New("request canceled"))
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("deadline exceeded"))
	default:
		// Checked last: a store error may wrap ChainFire's *connect.Error.
		if _, ok := errors.AsType[*connect.Error](err); ok {
			return err
		}
		return connect.NewError(connect.CodeInternal, errors.New("internal error"))
	}
	return connect.NewError(code, err)
}
