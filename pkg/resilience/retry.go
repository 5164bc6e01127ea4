package resilience

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"connectrpc.com/connect"
	"github.com/cenkalti/backoff/v5"
)

// ErrAttemptTimeout marks an attempt that was cut short by
// [Policy.AttemptTimeout] while the caller's context was still live. Retry
// wraps the attempt's own error with it, so a [Policy.Retryable] function can
// tell "this attempt hung" from "the caller gave up" with errors.Is.
//
// Whether a timed-out attempt may be retried depends on the operation: for an
// idempotent read it may ([IsRetryable] says yes); for a write the outcome is
// unknown and it must not be.
var ErrAttemptTimeout = errors.New("resilience: attempt timed out")

// ErrGaveUp wraps the last attempt's error when Retry stops because
// [Policy.MaxElapsedTime] or [Policy.MaxAttempts] ran out.
var ErrGaveUp = errors.New("resilience: gave up retrying")

// Default values of [Policy] fields left at zero.
const (
	DefaultInitialInterval     = 50 * time.Millisecond
	DefaultMaxInterval         = 2 * time.Second
	DefaultMultiplier          = 2.0
	DefaultRandomizationFactor = 0.5
)

// Policy says how [Retry] retries. The zero value is usable: every zero field
// takes its documented default. A Policy is a plain value, safe to copy and
// to share between goroutines.
type Policy struct {
	// InitialInterval is the wait before the second attempt (default 50 ms).
	InitialInterval time.Duration
	// MaxInterval caps the wait between attempts (default 2 s).
	MaxInterval time.Duration
	// Multiplier grows the wait after each attempt (default 2).
	Multiplier float64
	// RandomizationFactor is the jitter: each wait is drawn uniformly from
	// interval*(1±RandomizationFactor) (default 0.5; negative disables jitter).
	RandomizationFactor float64
	// MaxElapsedTime bounds the whole retry loop; 0 means "until ctx ends".
	MaxElapsedTime time.Duration
	// MaxAttempts bounds the number of attempts; 0 means unlimited.
	MaxAttempts int
	// AttemptTimeout, when positive, bounds every single attempt with its own
	// deadline. An attempt that runs out of it while ctx is live fails with an
	// error wrapping [ErrAttemptTimeout].
	AttemptTimeout time.Duration
	// Retryable decides whether an attempt's error is worth another attempt.
	// nil means [IsRetryable]. It is never consulted once ctx is done.
	Retryable func(error) bool
	// OnRetry, when set, is called before each wait with the number of the
	// attempt that failed (1-based), its error and the wait chosen. Use it
	// for logging; it runs on the retrying goroutine and must not block.
	OnRetry func(attempt int, err error, wait time.Duration)
}

// DefaultPolicy returns the policy PlasmaCloud clients use for idempotent
// calls: 50 ms initial wait doubling to at most 2 s with ±50% jitter, until
// the caller's context ends, retrying what [IsRetryable] accepts.
func DefaultPolicy() Policy {
	return Policy{}.withDefaults()
}

// withDefaults fills every zero field with its default.
func (p Policy) withDefaults() Policy {
	if p.InitialInterval <= 0 {
		p.InitialInterval = DefaultInitialInterval
	}
	if p.MaxInterval <= 0 {
		p.MaxInterval = DefaultMaxInterval
	}
	if p.MaxInterval < p.InitialInterval {
		p.MaxInterval = p.InitialInterval
	}
	if p.Multiplier < 1 {
		p.Multiplier = DefaultMultiplier
	}
	switch {
	case p.RandomizationFactor == 0:
		p.RandomizationFactor = DefaultRandomizationFactor
	case p.RandomizationFactor < 0:
		p.RandomizationFactor = 0
	case p.RandomizationFactor > 1:
		p.RandomizationFactor = 1
	}
	if p.Retryable == nil {
		p.Retryable = IsRetryable
	}
	return p
}

// IsRetry reports whether err is retryable under this policy (its Retryable
// function, or [IsRetryable] when unset).
func (p Policy) IsRetry(err error) bool {
	if p.Retryable == nil {
		return IsRetryable(err)
	}
	return p.Retryable(err)
}

// NewBackOff returns a fresh exponential backoff (cenkalti/backoff) with the
// policy's intervals and jitter. Long-lived loops that reconnect (watch
// streams, keepalives) use it directly and call Reset after a success. The
// returned value is not safe for concurrent use.
func (p Policy) NewBackOff() *backoff.ExponentialBackOff {
	p = p.withDefaults()
	b := &backoff.ExponentialBackOff{
		InitialInterval:     p.InitialInterval,
		RandomizationFactor: p.RandomizationFactor,
		Multiplier:          p.Multiplier,
		MaxInterval:         p.MaxInterval,
	}
	b.Reset()
	return b
}

