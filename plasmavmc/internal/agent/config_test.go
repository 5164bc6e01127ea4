package agent

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigFenceMargin(t *testing.T) {
	base := func() Config {
		return Config{HostName: "h", ChainFireEndpoints: []string{"http://127.0.0.1:1"}, StateDir: "/tmp/s",
			Pools: map[string]string{"local": "/tmp/p"}}
	}
	tests := []struct {
		name       string
		ttl, fence time.Duration
		socket     string
		wantErr    string
		wantMargin time.Duration
	}{
		{name: "defaults", wantMargin: 2 * time.Second},
		{name: "short TTL: a quarter", ttl: 4 * time.Second, wantMargin: time.Second},
		{name: "explicit", ttl: 10 * time.Second, fence: 3 * time.Second, wantMargin: 3 * time.Second},
		{name: "half the TTL", ttl: 10 * time.Second, fence: 5 * time.Second, wantErr: "fence margin"},
		{name: "negative", fence: -time.Second, wantErr: "fence margin"},
		{name: "fractional TTL", ttl: 2500 * time.Millisecond, wantErr: "whole seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			c.LeaseTTL, c.FenceMargin = tt.ttl, tt.fence
			err := c.Validate()
			if tt.wantErr != "" {
				if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Validate: %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || c.FenceMargin != tt.wantMargin {
				t.Fatalf("Validate: %v, margin %v (want %v)", err, c.FenceMargin, tt.wantMargin)
			}
			if c.MigrationURI != "qemu+unix:///system?socket=/run/libvirt/libvirt-sock" {
				t.Fatalf("migration URI %q", c.MigrationURI)
			}
		})
	}
}
