package api

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/store"
)

func TestConnectError(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		code    connect.Code
		message string // must appear
		hidden  string // must not appear
	}{
		{"invalid", fmt.Errorf("%w: user.name %q bad", store.ErrInvalid, "X"), connect.CodeInvalidArgument, "user.name", ""},
		{"not found", fmt.Errorf("%w: user %q", store.ErrNotFound, "bob"), connect.CodeNotFound, "bob", ""},
		{"exists", fmt.Errorf("%w: role", store.ErrAlreadyExists), connect.CodeAlreadyExists, "role", ""},
		{"precondition", fmt.Errorf("%w: project p bound", store.ErrFailedPrecondition), connect.CodeFailedPrecondition, "project p", ""},
		{"credentials", store.ErrBadCredentials, connect.CodeUnauthenticated, "invalid credentials", ""},
		{"disabled", fmt.Errorf("%w: user:x", store.ErrDisabled), connect.CodePermissionDenied, "disabled", ""},
		{"locked", &store.LockedError{Subject: "user:x", RetryAfter: 1500 * time.Millisecond}, connect.CodeResourceExhausted, "user:x", ""},
		{"unavailable", fmt.Errorf("%w: range on http://10.1.1.1:2379: boom", store.ErrUnavailable), connect.CodeUnavailable, "unavailable", "10.1.1.1"},
		{"canceled", context.Canceled, connect.CodeCanceled, "", ""},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), connect.CodeDeadlineExceeded, "", ""},
		{"internal", errors.New("store: corrupt value at /iam/users/x: secret detail"), connect.CodeInternal, "internal error", "secret detail"},
		{"connect passes", connect.NewError(connect.CodeAborted, errors.New("a")), connect.CodeAborted, "a", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ConnectError(tc.err)
			if got := connect.CodeOf(err); got != tc.code {
				t.Fatalf("code %v, want %v (%v)", got, tc.code, err)
			}
			if !strings.Contains(err.Error(), tc.message) || (tc.hidden != "" && strings.Contains(err.Error(), tc.hidden)) {
				t.Fatalf("message %q: want %q, never %q", err, tc.message, tc.hidden)
			}
		})
	}
	if ConnectError(nil) != nil {
		t.Fatal("nil must stay nil")
	}
	var ce *connect.Error
	if errors.As(ConnectError(&store.LockedError{Subject: "s", RetryAfter: 1500 * time.Millisecond}), &ce); ce.Meta().Get("Retry-After") != "2" {
		t.Fatalf("Retry-After = %q, want 2", ce.Meta().Get("Retry-After"))
	}
}