// Retry calls op until it succeeds, returns an error the policy does not
// retry, or the retry budget (ctx, MaxElapsedTime, MaxAttempts) runs out,
// waiting with exponential backoff and jitter between attempts.
//
// op receives a context derived from ctx (with AttemptTimeout applied when
// set) and must honour it. Retry never retries once ctx is done, and never
// sleeps past ctx's deadline: if the next wait would end after it, Retry
// returns at once.
//
// The returned error is:
//   - nil on success;
//   - op's error unchanged when the policy says it is not retryable;
//   - an error wrapping both ctx's error and the last attempt's error when
//     ctx ends (so errors.Is(err, context.DeadlineExceeded) and
//     connect.CodeOf(err) of the last failure both work);
//   - an error wrapping [ErrGaveUp] and the last attempt's error when
//     MaxElapsedTime or MaxAttempts is exhausted.
func Retry(ctx context.Context, policy Policy, op func(ctx context.Context) error) error {
	p := policy.withDefaults()
	b := p.NewBackOff()
	start := time.Now()
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	var lastErr error // last failure seen while ctx was still live
	for attempt := 1; ; attempt++ {
		if ctx.Err() != nil {
			return ctxError(ctx, attempt-1, lastErr, nil)
		}
		err := runAttempt(ctx, p.AttemptTimeout, op)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctxError(ctx, attempt, lastErr, err)
		}
		if !p.Retryable(err) {
			return err
		}
		lastErr = err
		if p.MaxAttempts > 0 && attempt >= p.MaxAttempts {
			return fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, attempt, err)
		}
		wait := b.NextBackOff()
		if p.MaxElapsedTime > 0 && time.Since(start)+wait > p.MaxElapsedTime {
			return fmt.Errorf("%w after %d attempts in %s: %w", ErrGaveUp, attempt, time.Since(start).Round(time.Millisecond), err)
		}
		if dl, ok := ctx.Deadline(); ok && time.Now().Add(wait).After(dl) {
			return fmt.Errorf("resilience: %d attempts, next retry would pass the deadline: %w; last error: %w",
				attempt, context.DeadlineExceeded, err)
		}
		if p.OnRetry != nil {
			p.OnRetry(attempt, err, wait)
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return ctxError(ctx, attempt, lastErr, nil)
		case <-timer.C:
		}
	}
}

// runAttempt runs one attempt, applying the per-attempt timeout and marking
// its expiry with ErrAttemptTimeout.
func runAttempt(ctx context.Context, timeout time.Duration, op func(context.Context) error) error {
	if timeout <= 0 {
		return op(ctx)
	}
	actx, cancel := context.WithTimeoutCause(ctx, timeout, ErrAttemptTimeout)
	defer cancel()
	err := op(actx)
	if err == nil || ctx.Err() != nil {
		return err
	}
	// With ctx live, a deadline error can only be the attempt's own
	// deadline — noticed here, or propagated to the server (gRPC's
	// grpc-timeout) and reported by it a moment before it expired here.
	if actx.Err() != nil || errors.Is(err, context.DeadlineExceeded) ||
		connect.CodeOf(err) == connect.CodeDeadlineExceeded {
		return fmt.Errorf("%w (%s): %w", ErrAttemptTimeout, timeout, err)
	}
	return err
}

// ctxError reports that ctx ended. last is the most recent failure seen
// while ctx was live (the reason the loop was still retrying); final is the
// error of an attempt that ctx cut short, if any. final, when present, comes
// first in the chain: an attempt cut short in flight may have had effects.
func ctxError(ctx context.Context, attempts int, last, final error) error {
	switch {
	case last == nil && final == nil:
		return context.Cause(ctx)
	case last == nil:
		return final
	case final == nil:
		return fmt.Errorf("resilience: %d attempts: %w; last error: %w", attempts, context.Cause(ctx), last)
	}
	return fmt.Errorf("resilience: %d attempts: %w; last error: %w (before it: %v)", attempts, context.Cause(ctx), final, last)
}

// IsRetryable is the default retry predicate for idempotent calls. It
// accepts:
//   - connect codes Unavailable and Aborted, from the server or synthesized
//     by the client for a transport failure;
//   - ResourceExhausted sent by the server (a client-side ResourceExhausted,
//     such as a message over the size limit, would fail again);
//   - an attempt cut short by [Policy.AttemptTimeout] ([ErrAttemptTimeout]);
//   - a transport failure the client saw before or while reading the reply
//     ([IsTransportError]).
//
// Everything else — InvalidArgument, NotFound, FailedPrecondition,
// Canceled and DeadlineExceeded of the caller's context, … — is final.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrAttemptTimeout) {
		return true
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeAborted:
		return true
	case connect.CodeResourceExhausted:
		return connect.IsWireError(err)
	case connect.CodeCanceled, connect.CodeDeadlineExceeded:
		return false
	}
	return IsTransportError(err)
}

// IsTransportError reports whether err comes from the connection rather than
// from the server's handler: a dial failure, a reset or closed connection, an
// unexpected EOF, a network timeout. Such an error may have happened after a
// request reached the server, so it says nothing about whether a write was
// applied; see [IsNotSent] for that.
func IsTransportError(err error) bool {
	if err == nil || connect.IsWireError(err) {
		return false
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
		return true
	}
	var nerr net.Error
	return errors.As(err, &nerr)
}

// IsNotSent reports whether err proves the request never reached a server:
// it is marked with [ErrNotSent] (see [TrackSend]), or the connection could
// not be dialled (refused, unreachable, DNS failure, dial timeout).
// Retrying a non-idempotent call after such an error cannot apply it twice.
func IsNotSent(err error) bool {
	if err == nil || connect.IsWireError(err) {
		return false
	}
	if errors.Is(err, ErrNotSent) {
		return true
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	var dns *net.DNSError
	return errors.As(err, &dns)
}
