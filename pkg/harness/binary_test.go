package harness_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"plasmacloud.dev/pkg/harness"
)

// fatalRecorder is a testing.TB whose Fatal calls end the calling goroutine and record
// the message instead of failing the real test, to check the harness's own failures.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (r *fatalRecorder) Helper() {}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	r.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

// fatalOf runs f with a fatalRecorder in its own goroutine and returns the Fatal message
// ("" if f returned normally).
func fatalOf(t *testing.T, f func(tb testing.TB)) string {
	r := &fatalRecorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(r)
	}()
	<-done
	return r.msg
}

func TestBinaryFromBinDir(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "hello")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notexec"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(harness.BinDirEnv, dir)

	if got := harness.Binary(t, "plasmacloud.dev/whatever/cmd/hello"); got != exe {
		t.Errorf("Binary = %q, want %q", got, exe)
	}
	tests := []struct{ pkg, wantMsg string }{
		{"plasmacloud.dev/x/cmd/missing", "make build"},
		{"plasmacloud.dev/x/cmd/notexec", "not an executable"},
	}
	for _, tt := range tests {
		msg := fatalOf(t, func(tb testing.TB) { harness.Binary(tb, tt.pkg) })
		if !strings.Contains(msg, tt.wantMsg) {
			t.Errorf("Binary(%s) failure %q, want it to mention %q", tt.pkg, msg, tt.wantMsg)
		}
	}
}

func TestBuild(t *testing.T) {
	t.Parallel()
	const pkg = "plasmacloud.dev/pkg/harness/testdata/hello"
	bin := harness.Build(t, pkg)
	if again := harness.Build(t, pkg); again != bin {
		t.Errorf("second Build = %q, want the cached %q", again, bin)
	}
	out, err := exec.Command(bin).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "hello from") {
		t.Fatalf("running built binary: %v: %s", err, out)
	}
	msg := fatalOf(t, func(tb testing.TB) { harness.Build(tb, "plasmacloud.dev/pkg/harness/testdata/nonexistent") })
	if !strings.Contains(msg, "go build") {
		t.Errorf("Build of a missing package failed with %q, want go build's output", msg)
	}
}

func TestWorkspaceRoot(t *testing.T) {
	t.Parallel()
	root, err := harness.WorkspaceRoot()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Errorf("WorkspaceRoot = %q without go.work: %v", root, err)
	}
}

func TestRequire(t *testing.T) {
	t.Parallel()
	if p := harness.RequireCommand(t, "sh"); !filepath.IsAbs(p) {
		t.Errorf("RequireCommand(sh) = %q", p)
	}
	msg := fatalOf(t, func(tb testing.TB) { harness.RequireCommand(tb, "no-such-command-plasma") })
	if !strings.Contains(msg, "scripts/deps.sh") {
		t.Errorf("RequireCommand failure %q does not say how to install", msg)
	}
	msg = fatalOf(t, func(tb testing.TB) { harness.RequireRoot(tb) })
	if root := os.Geteuid() == 0; root != (msg == "") {
		t.Errorf("RequireRoot as euid %d: failure %q", os.Geteuid(), msg)
	}
}
