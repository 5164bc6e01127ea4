package resilience

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// fastPolicy keeps tests quick: 1 ms initial wait, 5 ms cap.
func fastPolicy() Policy {
	return Policy{InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond}
}

func TestRetry(t *testing.T) {
	t.Parallel()
	unavailable := connect.NewError(connect.CodeUnavailable, errors.New("down"))
	tests := []struct {
		name      string
		policy    Policy
		errs      []error // returned by successive attempts; nil after the list
		wantCalls int
		wantCode  connect.Code // 0 = success
	}{
		{name: "success first try", wantCalls: 1},
		{name: "unavailable then success", errs: []error{unavailable, unavailable}, wantCalls: 3},
		{name: "aborted retried", errs: []error{connect.NewError(connect.CodeAborted, errors.New("x"))}, wantCalls: 2},
		{name: "invalid argument not retried", errs: []error{connect.NewError(connect.CodeInvalidArgument, errors.New("key"))}, wantCalls: 1, wantCode: connect.CodeInvalidArgument},
		{name: "not found not retried", errs: []error{connect.NewError(connect.CodeNotFound, errors.New("x")), nil}, wantCalls: 1, wantCode: connect.CodeNotFound},
		{name: "max attempts", policy: Policy{MaxAttempts: 2}, errs: []error{unavailable, unavailable, unavailable}, wantCalls: 2, wantCode: connect.CodeUnavailable},
		{name: "custom predicate", policy: Policy{Retryable: func(err error) bool { return connect.CodeOf(err) == connect.CodeNotFound }},
			errs: []error{connect.NewError(connect.CodeNotFound, errors.New("x")), unavailable}, wantCalls: 2, wantCode: connect.CodeUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := tt.policy
			p.InitialInterval, p.MaxInterval = time.Millisecond, 2*time.Millisecond
			calls := 0
			err := Retry(context.Background(), p, func(context.Context) error {
				calls++
				if calls <= len(tt.errs) {
					return tt.errs[calls-1]
				}
				return nil
			})
			if calls != tt.wantCalls {
				t.Errorf("calls = %d, want %d", calls, tt.wantCalls)
			}
			if tt.wantCode == 0 {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			if got := connect.CodeOf(err); got != tt.wantCode {
				t.Fatalf("code = %v (err %v), want %v", got, err, tt.wantCode)
			}
		})
	}
}

func TestRetryStopsAtContextDeadline(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	var calls atomic.Int32
	err := Retry(ctx, Policy{InitialInterval: 5 * time.Millisecond, MaxInterval: 20 * time.Millisecond}, func(context.Context) error {
		calls.Add(1)
		return connect.NewError(connect.CodeUnavailable, errors.New("still down"))
	})
	elapsed := time.Since(start)
	if elapsed > time.Second {
		t.Fatalf("Retry took %s, should stop at the 100ms deadline", elapsed)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want it to wrap context.DeadlineExceeded", err)
	}
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Errorf("err = %v, want it to also carry the last attempt's Unavailable", err)
	}
	if calls.Load() < 2 {
		t.Errorf("only %d attempts before the deadline", calls.Load())
	}
}

func TestRetryDoesNotRetryCallerCancel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	err := Retry(ctx, fastPolicy(), func(ctx context.Context) error {
		calls++
		cancel()
		return connect.NewError(connect.CodeUnavailable, ctx.Err())
	})
	if calls != 1 {
		t.Errorf("calls = %d, want 1", calls)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
}

