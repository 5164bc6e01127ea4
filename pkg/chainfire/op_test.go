package chainfire

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"connectrpc.com/connect"
)

func TestPrefixEnd(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"a", "b"},
		{"a/", "a0"},
		{"a\xff", "b"},
		{"a\xff\xff", "b"},
		{"\xff", "\x00"},
		{"", "\x00"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.in), func(t *testing.T) {
			t.Parallel()
			if got := string(PrefixEnd([]byte(tt.in))); got != tt.want {
				t.Errorf("PrefixEnd(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestOpRanges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		op       Op
		key, end string
	}{
		{"single", OpGet("k"), "k", ""},
		{"prefix", OpGet("k/", WithPrefix()), "k/", "k0"},
		{"prefix all", OpGet("", WithPrefix()), "\x00", "\x00"},
		{"from key", OpGet("k", WithFromKey()), "k", "\x00"},
		{"from empty", OpGet("", WithFromKey()), "\x00", "\x00"},
		{"range", OpDelete("a", WithRange("c")), "a", "c"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.op.Key() != tt.key || tt.op.RangeEnd() != tt.end {
				t.Errorf("got [%q, %q), want [%q, %q)", tt.op.Key(), tt.op.RangeEnd(), tt.key, tt.end)
			}
		})
	}
}

func TestWriteErrorClassification(t *testing.T) {
	t.Parallel()
	wire := func(code connect.Code) error {
		// A wire error, as a client sees the server's answer.
		err := connect.NewWireError(code, errors.New("from server"))
		return err
	}
	dial := connect.NewError(connect.CodeUnavailable, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("refused")})
	lost := connect.NewError(connect.CodeUnavailable, errors.New("http2: client connection lost"))
	tests := []struct {
		name       string
		err        error
		notApplied bool
		unknown    bool
	}{
		{"server unavailable", wire(connect.CodeUnavailable), true, false},
		{"server unknown", wire(connect.CodeUnknown), false, true},
		{"server invalid", wire(connect.CodeInvalidArgument), false, false},
		{"server deadline", wire(connect.CodeDeadlineExceeded), false, true},
		{"server failed precondition", wire(connect.CodeFailedPrecondition), false, false},
		{"dial refused", dial, true, false},
		{"connection lost", lost, false, true},
		{"client deadline", connect.NewError(connect.CodeDeadlineExceeded, errors.New("ctx")), false, true},
		{"ctx before send", fmt.Errorf("x: %w", errors.New("context canceled")), false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := isNotApplied(tt.err); got != tt.notApplied {
				t.Errorf("isNotApplied = %v, want %v", got, tt.notApplied)
			}
			if got := isOutcomeUnknown(tt.err); got != tt.unknown {
				t.Errorf("isOutcomeUnknown = %v, want %v", got, tt.unknown)
			}
		})
	}
}
