package e2e

import (
	"context"
	"net/http"
	"syscall"
	"testing"
	"time"

	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestAgentAndLibvirtdRestart: the agent SIGKILLed → the VM keeps running (same QEMU, same
// boot id); the restarted agent re-adopts it without restarting it and without a second
// domain, and its status is right. Then the host's libvirtd is SIGKILLed and started
// again: the agent reconnects by itself, the VM is untouched, and a QEMU kill after the
// reconnect is still seen and repaired (events re-subscribed).
func TestAgentAndLibvirtdRestart(t *testing.T) {
	e := newEnv(t, envOptions{})
	// A fake host of this test alone: its libvirtd gets killed below.
	fh := startFakeHost(t, "lv")
	a := e.addAgent("adopt1", fh, 2048)
	c := e.api(0, "")
	e.registerImages(c)

	vm := e.create(c, "demo", "adopted", spec())
	vm, _ = e.waitVM(c, vm.Id, bootTimeout, "running with a heartbeat", running(""))
	boot, pid := vm.Status.BootId, qemuPID(vm.Id)

	t.Run("agent SIGKILL", func(t *testing.T) {
		if err := a.Kill(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(3 * time.Second) // QEMU must not notice
		if p := qemuPID(vm.Id); p != pid {
			t.Fatalf("QEMU changed while the agent was dead: %d → %d", pid, p)
		}
		restarted := time.Now()
		if err := a.Restart(); err != nil {
			t.Fatal(err)
		}
		waitReady(t, a.Process)
		measure(t, "agent restart → ready", time.Since(restarted).Round(10*time.Millisecond))
		// A status written by the new agent: update time after its start, same boot.
		v, _ := e.waitVM(c, vm.Id, waitTimeout, "status from the restarted agent", func(v *pb.VM) bool {
			s := v.GetStatus()
			return running("")(v) && s.GetUpdateTime().AsTime().After(restarted)
		})
		if v.Status.BootId != boot || v.Status.Restarts != 0 {
			t.Fatalf("after re-adoption: boot %s (was %s), restarts %d", v.Status.BootId, boot, v.Status.Restarts)
		}
		if p := qemuPID(vm.Id); p != pid {
			t.Fatalf("re-adoption restarted QEMU: %d → %d", pid, p)
		}
		if n := countDomains(t, fh, vm.Id); n != 1 {
			t.Fatalf("%d domains for the VM after re-adoption, want 1", n)
		}
	})

	t.Run("libvirtd SIGKILL and restart", func(t *testing.T) {
		lpid := fh.libvirtdPID(t)
		if lpid == 0 {
			t.Fatal("fake host's libvirtd not found")
		}
		if err := syscall.Kill(lpid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		// The agent notices (not ready while libvirtd is gone).
		notReady := false
		for i := 0; i < 50 && !notReady; i++ {
			if resp, err := http.Get(a.url + "/readyz"); err == nil {
				notReady = resp.StatusCode != http.StatusOK
				resp.Body.Close()
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !notReady {
			t.Log("agent stayed ready while libvirtd was down (not required; noted)")
		}
		fh.restartLibvirtd(t)
		restarted := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		if err := a.WaitReady(ctx); err != nil {
			t.Fatalf("agent not ready after libvirtd restart: %v\n%s", err, tail(a.Logs()))
		}
		measure(t, "libvirtd restarted → agent ready again", time.Since(restarted).Round(10*time.Millisecond))
		measure(t, "libvirtd SIGKILL → agent ready again (incl. restart by the test)", time.Since(killed).Round(10*time.Millisecond))
		if p := qemuPID(vm.Id); p != pid {
			t.Fatalf("QEMU changed across the libvirtd restart: %d → %d", pid, p)
		}
		v, _ := e.waitVM(c, vm.Id, waitTimeout, "running, same boot", running(""))
		if v.Status.BootId != boot {
			t.Fatalf("boot id changed across the libvirtd restart: %s → %s", boot, v.Status.BootId)
		}
		// Events flow again: a QEMU kill is repaired.
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		e.waitVM(c, vm.Id, bootTimeout, "restarted after a kill following the reconnect", running(boot))
		measure(t, "QEMU SIGKILL after libvirtd reconnect → RUNNING with a new boot id", time.Since(start).Round(10*time.Millisecond))
		if n := countDomains(t, fh, vm.Id); n != 1 {
			t.Fatalf("%d domains for the VM, want 1", n)
		}
	})
}
