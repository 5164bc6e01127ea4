package e2e

import (
	"fmt"
	"os/exec"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
)

func argValue(args []string, flag string) string {
	for i, a := range args {
		if a == flag && i+1 < len(args) {
			return args[i+1]
		}
	}
	return ""
}

// TestQuorumLossRecover loses two of three members for good, recovers the survivor with
// `chainfire recover`, finds every committed key, then grows back to three members.
func TestQuorumLossRecover(t *testing.T) {
	t.Parallel()
	c := chainfiretest.Start(t, 3, chainfiretest.Options{})
	ctx := testCtx(t, 120*time.Second)
	cli := client(t, c.Endpoints()...)
	for i := range 50 {
		if _, err := cli.Put(ctx, fmt.Sprintf("q/%02d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range c.Members {
		m.Kill()
	}
	survivor := c.Members[0]
	bin := harness.Binary(t, chainfiretest.Package)
	out, err := exec.Command(bin, "recover", "--name", survivor.Name, "--data-dir", survivor.DataDir,
		"--initial-advertise-peer-urls", survivor.PeerURL,
		"--initial-cluster-token", argValue(survivor.Args(), "--initial-cluster-token")).CombinedOutput()
	if err != nil {
		t.Fatalf("recover: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	if err := survivor.Start(); err != nil {
		t.Fatal(err)
	}
	c.WaitReady()
	sc := client(t, survivor.ClientURL)
	r, err := sc.Get(ctx, "q/", chainfire.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if r.Count != 50 {
		t.Fatalf("recovered member has %d of 50 keys", r.Count)
	}
	if _, err := sc.Put(ctx, "after-recover", "v"); err != nil {
		t.Fatalf("write after recover: %v", err)
	}
	// Grow back to three.
	for range 2 {
		m := c.AddMember(func(peerURL string) error {
			_, err := sc.MemberAdd(ctx, []string{peerURL})
			return err
		})
		c.WaitReady()
		mr, err := client(t, m.ClientURL).Get(ctx, "q/", chainfire.WithPrefix(), chainfire.WithCountOnly())
		if err != nil || mr.Count != 50 {
			t.Fatalf("%s after joining: %v keys, %v", m.Name, mr.GetCount(), err)
		}
	}
	ml, err := sc.MemberList(ctx)
	if err != nil || len(ml.Members) != 3 {
		t.Fatalf("member list after growing back: %v %v", ml, err)
	}
	// And the grown cluster survives losing the recovered member.
	survivor.Kill()
	rest := client(t, c.Members[3].ClientURL, c.Members[4].ClientURL)
	if _, err := rest.Put(ctx, "after-survivor-loss", "v"); err != nil {
		t.Fatalf("write with the recovered member down: %v", err)
	}
}
