package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestFlags checks the HA flags' validation and the watchdog command's wiring (only
// refusals: a valid configuration would start the agent).
func TestFlags(t *testing.T) {
	base := []string{"--chainfire-endpoints", "http://127.0.0.1:1", "--host-name", "h", "--state-dir", "/tmp/pva-flags",
		"--pool-local", "/tmp/pva-flags-pool"}
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"fence margin not below half the TTL", []string{"--lease-ttl", "4s", "--fence-margin", "2s"}, "fence margin 2s"},
		{"negative fence margin", []string{"--fence-margin", "-1s"}, "fence margin"},
		{"fractional lease TTL", []string{"--lease-ttl", "2500ms"}, "whole seconds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := runCommand("plasmavmc-agent")
			cmd.SetArgs(append(append([]string{}, base...), tt.args...))
			cmd.SetOut(&bytes.Buffer{})
			cmd.SetErr(&bytes.Buffer{})
			err := cmd.Execute()
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Execute: %v, want %q", err, tt.wantErr)
			}
		})
	}
	t.Run("watchdog needs an absolute state dir", func(t *testing.T) {
		cmd := watchdogCommand()
		cmd.SetArgs([]string{"--state-dir", "relative", "--host-name", "h"})
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "absolute") {
			t.Fatalf("Execute: %v", err)
		}
	})
	t.Run("help names the HA flags", func(t *testing.T) {
		cmd := runCommand("plasmavmc-agent")
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs([]string{"--help"})
		if err := cmd.Execute(); err != nil {
			t.Fatal(err)
		}
		for _, f := range []string{"--fence-margin", "--migration-uri", "--watchdog"} {
			if !strings.Contains(out.String(), f) {
				t.Fatalf("help lacks %s:\n%s", f, out.String())
			}
		}
	})
}
