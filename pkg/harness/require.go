package harness

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RequireRoot fails the test (it does not skip it) unless it runs as root. Tests that
// create network namespaces, veth pairs or nftables rules call it first, so that a
// missing privilege shows up as a failure with its reason rather than as a silently
// skipped fault test. CI runs the suite as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatalf("harness: %s needs root (network namespaces, veth, nftables); run the suite as root, "+
			"e.g. `sudo -E env PATH=$PATH make test`", t.Name())
	}
}

// RequireCommand returns the path of the external program name (etcd, etcdctl, nft, ip,
// ...), looking in PATH and then in /usr/sbin and /sbin, which a non-login root PATH may
// lack. It fails the test, naming the script that installs it, when it cannot be found.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	t.Fatalf("harness: %s not found in PATH or /usr/sbin, /sbin; install the test dependencies with scripts/deps.sh (`make test` runs it)", name)
	return ""
}
