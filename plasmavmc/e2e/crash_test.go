package e2e

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestCrashRestart: QEMU SIGKILLed → the agent restarts it (restarts counted) and the
// guest comes back with a new boot id; a guest that panics at every boot is restarted
// until its restart limit and then FAILED with the reason.
func TestCrashRestart(t *testing.T) {
	e := newEnv(t, envOptions{})
	fh := startFakeHost(t, "a")
	e.addAgent("crash1", fh, 2048)
	c := e.api(0, "")
	e.registerImages(c)

	killed := e.create(c, "demo", "killed", spec())
	vm, _ := e.waitVM(c, killed.Id, bootTimeout, "running with a heartbeat", running(""))
	// Three kills: the first restart in a window is immediate, the next ones back off
	// (0.5 s, 1 s), as a crash loop should.
	const kills = 3
	var took []time.Duration
	for k := 1; k <= kills; k++ {
		boot := vm.Status.BootId
		pid := qemuPID(killed.Id)
		if pid == 0 {
			t.Fatal("no QEMU process found for the VM")
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		// QEMU back: a new process, the restart counted.
		deadline := start.Add(waitTimeout)
		var restartedIn time.Duration
		for {
			if p := qemuPID(killed.Id); p != 0 && p != pid {
				restartedIn = time.Since(start)
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("QEMU not restarted within %v\n%s", waitTimeout, tail(e.agents["crash1"].Logs()))
			}
			time.Sleep(20 * time.Millisecond)
		}
		measure(t, fmt.Sprintf("kill %d: QEMU SIGKILL → new QEMU process", k), restartedIn.Round(10*time.Millisecond))
		vm, _ = e.waitVM(c, killed.Id, bootTimeout, "running again with a new boot id", running(boot))
		d := time.Since(start)
		took = append(took, d)
		measure(t, fmt.Sprintf("kill %d: QEMU SIGKILL → RUNNING with a new boot id (heartbeat)", k), d.Round(10*time.Millisecond))
		if vm.Status.Restarts != int32(k) {
			t.Errorf("restarts = %d after %d kills", vm.Status.Restarts, k)
		}
		// Generous bound: a second QEMU within 30 s even on a loaded machine.
		if restartedIn > 30*time.Second {
			t.Errorf("QEMU restarted after %v", restartedIn)
		}
	}
	// The aim (5 s) is a figure for docs/plasmavmc/performance.md, not a bound here.
	measure(t, "first kill: QEMU SIGKILL → RUNNING with a new boot id", took[0].Round(10*time.Millisecond))
	measure(t, "QEMU SIGKILL → RUNNING with a new boot id, max over 3 kills (with backoff)", percentile(took, 1).Round(10*time.Millisecond))

	// Panics 3 heartbeats after each boot; 2 restarts allowed: the third panic is final.
	ps := spec("plasma.panic_after=3")
	ps.Ha = &pb.HAPolicy{Restart: pb.RestartPolicy_RESTART_POLICY_ALWAYS, MaxRestarts: 2, RestartWindowSeconds: 600}
	panicky := e.create(c, "demo", "panicky", ps)
	// The panicking guest: restarted (restarts climb, new boot ids) and then FAILED.
	seen := map[string]bool{}
	vm, failedIn := e.waitVM(c, panicky.Id, 4*bootTimeout, "FAILED after the restart limit", func(v *pb.VM) bool {
		if b := v.GetStatus().GetBootId(); b != "" {
			seen[b] = true
		}
		return v.GetStatus().GetState() == pb.VMState_VM_STATE_FAILED
	})
	measure(t, "panicking guest (2 restarts allowed) → FAILED", failedIn.Round(10*time.Millisecond))
	measure(t, "panicking guest: distinct boot ids seen in status", len(seen))
	if vm.Status.Restarts != 2 || vm.Status.Reason == "" {
		t.Fatalf("FAILED status: restarts %d (want 2), reason %q", vm.Status.Restarts, vm.Status.Reason)
	}
	if !strings.Contains(strings.ToLower(vm.Status.Reason), "restart") {
		t.Errorf("reason %q does not mention the restart limit", vm.Status.Reason)
	}
	t.Logf("FAILED reason: %s", vm.Status.Reason)
	if len(seen) < 2 {
		t.Errorf("saw %d boot ids of the panicking guest; want it restarted (≥ 2)", len(seen))
	}
	if qemuPID(panicky.Id) != 0 {
		t.Error("a FAILED VM still has a QEMU")
	}
}
