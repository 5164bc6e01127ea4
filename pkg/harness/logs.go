package harness

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// LogDirEnv names the environment variable of a directory that keeps the full logs of
// the processes of failed tests, under <test binary>/<test name>/<process>.log. CI
// points it at a directory it archives; `make test` sets it to tmp/test-logs.
const LogDirEnv = "PLASMA_TEST_LOG_DIR"

// TailLines is how many lines of each process's log a failed test prints.
const TailLines = 200

// tailMaxBytes bounds how much of a log tail reads, whatever the line lengths.
const tailMaxBytes = 256 << 10

// tail returns at most the last n lines of the file at path (fewer when the lines within
// the last tailMaxBytes are fewer), and whether earlier output was left out.
func tail(path string, n int) (string, bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", false, err
	}
	off := max(st.Size()-tailMaxBytes, 0)
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return "", false, err
	}
	text, cut := lastLines(buf, n, off > 0)
	return text, cut, nil
}

// lastLines returns the last n lines of b and whether any were left out. truncated says
// b does not start at a line boundary of the original, so its first (partial) line is
// dropped and the result is marked as cut.
func lastLines(b []byte, n int, truncated bool) (string, bool) {
	if truncated {
		_, rest, _ := bytes.Cut(b, []byte("\n"))
		b = rest
	}
	text := strings.TrimSuffix(string(b), "\n")
	if text == "" {
		return "", truncated
	}
	lines := strings.Split(text, "\n")
	if len(lines) > n {
		return strings.Join(lines[len(lines)-n:], "\n"), true
	}
	return text, truncated
}

// reportLogs prints the tail of the process's log to t and, when $PLASMA_TEST_LOG_DIR is
// set, copies the whole log under it. It is called from the process's cleanup when the
// test has failed.
func (p *Process) reportLogs(t testing.TB) {
	text, cut, err := tail(p.logPath, TailLines)
	if err != nil {
		t.Logf("harness: %s: reading log: %v", p.name, err)
		return
	}
	kept := ""
	if dir := os.Getenv(LogDirEnv); dir != "" {
		dst := filepath.Join(dir, testBinary(), sanitize(t.Name()), p.name+".log")
		if err := copyFile(p.logPath, dst); err != nil {
			t.Logf("harness: %s: keeping log: %v", p.name, err)
		} else {
			kept = "; full log kept at " + dst
		}
	}
	what := "log"
	if cut {
		what = fmt.Sprintf("last %d lines of log", TailLines)
	}
	t.Logf("harness: ---- %s: %s%s ----\n%s\n---- end of %s ----", p.name, what, kept, strings.TrimRight(text, "\n"), p.name)
}

// testBinary names the running test binary after its package ("harness" for
// harness.test), so that equal test names in different packages keep apart.
func testBinary() string {
	return strings.TrimSuffix(filepath.Base(os.Args[0]), ".test")
}

// sanitize turns a test name into a single path element.
func sanitize(name string) string {
	r := strings.NewReplacer("/", "__", string(filepath.Separator), "__", " ", "_", ":", "_")
	return r.Replace(name)
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}
