package node

import (
	"net/http"
	"strconv"
	"testing"
	"time"
)

func TestForwardExpired(t *testing.T) {
	now := time.Unix(1000, 0)
	tests := []struct {
		header string
		want   bool
	}{
		{"", false},
		{strconv.FormatInt(now.Add(time.Second).UnixNano(), 10), false},
		{strconv.FormatInt(now.Add(-time.Millisecond).UnixNano(), 10), true},
		{"not a number", false},
	}
	for _, tt := range tests {
		h := http.Header{}
		if tt.header != "" {
			h.Set(ForwardDeadlineHeader, tt.header)
		}
		if got := ForwardExpired(h, now); got != tt.want {
			t.Errorf("ForwardExpired(%q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}
