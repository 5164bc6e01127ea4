package api

import (
	"context"
	"errors"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/iam/internal/policy"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/iam/internal/token"
	"plasmacloud.dev/pkg/auth"
)

// oauthError is an RFC 6749 §5.2 error: its code, description, HTTP status and, for a
// lockout or unavailability, the seconds after which to retry.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description,omitempty"`
	status      int
	retryAfter  time.Duration
}

// toOAuth maps an error of the token path to its OAuth form.
func toOAuth(err error) *oauthError {
	e := &oauthError{Description: err.Error(), status: http.StatusBadRequest}
	var locked *store.LockedError
	switch {
	case errors.As(err, &locked):
		e.Code, e.status, e.retryAfter = "temporarily_unavailable", http.StatusTooManyRequests, locked.RetryAfter
	case errors.Is(err, store.ErrLocked):
		e.Code, e.status, e.retryAfter = "temporarily_unavailable", http.StatusTooManyRequests, time.Second
	case errors.Is(err, token.ErrInvalidClient):
		e.Code, e.status = "invalid_client", http.StatusUnauthorized
	case errors.Is(err, token.ErrInvalidGrant), errors.Is(err, store.ErrBadCredentials), errors.Is(err, store.ErrDisabled):
		e.Code = "invalid_grant"
	case errors.Is(err, token.ErrUnsupportedGrant):
		e.Code = "unsupported_grant_type"
	case errors.Is(err, token.ErrInvalidScope):
		e.Code = "invalid_scope"
	case errors.Is(err, token.ErrInvalidRequest), errors.Is(err, token.ErrInvalidToken), errors.Is(err, store.ErrInvalid):
		e.Code = "invalid_request"
	case errors.Is(err, token.ErrUnavailable), errors.Is(err, store.ErrUnavailable), errors.Is(err, keys.ErrNoActiveKey),
		errors.Is(err, context.DeadlineExceeded):
		e.Code, e.status, e.retryAfter = "temporarily_unavailable", http.StatusServiceUnavailable, time.Second
	default:
		e.Code, e.status, e.Description = "server_error", http.StatusInternalServerError, "internal error"
	}
	return e
}

// tokenConnectError maps an error of the token, key and policy paths to a Connect error,
// once, at the edge. A lockout carries its retry delay in the message.
func tokenConnectError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	code := connect.CodeInternal
	switch {
	case errors.Is(err, store.ErrLocked):
		code = connect.CodeResourceExhausted
	case errors.Is(err, token.ErrInvalidGrant), errors.Is(err, token.ErrInvalidClient), errors.Is(err, store.ErrBadCredentials):
		code = connect.CodeUnauthenticated
	case errors.Is(err, token.ErrInvalidScope), errors.Is(err, store.ErrDisabled):
		code = connect.CodePermissionDenied
	case errors.Is(err, token.ErrInvalidRequest), errors.Is(err, token.ErrUnsupportedGrant), errors.Is(err, token.ErrInvalidToken),
		errors.Is(err, store.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, policy.ErrSlowConsumer):
		code = connect.CodeResourceExhausted
	case errors.Is(err, token.ErrUnavailable), errors.Is(err, store.ErrUnavailable), errors.Is(err, keys.ErrNoActiveKey),
		errors.Is(err, policy.ErrDraining), errors.Is(err, policy.ErrNotReady):
		code = connect.CodeUnavailable
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	case errors.Is(err, auth.ErrTokenMissing), errors.Is(err, auth.ErrPermissionDenied), errors.Is(err, auth.ErrPolicyStale):
		return auth.ConnectError(err)
	default:
		return connect.NewError(code, errors.New("internal error"))
	}
	return connect.NewError(code, err)
}
