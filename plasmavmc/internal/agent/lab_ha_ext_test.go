package agent_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
	"plasmacloud.dev/plasmavmc/internal/state"
	"plasmacloud.dev/plasmavmc/internal/storage"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// defineGuest defines and starts the tiny guest (kernel boot, no disk) as VM id with
// labels, on the lab libvirtd, and waits for QEMU to run.
func (l *lab) defineGuest(id, name string, labels map[string]string) {
	l.t.Helper()
	l.ids = append(l.ids, id)
	images := filepath.Join(l.pools[storage.PoolLocal], "images")
	if err := l.drv.Define(l.t.Context(), driver.Spec{ID: id, Name: name, Generation: 1, VCPUs: 1, MemoryMiB: 96,
		Labels: labels, Kernel: filepath.Join(images, "vmlinux"), Initrd: filepath.Join(images, "initrd"),
		Cmdline: guestlab.Cmdline}); err != nil {
		l.t.Fatal(err)
	}
	if err := l.drv.Start(l.t.Context(), id); err != nil {
		l.t.Fatal(err)
	}
	l.waitDomain(id, func(d driver.Domain) bool { return d.Running() })
}

// TestWatchdogLab runs the real watchdog process against the lab libvirtd: pets keep it
// quiet; when they stop, it destroys the host's running HA domain (and only that: a
// non-HA domain of the host and an HA domain of another host keep running) as soon as
// the last pet's validity runs out, and records the fence.
func TestWatchdogLab(t *testing.T) {
	l := newLab(t)
	bin := harness.Binary(t, agentPkg)
	dir := shortDir(t)
	const host = "lab-wd"
	cmd := exec.Command(bin, "watchdog", "--state-dir", dir, "--libvirt-socket", l.sock, "--host-name", host)
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, 10*time.Second, "watchdog answering", func() bool { _, err := wdStatus(dir); return err == nil })

	haID, plainID, otherID := newID(), newID(), newID()
	l.defineGuest(haID, "wd-ha", map[string]string{agent.HostLabel: host, state.LabelEpoch: "1", state.LabelFailover: "true"})
	l.defineGuest(plainID, "wd-plain", map[string]string{agent.HostLabel: host, state.LabelEpoch: "1"})
	l.defineGuest(otherID, "wd-other", map[string]string{agent.HostLabel: "another-host", state.LabelEpoch: "1", state.LabelFailover: "true"})

	for range 10 {
		wdPet(t, dir, 1500*time.Millisecond)
		time.Sleep(300 * time.Millisecond)
	}
	for _, id := range []string{haID, plainID, otherID} {
		if d, _ := l.domain(id); !d.Running() {
			t.Fatalf("domain %s stopped while the watchdog was petted", id)
		}
	}
	d0, _ := l.domain(haID)
	wdPet(t, dir, time.Second)
	deadline := time.Now().Add(time.Second)
	qemuDead := waitFor(t, 30*time.Second, "HA domain's QEMU dead", func() bool { return !processAlive(d0.PID) })
	l.waitDomain(haID, func(d driver.Domain) bool { return !d.Running() })
	t.Logf("MEASURE watchdog fence (real libvirtd): HA domain's QEMU dead %v, libvirt reports it shut off %v after the last pet's validity ran out",
		(qemuDead - time.Second).Round(time.Millisecond), time.Since(deadline).Round(time.Millisecond))
	if time.Now().Before(deadline) {
		t.Fatal("fenced before the validity ran out")
	}
	for _, id := range []string{plainID, otherID} {
		if d, _ := l.domain(id); !d.Running() {
			t.Fatalf("domain %s destroyed by the watchdog", id)
		}
	}
	var recs []agent.FenceRecord
	waitFor(t, 10*time.Second, "fence recorded", func() bool {
		recs, _ = agent.ReadFenceRecords(dir)
		return len(recs) == 1
	})
	if recs[0].By != "watchdog" || !slices.Equal(recs[0].Destroyed, []string{haID}) {
		t.Fatalf("fence record: %+v", recs[0])
	}
	t.Logf("fence record: %+v", recs[0])
	if st, _ := wdStatus(dir); st.State != "idle" || st.Fences != 1 {
		t.Fatalf("watchdog after the fence: %+v", st)
	}
	// It waits for pets again.
	if st := wdPet(t, dir, 5*time.Second); st.State != "armed" {
		t.Fatalf("watchdog not re-armed: %+v", st)
	}
}

