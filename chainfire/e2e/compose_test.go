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

// TestDockerCompose builds the FROM-scratch images, brings deploy/docker-compose.yml's stack
// (3 ChainFire members, 2 IAM replicas) up with docker-compose, writes through one member
// and reads through every member (etcdctl), logs in at one IAM replica and calls the other
// with the token, and tears it down (scripts/compose-smoke.sh does the steps; it needs
// bin/iam, which make test builds).
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
