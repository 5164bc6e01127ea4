package chainfire_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
)

// deadURL returns a loopback URL nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// TestFailover: the first endpoint refuses connections, the second answers
// Unavailable; reads and writes land on the third and stay there.
func TestFailover(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 2)
	bad, good := nodes[0], nodes[1]
	bad.inject(fault{code: connect.CodeUnavailable}, fault{code: connect.CodeUnavailable})
	c := newClient(t, chainfire.Config{Endpoints: []string{deadURL(t), bad.url, good.url}})
	ctx := testCtx(t)
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if got := keysOf(t, c, ctx, "k"); got != "k=v" {
		t.Fatalf("Get = %q", got)
	}
	if bad.unaryCalls.Load() != 1 {
		t.Errorf("unavailable node saw %d calls, want 1 (then rotated away)", bad.unaryCalls.Load())
	}
	if good.unaryCalls.Load() != 2 {
		t.Errorf("good node saw %d calls, want 2 (sticky)", good.unaryCalls.Load())
	}
}

// TestAllEndpointsDown: the call fails when ctx ends, with the context's
// error and the last failure.
func TestAllEndpointsDown(t *testing.T) {
	t.Parallel()
	c := newClient(t, chainfire.Config{Endpoints: []string{deadURL(t), deadURL(t)}})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Get(ctx, "k")
	// The error says both why the call ended and what kept failing.
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err = %v; want deadline exceeded after connection refused", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
	// A write whose endpoints refuse connections was never sent: its
	// outcome is known.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel2()
	if _, err := c.Put(ctx2, "k", "v"); err == nil || errors.Is(err, chainfire.ErrOutcomeUnknown) {
		t.Fatalf("Put err = %v; want a failure that is not 'outcome unknown'", err)
	}
}

// TestRetryRules checks, for reads and writes, which server errors are
// retried (on the other endpoint) and which are returned.
func TestRetryRules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		write       bool
		f           fault
		wantRetried bool
		wantUnknown bool
		wantCode    connect.Code // when not retried
	}{
		{name: "read unavailable", f: fault{code: connect.CodeUnavailable}, wantRetried: true},
		{name: "read resource exhausted", f: fault{code: connect.CodeResourceExhausted}, wantRetried: true},
		{name: "read aborted", f: fault{code: connect.CodeAborted}, wantRetried: true},
		{name: "read invalid argument", f: fault{code: connect.CodeInvalidArgument}, wantCode: connect.CodeInvalidArgument},
		{name: "read internal", f: fault{code: connect.CodeInternal}, wantCode: connect.CodeInternal},
		{name: "write unavailable", write: true, f: fault{code: connect.CodeUnavailable}, wantRetried: true},
		{name: "write resource exhausted", write: true, f: fault{code: connect.CodeResourceExhausted}, wantCode: connect.CodeResourceExhausted},
		{name: "write aborted", write: true, f: fault{code: connect.CodeAborted}, wantCode: connect.CodeAborted},
		{name: "write invalid argument", write: true, f: fault{code: connect.CodeInvalidArgument}, wantCode: connect.CodeInvalidArgument},
		{name: "write unknown after apply", write: true, f: fault{code: connect.CodeUnknown, apply: true}, wantCode: connect.CodeUnknown, wantUnknown: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, nodes := newFakeCluster(t, 2)
			nodes[0].inject(tt.f)
			c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url, nodes[1].url}})
			ctx := testCtx(t)
			var err error
			if tt.write {
				_, err = c.Put(ctx, "k", "v")
			} else {
				_, err = c.Get(ctx, "k")
			}
			retried := nodes[1].unaryCalls.Load() > 0
			if retried != tt.wantRetried {
				t.Fatalf("retried = %v, want %v (err %v)", retried, tt.wantRetried, err)
			}
			if tt.wantRetried {
				if err != nil {
					t.Fatalf("err = %v after retry", err)
				}
				return
			}
			if got := connect.CodeOf(err); got != tt.wantCode {
				t.Fatalf("code = %v (%v), want %v", got, err, tt.wantCode)
			}
			if errors.Is(err, chainfire.ErrOutcomeUnknown) != tt.wantUnknown {
				t.Fatalf("err = %v; ErrOutcomeUnknown wanted: %v", err, tt.wantUnknown)
			}
		})
	}
}

// TestReadOnlyTxnRetriedLikeRead: a txn of gets is retried on Aborted, a
// txn with a put is not.
func TestReadOnlyTxnRetriedLikeRead(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 2)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url, nodes[1].url}})
	ctx := testCtx(t)
	nodes[0].inject(fault{code: connect.CodeAborted})
	if _, err := c.Txn(ctx).Then(chainfire.OpGet("k")).Commit(); err != nil {
		t.Fatalf("read-only txn: %v", err)
	}
	nodes[1].inject(fault{code: connect.CodeAborted})
	if _, err := c.Txn(ctx).Then(chainfire.OpPut("k", "v")).Commit(); connect.CodeOf(err) != connect.CodeAborted {
		t.Fatalf("write txn: %v, want Aborted unretried", err)
	}
}

// TestRequestTimeout: a hung member costs a read one attempt; a write in
// flight on it has an unknown outcome and is not retried.
func TestRequestTimeout(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 2)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url, nodes[1].url}, RequestTimeout: 100 * time.Millisecond})
	ctx := testCtx(t)
	nodes[0].inject(fault{delay: 10 * time.Second})
	if _, err := c.Get(ctx, "k"); err != nil {
		t.Fatalf("read: %v", err)
	}
	nodes[1].inject(fault{delay: 10 * time.Second})
	before0, before1 := nodes[0].unaryCalls.Load(), nodes[1].unaryCalls.Load()
	_, err := c.Put(ctx, "k", "v")
	if !errors.Is(err, chainfire.ErrOutcomeUnknown) {
		t.Fatalf("write err = %v, want ErrOutcomeUnknown (calls: node0 %d->%d, node1 %d->%d)", err,
			before0, nodes[0].unaryCalls.Load(), before1, nodes[1].unaryCalls.Load())
	}
	if nodes[0].unaryCalls.Load() != 1 {
		t.Fatalf("write was retried on the other member")
	}
}

// TestWriteRetriesUntilAvailable: Unavailable writes are retried (with
// backoff) until the cluster answers.
func TestWriteRetriesUntilAvailable(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	for range 5 {
		nodes[0].inject(fault{code: connect.CodeUnavailable})
	}
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx := testCtx(t)
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if n := nodes[0].unaryCalls.Load(); n != 6 {
		t.Fatalf("calls = %d, want 6", n)
	}
}
