package e2e

import (
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
	// Panics 3 heartbeats after each boot; 2 restarts allowed: the third panic is final.
	ps := spec("plasma.panic_after=3")
	ps.Ha = &pb.HAPolicy{Restart: pb.RestartPolicy_RESTART_POLICY_ALWAYS, MaxRestarts: 2, RestartWindowSeconds: 600}
	panicky := e.create(c, "demo", "panicky", ps)

	vm, _ := e.waitVM(c, killed.Id, bootTimeout, "running with a heartbeat", running(""))
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
	measure(t, "QEMU SIGKILL → new QEMU process", restartedIn.Round(10*time.Millisecond))
	vm, _ = e.waitVM(c, killed.Id, bootTimeout, "running again with a new boot id", running(boot))
	took := time.Since(start)
	measure(t, "QEMU SIGKILL → RUNNING with a new boot id (heartbeat)", took.Round(10*time.Millisecond))
	if vm.Status.Restarts < 1 {
		t.Errorf("restarts = %d after a kill, want ≥ 1", vm.Status.Restarts)
	}
	// Generous bound: a second QEMU within 30 s even on a loaded machine (aim: 5 s).
	if restartedIn > 30*time.Second {
		t.Errorf("QEMU restarted after %v", restartedIn)
	}

	// The panicking guest: restarted (restarts climb, new boot ids) and then FAILED.
	seen := map[string]bool{}
	vm, took = e.waitVM(c, panicky.Id, 4*bootTimeout, "FAILED after the restart limit", func(v *pb.VM) bool {
		if b := v.GetStatus().GetBootId(); b != "" {
			seen[b] = true
		}
		return v.GetStatus().GetState() == pb.VMState_VM_STATE_FAILED
	})
	measure(t, "panicking guest (2 restarts allowed) → FAILED", took.Round(10*time.Millisecond))
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
