package harness

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// BinDirEnv names the environment variable holding a directory of prebuilt binaries.
// `make test` sets it to the repository's bin/ after `make build`.
const BinDirEnv = "PLASMA_BIN_DIR"

// Binary returns the path of the executable for the main package pkg, an import path such
// as "plasmacloud.dev/chainfire/cmd/chainfire" whose last element is the binary's name.
//
// When $PLASMA_BIN_DIR is set the binary must be there: a missing or non-executable file
// fails the test (a stale or absent `make build` should be loud, not silently rebuilt).
// Otherwise Binary calls [Build]. Binary fails the test with t.Fatal on any error, so it
// must be called from the test's goroutine.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	dir := os.Getenv(BinDirEnv)
	if dir == "" {
		return Build(t, pkg)
	}
	p := filepath.Join(dir, path.Base(pkg))
	st, err := os.Stat(p)
	switch {
	case err != nil:
		t.Fatalf("harness: %s=%s but %v; run `make build`, or unset %s to let the test build %s itself",
			BinDirEnv, dir, err, BinDirEnv, pkg)
	case !st.Mode().IsRegular() || st.Mode()&0o111 == 0:
		t.Fatalf("harness: %s is not an executable file (mode %v)", p, st.Mode())
	}
	return p
}

// builds caches the outcome of Build per package for the life of the test binary, so
// that every test of a package shares one build (and one failure message). It is
// process-wide because the test binary is the unit a build is amortized over.
var builds = struct {
	mu  sync.Mutex
	dir string            // per-process output directory, created on first Build
	m   map[string]*build // by package path
}{m: make(map[string]*build)}

type build struct {
	once sync.Once
	path string
	err  error
}

// Build compiles the main package pkg from the Go workspace enclosing the test's working
// directory (found by walking up to go.work) and returns the path of the executable.
//
// The build runs once per test binary and package, with CGO_ENABLED=0 and -trimpath like
// `make build`, into a directory under os.TempDir that is named after this process and
// removed by the next Build of a later test binary once this process has exited. Build is
// safe for concurrent use; it fails the test with t.Fatal, including the compiler output,
// when the package does not build.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	builds.mu.Lock()
	b := builds.m[pkg]
	if b == nil {
		b = new(build)
		builds.m[pkg] = b
	}
	builds.mu.Unlock()

	b.once.Do(func() { b.path, b.err = goBuild(pkg) })
	if b.err != nil {
		t.Fatalf("harness: building %s: %v", pkg, b.err)
	}
	return b.path
}

// goBuild runs `go build` for pkg in the workspace root.
func goBuild(pkg string) (string, error) {
	root, err := WorkspaceRoot()
	if err != nil {
		return "", err
	}
	dir, err := buildDir()
	if err != nil {
		return "", err
	}
	gobin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("go toolchain not in PATH (%w); set %s to prebuilt binaries instead", err, BinDirEnv)
	}
	// Each package gets its own subdirectory: two commands may share a base name.
	out := filepath.Join(dir, strings.ReplaceAll(pkg, "/", "_"), path.Base(pkg))
	cmd := exec.Command(gobin, "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build in %s: %w\n%s", root, err, msg)
	}
	return out, nil
}

// WorkspaceRoot returns the directory holding go.work, searching from the working
// directory upwards (a test's working directory is its package directory).
func WorkspaceRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("harness: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("harness: no go.work in %s or any parent; run inside the PlasmaCloud workspace or set %s", wd, BinDirEnv)
		}
	}
}

const buildDirPrefix = "plasma-harness-"

// buildDir returns this process's output directory, creating it on first use and
// removing directories left behind by test binaries that have exited.
func buildDir() (string, error) {
	builds.mu.Lock()
	defer builds.mu.Unlock()
	if builds.dir != "" {
		return builds.dir, nil
	}
	removeStaleBuildDirs()
	d, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", buildDirPrefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("harness: %w", err)
	}
	builds.dir = d
	return d, nil
}

// removeStaleBuildDirs deletes build directories whose owning process no longer exists.
// Errors are ignored: this is housekeeping, and a directory another user owns is theirs.
func removeStaleBuildDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), buildDirPrefix+"*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), buildDirPrefix)
		pidStr, _, ok := strings.Cut(rest, "-")
		if !ok {
			continue
		}
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(m)
		}
	}
}
