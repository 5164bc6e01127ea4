package e2e

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
)

// TestAlertRules checks deploy/prometheus/alerts.yml with promtool (syntax and its unit
// tests) and that every ChainFire metric the rules use is exported by a live member, so
// the rules cannot silently drift from the code.
func TestAlertRules(t *testing.T) {
	t.Parallel()
	promtool := harness.RequireCommand(t, "promtool")
	root, err := harness.WorkspaceRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "deploy", "prometheus")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	rules, err := os.ReadFile(filepath.Join(dir, "alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	c := chainfiretest.Start(t, 1, chainfiretest.Options{})
	resp, err := http.Get(c.Members[0].ClientURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range regexp.MustCompile(`chainfire_[a-z_]+`).FindAllString(string(rules), -1) {
		name = strings.TrimSuffix(name, "_bucket")
		if !strings.Contains(string(body), "\n"+name) && !strings.HasPrefix(string(body), name) {
			t.Errorf("alerts.yml uses %s, which /metrics does not export", name)
		}
	}
}
