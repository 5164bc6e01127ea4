package resilience

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"
)

func TestTrackSend(t *testing.T) {
	t.Parallel()
	srv := newH2CServer(t, protoHandler)
	dead := newH2CServer(t, protoHandler)
	deadURL := dead.URL
	dead.Close()
	c := NewHTTPClient(TransportOptions{DialTimeout: time.Second})
	tests := []struct {
		name     string
		url      string
		wantSent bool
	}{
		{"reached server", srv.URL, true},
		{"connection refused", deadURL, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, sent := TrackSend(context.Background())
			_, err := get(ctx, c, tt.url)
			if sent() != tt.wantSent {
				t.Fatalf("sent = %v, want %v (err %v)", sent(), tt.wantSent, err)
			}
		})
	}
}

func TestMarkNotSent(t *testing.T) {
	t.Parallel()
	base := connect.NewError(connect.CodeDeadlineExceeded, context.DeadlineExceeded)
	err := MarkNotSent(base)
	if !IsNotSent(err) || !errors.Is(err, ErrNotSent) || connect.CodeOf(err) != connect.CodeDeadlineExceeded {
		t.Fatalf("MarkNotSent = %v", err)
	}
	if MarkNotSent(nil) != nil || MarkNotSent(err) != err {
		t.Fatal("MarkNotSent must be idempotent and nil-safe")
	}
}