// TestEpochLab checks the epoch rule on real domains: the agent stamps the epoch and the
// failover mark into the domain's metadata; a newer epoch assigned to this host destroys
// the running copy and boots afresh; a domain coming in by migration is left alone.
func TestEpochLab(t *testing.T) {
	l := newLab(t)
	const host = "lab-epoch"
	cfg := l.config(host)
	l.runAgent(cfg)
	waitReady(t, "http://"+cfg.Listener.Addr().String())

	vm := l.newVM("epoch", host, "", &pb.HAPolicy{Failover: true})
	vm.Epoch = 1
	l.create(vm)
	st := l.waitStatus(vm.Id, bootTimeout, "RUNNING at epoch 1", runningAt(1))
	d0, _ := l.domain(vm.Id)
	if d0.Meta.Labels[state.LabelEpoch] != "1" || d0.Meta.Labels[state.LabelFailover] != "true" || d0.Meta.Labels[agent.HostLabel] != host {
		t.Fatalf("domain metadata: %+v", d0.Meta)
	}

	vm.Epoch = 2
	l.update(vm, func(*pb.VM) {})
	t0 := time.Now()
	st2 := l.waitStatus(vm.Id, bootTimeout, "RUNNING at epoch 2, new boot", func(s *pb.VMStatus) bool {
		return runningAt(2)(s) && s.BootId != st.BootId
	})
	d1, _ := l.domain(vm.Id)
	t.Logf("MEASURE newer epoch → stale copy destroyed and the VM booted afresh (heartbeat): %v", time.Since(t0).Round(time.Millisecond))
	if d1.PID == d0.PID || d1.Meta.Labels[state.LabelEpoch] != "2" || st2.Restarts != st.Restarts {
		t.Fatalf("after the epoch change: pid %d → %d, labels %v, restarts %d → %d", d0.PID, d1.PID, d1.Meta.Labels,
			st.Restarts, st2.Restarts)
	}

	// Incoming: another host's domain (defined, as the target sees it before the switch)
	// with this host holding the record's copy: left alone.
	in := l.newVM("incoming", "lab-source", "", &pb.HAPolicy{Failover: true})
	in.Epoch = 3
	in.Migration = &pb.Migration{OperationId: newID(), SourceHost: "lab-source", TargetHost: host, SourceEpoch: 3}
	l.ids = append(l.ids, in.Id)
	images := filepath.Join(l.pools[storage.PoolLocal], "images")
	if err := l.drv.Define(t.Context(), driver.Spec{ID: in.Id, Name: "incoming", Generation: 1, VCPUs: 1, MemoryMiB: 64,
		Labels: map[string]string{agent.HostLabel: "lab-source", state.LabelEpoch: "3", state.LabelFailover: "true",
			agent.LabelMigrationTarget: host},
		Kernel: filepath.Join(images, "vmlinux")}); err != nil {
		t.Fatal(err)
	}
	l.put(in, "lab-source", host)
	time.Sleep(3 * time.Second)
	if d, ok := l.domain(in.Id); !ok || d.Meta.Labels[state.LabelEpoch] != "3" || d.Running() {
		t.Fatalf("incoming domain touched: %+v %v", d, ok)
	}
	if st, _ := l.status(t.Context(), in.Id); st != nil {
		t.Fatalf("status written for an incoming VM: %v", st)
	}
}

// processAlive reports whether pid runs (not gone, not a zombie waiting to be reaped).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}
