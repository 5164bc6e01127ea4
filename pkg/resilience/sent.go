package resilience

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptrace"
	"sync/atomic"
)

// ErrNotSent marks the failure of a request that never left the client:
// no byte of it was written to a connection. [IsNotSent] recognizes it.
var ErrNotSent = errors.New("resilience: request not sent")

// TrackSend returns a context that records, through net/http's client
// trace, whether an HTTP request made with it wrote its headers to a
// connection, and a function that reports it. Use one per attempt: after a
// failed attempt, sent() == false proves the server never saw the request,
// whatever the error (a dial that timed out, a dead pooled connection
// noticed before writing, the caller's deadline while waiting for a
// connection), so even a non-idempotent call may be retried.
//
// Hooks already in ctx's client trace still run.
func TrackSend(ctx context.Context) (traced context.Context, sent func() bool) {
	var wrote atomic.Bool
	traced = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteHeaders: func() { wrote.Store(true) },
	})
	return traced, wrote.Load
}

// MarkNotSent wraps err with [ErrNotSent], keeping err in the chain (its
// connect code included).
func MarkNotSent(err error) error {
	if err == nil || errors.Is(err, ErrNotSent) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrNotSent, err)
}
