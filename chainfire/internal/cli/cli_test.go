package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// root builds the binary's command tree as cmd/chainfire does.
func root(out, errOut *syncBuffer, args ...string) *cobra.Command {
	r := &cobra.Command{Use: "chainfire", SilenceUsage: true, SilenceErrors: true}
	r.AddCommand(Commands()...)
	r.SetOut(out)
	r.SetErr(errOut)
	r.SetArgs(args)
	return r
}

// run executes one command line and returns its standard output.
func run(t *testing.T, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	var out, errOut syncBuffer
	err := root(&out, &errOut, args...).ExecuteContext(ctx)
	return out.String(), err
}

// mustRun runs a command line that must succeed.
func mustRun(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, err := run(t, ctx, args...)
	if err != nil {
		t.Fatalf("chainfire %s: %v\noutput: %s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestHelpEverywhere(t *testing.T) {
	t.Parallel()
	var walk func(prefix []string, cmds []*cobra.Command)
	walk = func(prefix []string, cmds []*cobra.Command) {
		for _, c := range cmds {
			args := append(append([]string{}, prefix...), c.Name())
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				out, err := run(t, context.Background(), append(args, "--help")...)
				if err != nil || !strings.Contains(out, "Usage:") || !strings.Contains(out, "--endpoints") {
					t.Fatalf("--help: err %v, output:\n%s", err, out)
				}
			})
			walk(args, c.Commands())
		}
	}
	walk(nil, Commands())
}

func TestSnapshotIsExtensible(t *testing.T) {
	t.Parallel()
	cmds := Commands()
	snap := Find(cmds, "snapshot")
	if snap == nil || Find(snap.Commands(), "save") == nil {
		t.Fatal("no snapshot save")
	}
	snap.AddCommand(&cobra.Command{Use: "restore", RunE: func(*cobra.Command, []string) error { return nil }})
	if Find(snap.Commands(), "restore") == nil {
		t.Fatal("restore not added")
	}
}

func TestBadInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"get", "k", "-o", "yaml"}, "--output"},
		{[]string{"get", "k", "--consistency", "x"}, "--consistency"},
		{[]string{"get", "k", "end", "--prefix"}, "only one of"},
		{[]string{"put", "k", "v", "--lease", "xyz"}, "hexadecimal"},
		{[]string{"lease", "grant", "0"}, "TTL"},
		{[]string{"member", "remove", "nothex"}, "hexadecimal"},
		{[]string{"compact", "abc"}, "REVISION"},
		{[]string{"get", "k", "--endpoints", "ftp://x"}, "bad endpoint"},
		{[]string{"bench", "put", "--clients", "0"}, "--clients"},
		{[]string{"bench", "put", "--protocol", "soap"}, "--protocol"},
		{[]string{"get"}, "arg"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			_, err := run(t, context.Background(), tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestUnreachableFailsLoudly(t *testing.T) {
	t.Parallel()
	start := time.Now()
	_, err := run(t, context.Background(), "get", "k", "--endpoints", "http://127.0.0.1:1", "--command-timeout", "300ms")
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("err = %v, want a failure naming the endpoint", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestEndpointsFromEnv(t *testing.T) {
	t.Setenv(EnvEndpoints, "http://10.0.0.1:2379, http://10.0.0.2:2379")
	g := newGlobals(&cobra.Command{})
	if fmt.Sprint(g.endpoints) != "[http://10.0.0.1:2379 http://10.0.0.2:2379]" {
		t.Fatalf("endpoints = %v", g.endpoints)
	}
	t.Setenv(EnvEndpoints, "")
	t.Setenv(EnvPlasmaEndpoints, "10.0.0.3:2379")
	if g := newGlobals(&cobra.Command{}); fmt.Sprint(g.endpoints) != "[10.0.0.3:2379]" {
		t.Fatalf("endpoints = %v", g.endpoints)
	}
	t.Setenv(EnvPlasmaEndpoints, "")
	if g := newGlobals(&cobra.Command{}); fmt.Sprint(g.endpoints) != "["+DefaultEndpoint+"]" {
		t.Fatalf("endpoints = %v", g.endpoints)
	}
}

func TestHumanBytes(t *testing.T) {
	t.Parallel()
	for in, want := range map[int64]string{0: "0 B", 999: "999 B", 20480: "20.5 kB", 3_000_000: "3.0 MB"} {
		if got := humanBytes(in); got != want {
			t.Errorf("humanBytes(%d) = %q, want %q", in, got, want)
		}
	}
}

// TestCommandsAgainstEtcd runs the client commands against a real etcd:
// output formats and wire compatibility both.
func TestCommandsAgainstEtcd(t *testing.T) {
	t.Parallel()
	url := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cf := func(args ...string) string {
		t.Helper()
		return mustRun(t, ctx, append(args, "--endpoints", url)...)
	}

	t.Run("put get del", func(t *testing.T) {
		if out := cf("put", "k1", "v1"); out != "OK\n" {
			t.Fatalf("put: %q", out)
		}
		cf("put", "k2", "v2")
		if out := cf("put", "k1", "v1b", "--prev-kv"); out != "OK\nk1\nv1\n" {
			t.Fatalf("put --prev-kv: %q", out)
		}
		if out := cf("get", "k", "--prefix"); out != "k1\nv1b\nk2\nv2\n" {
			t.Fatalf("get --prefix: %q", out)
		}
		if out := cf("get", "k1", "k3", "--keys-only"); out != "k1\nk2\n" {
			t.Fatalf("get range --keys-only: %q", out)
		}
		if out := cf("get", "k", "--prefix", "--count-only", "--consistency", "s"); out != "2\n" {
			t.Fatalf("get --count-only: %q", out)
		}
		if out := cf("get", "k", "--prefix", "--limit", "1", "--print-value-only"); out != "v1b\n" {
			t.Fatalf("get --limit: %q", out)
		}
		var resp struct {
			Kvs []struct {
				Key, Value string
			}
			Count string
		}
		if err := json.Unmarshal([]byte(cf("get", "k1", "-o", "json")), &resp); err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Value != "djFi" {
			t.Fatalf("get -o json: %+v, %v", resp, err)
		}
		if out := cf("del", "k", "--prefix", "--prev-kv"); out != "2\nk1\nv1b\nk2\nv2\n" {
			t.Fatalf("del: %q", out)
		}
	})

	t.Run("lease", func(t *testing.T) {
		out := cf("lease", "grant", "60")
		m := regexp.MustCompile(`^lease ([0-9a-f]{16}) granted with TTL\(60s\)\n$`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("lease grant: %q", out)
		}
		id := m[1]
		cf("put", "lk", "v", "--lease", id)
		if out := cf("lease", "timetolive", id, "--keys"); !strings.Contains(out, "granted with TTL(60s)") || !strings.Contains(out, "attached keys([lk])") {
			t.Fatalf("timetolive: %q", out)
		}
		if out := cf("lease", "list"); !strings.Contains(out, id) {
			t.Fatalf("lease list: %q", out)
		}
		if out := cf("lease", "keep-alive", id, "--once"); !strings.Contains(out, "keepalived with TTL(60)") {
			t.Fatalf("keep-alive --once: %q", out)
		}
		if out := cf("lease", "revoke", id); out != "lease "+id+" revoked\n" {
			t.Fatalf("revoke: %q", out)
		}
		if out := cf("lease", "timetolive", id); !strings.Contains(out, "already expired") {
			t.Fatalf("timetolive after revoke: %q", out)
		}
	})

	t.Run("watch", func(t *testing.T) {
		cf("put", "w/a", "1")
		cf("put", "w/a", "2")
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		var out, errOut syncBuffer
		done := make(chan error, 1)
		go func() {
			done <- root(&out, &errOut, "watch", "w/", "--prefix", "--rev", "1", "--endpoints", url).ExecuteContext(wctx)
		}()
		cf("del", "w/a")
		want := "PUT\nw/a\n1\nPUT\nw/a\n2\nDELETE\nw/a\n\n"
		deadline := time.Now().Add(10 * time.Second)
		for out.String() != want && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		wcancel()
		if err := <-done; err != nil {
			t.Fatalf("watch: %v", err)
		}
		if out.String() != want {
			t.Fatalf("watch output %q, want %q", out.String(), want)
		}
	})

	t.Run("cluster and maintenance", func(t *testing.T) {
		out := cf("member", "list")
		if !regexp.MustCompile(`^[0-9a-f]+, started, t, http://127\.0\.0\.1:\d+, ` + regexp.QuoteMeta(url) + `, false\n$`).MatchString(out) {
			t.Fatalf("member list: %q", out)
		}
		out = cf("status")
		if !regexp.MustCompile(`^` + regexp.QuoteMeta(url) + `, [0-9a-f]+, 3\.4\.\d+, [0-9.]+ [kM]?B, true, false, \d+, \d+, \d+, \n$`).MatchString(out) {
			t.Fatalf("status: %q", out)
		}
		var st struct {
			Endpoint string
			Status   struct{ Version string }
		}
		if err := json.Unmarshal([]byte(cf("status", "-o", "json")), &st); err != nil || st.Endpoint != url || st.Status.Version == "" {
			t.Fatalf("status -o json: %+v, %v", st, err)
		}
		path := filepath.Join(t.TempDir(), "snap.db")
		if out := cf("snapshot", "save", path); !strings.HasPrefix(out, "Snapshot saved at "+path) {
			t.Fatalf("snapshot save: %q", out)
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() < 4096 {
			t.Fatalf("snapshot file: %v, %v", fi, err)
		}
		var put struct{ Header struct{ Revision string } }
		if err := json.Unmarshal([]byte(cf("put", "c", "v", "-o", "json")), &put); err != nil {
			t.Fatal(err)
		}
		if out := cf("compact", put.Header.Revision); out != "compacted revision "+put.Header.Revision+"\n" {
			t.Fatalf("compact: %q", out)
		}
		// Watching from a compacted revision fails loudly.
		_, err := run(t, ctx, "watch", "c", "--rev", "1", "--endpoints", url)
		if err == nil || !strings.Contains(err.Error(), "compacted") {
			t.Fatalf("watch from compacted revision: %v", err)
		}
	})
}

// TestBenchAgainstEtcd runs every bench against a real etcd, as the
// performance comparison does.
func TestBenchAgainstEtcd(t *testing.T) {
	t.Parallel()
	url := startEtcd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, b := range [][]string{
		{"put", "--total", "300", "--clients", "4", "--conns", "2"},
		{"range", "--total", "300", "--clients", "4", "--conns", "2", "--consistency", "s"},
		{"range", "--total", "100", "--clients", "2", "--conns", "1"},
		{"watch", "--total", "50", "--clients", "2", "--conns", "2", "--watchers", "4"},
	} {
		t.Run(strings.Join(b, " "), func(t *testing.T) {
			out := mustRun(t, ctx, append([]string{"bench"}, append(b, "--endpoints", url, "-o", "json")...)...)
			var r benchResult
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("output %q: %v", out, err)
			}
			wantTotal := int64(300)
			switch b[0] {
			case "range":
				if b[2] == "100" {
					wantTotal = 100
				}
			case "watch":
				wantTotal = 50 * 4
			}
			if r.Total != wantTotal || r.Errors != 0 || r.OpsPerSec <= 0 || r.P50Ms <= 0 || r.P99Ms < r.P50Ms {
				t.Fatalf("result %+v", r)
			}
		})
	}
	out := mustRun(t, ctx, "bench", "put", "--total", "50", "--clients", "2", "--endpoints", url)
	if !strings.Contains(out, "ops/s") || !strings.Contains(out, "p99.9") {
		t.Fatalf("simple output: %q", out)
	}
}
