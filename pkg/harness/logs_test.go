package harness

import (
	"fmt"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestLastLines(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		n         int
		truncated bool
		want      string
		wantCut   bool
	}{
		{"empty", "", 3, false, "", false},
		{"fewer lines", "a\nb\n", 3, false, "a\nb", false},
		{"exactly n", "a\nb\nc\n", 3, false, "a\nb\nc", false},
		{"more lines", "a\nb\nc\nd\n", 2, false, "c\nd", true},
		{"no final newline", "a\nb\nc", 2, false, "b\nc", true},
		{"partial first line dropped", "tail-of-a\nb\nc\n", 5, true, "b\nc", true},
		{"single partial line", "xyz", 5, true, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, cut := lastLines([]byte(tt.in), tt.n, tt.truncated)
			if got != tt.want || cut != tt.wantCut {
				t.Errorf("lastLines(%q, %d, %v) = %q, %v; want %q, %v", tt.in, tt.n, tt.truncated, got, cut, tt.want, tt.wantCut)
			}
		})
	}
}

func TestTailLargeFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "big.log")
	var b strings.Builder
	for i := range 50000 { // ~600 KB, more than tailMaxBytes
		fmt.Fprintf(&b, "line %d\n", i)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	got, cut, err := tail(path, 3)
	if err != nil || !cut || got != "line 49997\nline 49998\nline 49999" {
		t.Fatalf("tail = %q, %v, %v", got, cut, err)
	}
}

// logRecorder captures Logf output of a test's cleanup-time report.
type logRecorder struct {
	testing.TB
	logs []string
}

func (r *logRecorder) Logf(format string, args ...any) {
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func TestReportLogs(t *testing.T) {
	keep := t.TempDir()
	t.Setenv(LogDirEnv, keep)
	p := NewProcess(t, ProcessConfig{Name: "node1", Path: "/bin/sh", Args: []string{"-c", "for i in $(seq 1 300); do echo line $i; done"}})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	r := &logRecorder{TB: t}
	p.reportLogs(r)
	if len(r.logs) != 1 {
		t.Fatalf("got %d log calls, want 1", len(r.logs))
	}
	out := r.logs[0]
	kept := filepath.Join(keep, "harness", "TestReportLogs", "node1.log")
	for _, want := range []string{"node1: last " + strconv.Itoa(TailLines) + " lines", "line 300\n", "kept at " + kept} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "line 100\n") {
		t.Error("report has more than the tail")
	}
	if b, err := os.ReadFile(kept); err != nil || !strings.Contains(string(b), "line 1\n") {
		t.Errorf("kept log: %v", err)
	}
}

// TestNoServiceImports keeps the harness usable by every module: it must not depend on
// any PlasmaCloud service (or on anything but the standard library).
func TestNoServiceImports(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(fset, f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range af.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if first, _, _ := strings.Cut(path, "/"); strings.Contains(first, ".") {
				t.Errorf("%s imports %s: the harness must use only the standard library", f, path)
			}
		}
	}
}