func TestRetryAttemptTimeout(t *testing.T) {
	t.Parallel()
	p := fastPolicy()
	p.AttemptTimeout = 10 * time.Millisecond
	calls := 0
	err := Retry(context.Background(), p, func(ctx context.Context) error {
		calls++
		if calls < 3 {
			<-ctx.Done() // hang until the attempt deadline
			return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
		}
		return nil
	})
	if err != nil || calls != 3 {
		t.Fatalf("err = %v, calls = %d; want nil, 3", err, calls)
	}

	// A predicate that refuses timeouts (a write) gets the marked error back.
	p.Retryable = func(err error) bool { return connect.CodeOf(err) == connect.CodeUnavailable }
	err = Retry(context.Background(), p, func(ctx context.Context) error {
		<-ctx.Done()
		return connect.NewError(connect.CodeDeadlineExceeded, ctx.Err())
	})
	if !errors.Is(err, ErrAttemptTimeout) {
		t.Fatalf("err = %v, want ErrAttemptTimeout", err)
	}
}

func TestRetryMaxElapsed(t *testing.T) {
	t.Parallel()
	p := Policy{InitialInterval: 5 * time.Millisecond, MaxInterval: 5 * time.Millisecond, MaxElapsedTime: 30 * time.Millisecond}
	start := time.Now()
	err := Retry(context.Background(), p, func(context.Context) error {
		return connect.NewError(connect.CodeUnavailable, errors.New("down"))
	})
	if !errors.Is(err, ErrGaveUp) || connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("err = %v, want ErrGaveUp wrapping Unavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestRetryOnRetryHook(t *testing.T) {
	t.Parallel()
	p := fastPolicy()
	var attempts []int
	p.OnRetry = func(attempt int, err error, wait time.Duration) {
		if wait <= 0 || err == nil {
			t.Errorf("OnRetry(%d, %v, %s)", attempt, err, wait)
		}
		attempts = append(attempts, attempt)
	}
	n := 0
	_ = Retry(context.Background(), p, func(context.Context) error {
		n++
		if n < 3 {
			return connect.NewError(connect.CodeUnavailable, errors.New("down"))
		}
		return nil
	})
	if fmt.Sprint(attempts) != "[1 2]" {
		t.Fatalf("OnRetry attempts = %v", attempts)
	}
}

func TestIsRetryable(t *testing.T) {
	t.Parallel()
	dialErr := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	tests := []struct {
		name    string
		err     error
		want    bool
		notSent bool
	}{
		{"nil", nil, false, false},
		{"unavailable", connect.NewError(connect.CodeUnavailable, errors.New("x")), true, false},
		{"aborted", connect.NewError(connect.CodeAborted, errors.New("x")), true, false},
		{"client resource exhausted", connect.NewError(connect.CodeResourceExhausted, errors.New("too big")), false, false},
		{"invalid argument", connect.NewError(connect.CodeInvalidArgument, errors.New("x")), false, false},
		{"canceled", connect.NewError(connect.CodeCanceled, context.Canceled), false, false},
		{"deadline", connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded), false, false},
		{"attempt timeout", fmt.Errorf("%w: %w", ErrAttemptTimeout, connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded)), true, false},
		{"dial refused", connect.NewError(connect.CodeUnavailable, dialErr), true, true},
		{"unexpected eof", connect.NewError(connect.CodeUnknown, fmt.Errorf("read: %w", io.ErrUnexpectedEOF)), true, false},
		{"plain error", errors.New("boom"), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := IsRetryable(tt.err); got != tt.want {
				t.Errorf("IsRetryable(%v) = %v, want %v", tt.err, got, tt.want)
			}
			if got := IsNotSent(tt.err); got != tt.notSent {
				t.Errorf("IsNotSent(%v) = %v, want %v", tt.err, got, tt.notSent)
			}
		})
	}
}

func TestNewBackOffGrows(t *testing.T) {
	t.Parallel()
	b := Policy{InitialInterval: 10 * time.Millisecond, MaxInterval: 40 * time.Millisecond, RandomizationFactor: -1}.NewBackOff()
	var got []time.Duration
	for range 4 {
		got = append(got, b.NextBackOff())
	}
	if fmt.Sprint(got) != "[10ms 20ms 40ms 40ms]" {
		t.Fatalf("intervals = %v", got)
	}
}
