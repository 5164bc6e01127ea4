package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
)

// TestDockerCompose builds the FROM-scratch image, brings deploy/docker-compose.yml's 3-node
// cluster up with docker-compose, writes through one member and reads through every member
// (etcdctl), and tears it down (scripts/compose-smoke.sh does the steps).
func TestDockerCompose(t *testing.T) {
	harness.RequireCommand(t, "docker")
	bin := harness.Binary(t, chainfiretest.Package)
	root, err := harness.WorkspaceRoot()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", filepath.Join(root, "scripts", "compose-smoke.sh"))
	cmd.Dir = root
	cmd.Env = append(cmd.Environ(), "CHAINFIRE_BIN="+bin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("compose smoke test: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}
