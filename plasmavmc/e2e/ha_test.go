package e2e

import (
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// The acceptance tests of issue 7 (see docs/plasmavmc/resilience.md for the figures): real
// ChainFire, controllers, agents, fake hosts (one libvirtd each, in their own namespaces
// and cgroup), the tiny guest, and a heartbeat watcher that checks continuously that no VM
// ever heartbeats on two hosts in overlapping windows.

// failoverLimit is the acceptance bound: an HA VM heartbeats again on another host within
// 30 s of its host's power-off.
const failoverLimit = 30 * time.Second

// vmOf fetches the VM or fails.
func (e *env) vmOf(c clients, id string) *pb.VM {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vm, err := get(ctx, c, id)
	if err != nil || vm == nil {
		e.t.Fatalf("get %s: %v (%v)", id, err, vm)
	}
	return vm
}

// waitHeartbeatOn waits until the watcher sees the VM's heartbeat on host after t0 and
// returns it with the time taken since t0.
func waitHeartbeatOn(t testing.TB, w *hbWatch, id, host string, t0 time.Time, limit time.Duration) (hbSeen, time.Duration) {
	t.Helper()
	for time.Since(t0) < limit {
		if h, ok := w.firstOn(id, host, t0); ok {
			return h, h.at.Sub(t0)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("VM %s: no heartbeat on %s within %v of the fault", id, host, limit)
	return hbSeen{}, 0
}

// TestHostPowerOff: the host running an HA VM is powered off (its cgroup killed: libvirtd,
// QEMUs, agent, watchdog at once); the VM heartbeats again on the spare host within 30 s,
// with a new boot id and the next epoch. Repeated, each time powering off the host the VM
// moved to; p50 and max are logged (MEASURE) for docs/plasmavmc/resilience.md. The first
// host also runs a VM with failover off and one with a host-local disk: both become
// HOST_DOWN with the reason.
func TestHostPowerOff(t *testing.T) {
	e := newHAEnv(t, 1)
	c := e.api(0, "")
	w := e.watchHeartbeats()
	fh, _ := e.addHAHost("po0")
	cur, curFH := "po0", fh

	ha := e.create(c, "demo", "ha", haSpec(0))
	noFailover := spec()
	noFailover.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "shared"}}
	nf := e.create(c, "demo", "nofailover", noFailover)
	localSpec := haSpec(0)
	localSpec.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "local"}}
	local := e.create(c, "demo", "localdisk", localSpec)
	for _, id := range []string{ha.Id, nf.Id, local.Id} {
		e.waitVM(c, id, bootTimeout, "running on po0", running(""))
	}

	const reps = 3
	var took []time.Duration
	for rep := 1; rep <= reps; rep++ {
		spare := fmt.Sprintf("po%d", rep)
		e.addHAHost(spare)
		before := e.vmOf(c, ha.Id)
		if before.Host != cur {
			t.Fatalf("rep %d: VM on %q, want %q", rep, before.Host, cur)
		}
		oldBoot := before.Status.BootId
		t0 := time.Now()
		e.powerOff(curFH)
		hb, d := waitHeartbeatOn(t, w, ha.Id, spare, t0, 2*failoverLimit)
		took = append(took, d)
		measure(t, fmt.Sprintf("power-off rep %d: host %s off → heartbeat on %s", rep, cur, spare), d.Round(10*time.Millisecond))
		if hb.boot == oldBoot {
			t.Errorf("rep %d: same boot id %s on the new host: not a restart?", rep, hb.boot)
		}
		if d > failoverLimit {
			t.Errorf("rep %d: failover took %v, acceptance bound %v", rep, d, failoverLimit)
		}
		vm, _ := e.waitVM(c, ha.Id, waitTimeout, "RUNNING on "+spare, func(v *pb.VM) bool {
			return v.Host == spare && running("")(v)
		})
		if vm.Epoch != before.Epoch+1 {
			t.Errorf("rep %d: epoch %d after failover, want %d", rep, vm.Epoch, before.Epoch+1)
		}
		if rep == 1 {
			// The VMs that cannot move wait for their host, saying why.
			v, _ := e.waitVM(c, nf.Id, waitTimeout, "HOST_DOWN", inState(pb.VMState_VM_STATE_HOST_DOWN))
			t.Logf("failover off → %s: %s", v.Status.State, v.Status.Reason)
			if !strings.Contains(strings.ToLower(v.Status.Reason), "failover") {
				t.Errorf("reason %q does not say failover is off", v.Status.Reason)
			}
			v, _ = e.waitVM(c, local.Id, waitTimeout, "HOST_DOWN", inState(pb.VMState_VM_STATE_HOST_DOWN))
			t.Logf("local disk → %s: %s", v.Status.State, v.Status.Reason)
			if !strings.Contains(v.Status.Reason, "local") {
				t.Errorf("reason %q does not name the local pool", v.Status.Reason)
			}
			e.waitHostState(c, cur, pb.HostState_HOST_STATE_FENCED, waitTimeout)
		}
		cur, curFH = spare, e.agents[spare].host
	}
	measure(t, "power-off → heartbeat elsewhere p50", percentile(took, 0.5).Round(10*time.Millisecond))
	measure(t, "power-off → heartbeat elsewhere max", percentile(took, 1).Round(10*time.Millisecond))
	w.checkNoOverlap(t)
}

// failoverAfter injects fault into from, waits for the VM's heartbeat on to and logs
// (MEASURE) the time from the fault and the gap after the VM's last heartbeat on from.
func failoverAfter(t *testing.T, w *hbWatch, id, from, to, what string, fault func()) hbSeen {
	t.Helper()
	t0 := time.Now()
	fault()
	hb, d := waitHeartbeatOn(t, w, id, to, t0, 2*failoverLimit)
	measure(t, what+" → HA VM heartbeat on the other host", d.Round(10*time.Millisecond))
	last, _ := w.lastOn(id, from)
	measure(t, what+": last heartbeat on its host → first elsewhere", hb.at.Sub(last.at).Round(10*time.Millisecond))
	return hb
}

// TestHostIsolated: the agent of the host running an HA VM and a non-HA VM is cut from
// ChainFire. The HA VM stops there (self-fence) before it starts on the other host — no
// overlap, checked on the heartbeats — while the non-HA VM keeps running. After healing,
// the host rejoins and there is still exactly one copy of each VM.
func TestHostIsolated(t *testing.T) {
	e := newHAEnv(t, 1)
	c := e.api(0, "")
	w := e.watchHeartbeats()
	fhA, _ := e.addHAHost("iso-a")
	ha := e.create(c, "demo", "ha", haSpec(0))
	plain := spec()
	plain.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "shared"}}
	nonHA := e.create(c, "demo", "plain", plain)
	e.waitVM(c, ha.Id, bootTimeout, "running", running(""))
	e.waitVM(c, nonHA.Id, bootTimeout, "running", running(""))
	fhB, _ := e.addHAHost("iso-b")

	hb := failoverAfter(t, w, ha.Id, "iso-a", "iso-b", "isolated host", func() { e.isolate(fhA) })
	// The non-HA VM was never moved and still beats on the isolated host.
	h, _ := waitHeartbeatOn(t, w, nonHA.Id, "iso-a", hb.at, 10*time.Second)
	t.Logf("non-HA VM still beating on iso-a after the failover: seq %d", h.seq)

	e.heal(fhA)
	e.waitHostState(c, "iso-a", pb.HostState_HOST_STATE_UP, 2*waitTimeout)
	e.waitVM(c, nonHA.Id, waitTimeout, "RUNNING on iso-a after the heal", func(v *pb.VM) bool {
		return v.Host == "iso-a" && v.GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING
	})
	time.Sleep(3 * time.Second) // a stale copy, if any, would have been started by now
	if on := runningOn(t, ha.Id, fhA, fhB); len(on) != 1 || on[0] != fhB.name {
		t.Errorf("after the heal the HA VM runs on %v, want only %s", on, fhB.name)
	}
	if on := runningOn(t, nonHA.Id, fhA, fhB); len(on) != 1 || on[0] != fhA.name {
		t.Errorf("after the heal the non-HA VM runs on %v, want only %s", on, fhA.name)
	}
	w.checkNoOverlap(t)
}

// TestAgentPaused: the agent of the host running an HA VM is SIGSTOPped. Its watchdog
// (a separate process) fences the VM when the pets stop, before the controller restarts it
// elsewhere; after SIGCONT the agent rejoins and there is exactly one copy.
func TestAgentPaused(t *testing.T) {
	e := newHAEnv(t, 1)
	c := e.api(0, "")
	w := e.watchHeartbeats()
	fhA, aa := e.addHAHost("pause-a")
	ha := e.create(c, "demo", "ha", haSpec(0))
	e.waitVM(c, ha.Id, bootTimeout, "running", running(""))
	fhB, _ := e.addHAHost("pause-b")

	failoverAfter(t, w, ha.Id, "pause-a", "pause-b", "agent SIGSTOP", func() {
		if err := aa.Stop(); err != nil {
			t.Fatal(err)
		}
	})
	if err := aa.Cont(); err != nil {
		t.Fatal(err)
	}
	e.waitHostState(c, "pause-a", pb.HostState_HOST_STATE_UP, 2*waitTimeout)
	time.Sleep(3 * time.Second)
	if on := runningOn(t, ha.Id, fhA, fhB); len(on) != 1 || on[0] != fhB.name {
		t.Errorf("after SIGCONT the HA VM runs on %v, want only %s", on, fhB.name)
	}
	w.checkNoOverlap(t)
}

// migrate asks for a live migration and waits for its operation.
func (e *env) migrate(c clients, id, to string, req *pb.MigrateVMRequest) *pb.Operation {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if req == nil {
		req = &pb.MigrateVMRequest{}
	}
	req.Id, req.ToHost = id, to
	resp, err := c.vm.MigrateVM(ctx, connect.NewRequest(req))
	if err != nil {
		e.t.Fatalf("migrate %s to %s: %v", id, to, err)
	}
	return resp.Msg.Operation
}

// TestLiveMigration: an idle guest and a guest dirtying memory move between hosts with
// their heartbeat seq continuing under the same boot id (downtime and total time from the
// operation); a migration whose destination is powered off midway fails with the reason
// and the VM runs on at the source; a drain moves three VMs away.
func TestLiveMigration(t *testing.T) {
	e := newHAEnv(t, 1)
	c := e.api(0, "")
	w := e.watchHeartbeats()
	e.addHAHost("lm-a")
	idle := e.create(c, "demo", "idle", haSpec(0))
	// Dirtying 32 MiB needs room (a tmpfs of that size in the guest): 96 MiB panics.
	dirtySpec := haSpec(0, "plasma.dirty=32", "loglevel=4")
	dirtySpec.MemoryMib = 256
	dirty := e.create(c, "demo", "dirty", dirtySpec)
	for _, id := range []string{idle.Id, dirty.Id} {
		e.waitVM(c, id, bootTimeout, "running", running(""))
	}
	e.addHAHost("lm-b")

	move := func(t *testing.T, vm *pb.VM, from, to string, req *pb.MigrateVMRequest) {
		before := e.vmOf(c, vm.Id)
		lastBefore, _ := w.lastOn(vm.Id, from)
		op := e.migrate(c, vm.Id, to, req)
		op = e.waitOp(c, op.Id, 3*waitTimeout)
		if op.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("migration %s: %v: %s", op.Id, op.State, op.Reason)
		}
		m := op.GetMigration()
		measure(t, fmt.Sprintf("migrate %s total", vm.Name), time.Duration(m.GetTotalMs())*time.Millisecond)
		measure(t, fmt.Sprintf("migrate %s downtime", vm.Name), time.Duration(m.GetDowntimeMs())*time.Millisecond)
		t.Logf("migration figures: %v", m)
		after, _ := e.waitVM(c, vm.Id, waitTimeout, "RUNNING on "+to, func(v *pb.VM) bool {
			return v.Host == to && v.Migration == nil && running("")(v)
		})
		if after.Status.BootId != before.Status.BootId {
			t.Errorf("boot id changed across the migration: %s → %s", before.Status.BootId, after.Status.BootId)
		}
		if after.Epoch != before.Epoch+1 {
			t.Errorf("epoch %d after the migration, want %d", after.Epoch, before.Epoch+1)
		}
		hb, _ := waitHeartbeatOn(t, w, vm.Id, to, lastBefore.at, waitTimeout)
		if hb.boot != lastBefore.boot || hb.seq <= lastBefore.seq {
			t.Errorf("heartbeat on %s: boot %s seq %d; before: boot %s seq %d", to, hb.boot, hb.seq, lastBefore.boot, lastBefore.seq)
		}
		// The guest keeps its pace on the destination (one heartbeat a second).
		t1 := time.Now()
		time.Sleep(5 * time.Second)
		if n := w.countOn(vm.Id, to, t1); n < 3 {
			t.Errorf("only %d heartbeats on %s in the 5 s after the migration", n, to)
		}
	}
	t.Run("idle", func(t *testing.T) { move(t, idle, "lm-a", "lm-b", nil) })
	t.Run("idle and back", func(t *testing.T) {
		move(t, idle, "lm-b", "lm-a", nil)
		move(t, idle, "lm-a", "lm-b", nil)
	})
	t.Run("dirtying memory", func(t *testing.T) {
		defer w.checkNoOverlap(t)
		// Five hops, each leaving the guest intact, at QEMU's 300 ms switch-over target and
		// without auto-converge: under TCG (QEMU 7.2) throttling and short targets corrupted
		// a dirtying guest's memory about 1 hop in 10-20 here, this never (0 in 30); see
		// resilience.md.
		ac, downtime := false, int32(300)
		req := func() *pb.MigrateVMRequest { return &pb.MigrateVMRequest{AutoConverge: &ac, MaxDowntimeMs: &downtime} }
		move(t, dirty, "lm-a", "lm-b", req())
		for i := range 2 {
			t.Logf("round trip %d", i+1)
			move(t, dirty, "lm-b", "lm-a", req())
			move(t, dirty, "lm-a", "lm-b", req())
		}
	})

	t.Run("destination powered off midway", func(t *testing.T) {
		fhC, _ := e.addHAHost("lm-c")
		before := e.vmOf(c, idle.Id) // on lm-b
		bw := int64(4)               // MiB/s: ~96 MiB of guest takes long enough to cut
		op := e.migrate(c, idle.Id, "lm-c", &pb.MigrateVMRequest{MaxBandwidthMib: &bw})
		deadline := time.Now().Add(waitTimeout)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := c.op.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: op.Id}))
			cancel()
			if err == nil && resp.Msg.Operation.GetMigration().GetDataProcessedBytes() > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("migration made no progress: %v %v", resp, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		e.powerOff(fhC)
		op = e.waitOp(c, op.Id, 2*waitTimeout)
		if op.State != pb.OperationState_OPERATION_STATE_FAILED || op.Reason == "" {
			t.Fatalf("migration to a dead host: %v %q, want FAILED with a reason", op.State, op.Reason)
		}
		t.Logf("failed migration: %s", op.Reason)
		after, _ := e.waitVM(c, idle.Id, waitTimeout, "RUNNING on lm-b", func(v *pb.VM) bool {
			return v.Host == "lm-b" && v.Migration == nil && running("")(v)
		})
		if after.Status.BootId != before.Status.BootId || after.Epoch != before.Epoch {
			t.Errorf("after the failed migration: boot %s epoch %d, want %s %d", after.Status.BootId, after.Epoch, before.Status.BootId, before.Epoch)
		}
		last, _ := w.lastOn(idle.Id, "lm-b")
		if _, ok := w.firstOn(idle.Id, "lm-b", last.at.Add(-time.Millisecond)); !ok || time.Since(last.at) > 10*time.Second {
			t.Errorf("heartbeat on the source stopped after the failed migration (last %v)", last.at)
		}
	})

	t.Run("drain three VMs", func(t *testing.T) {
		// Idle guests only: the dirtying guest has had its test, and repeated migrations of
		// a dirtying guest under TCG are what corrupts its memory here (resilience.md).
		if op := e.deleteAndWait(c, dirty.Id); op.GetState() != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("delete %s: %v %s", dirty.Id, op.GetState(), op.GetReason())
		}
		second := e.create(c, "demo", "second", haSpec(0))
		third := e.create(c, "demo", "third", haSpec(0))
		e.waitVM(c, second.Id, bootTimeout, "running", running(""))
		e.waitVM(c, third.Id, bootTimeout, "running", running(""))
		e.addHAHost("lm-d")
		// Every VM onto lm-b first, so it holds three.
		for _, id := range []string{idle.Id, second.Id, third.Id} {
			if v := e.vmOf(c, id); v.Host != "lm-b" {
				op := e.waitOp(c, e.migrate(c, id, "lm-b", nil).Id, 3*waitTimeout)
				if op.State != pb.OperationState_OPERATION_STATE_DONE {
					t.Fatalf("gathering %s on lm-b: %s", id, op.Reason)
				}
			}
		}
		out, err := e.cli("", "host", "drain", "lm-b", "--wait")
		if err != nil {
			t.Fatalf("host drain: %v\n%s", err, out)
		}
		t.Logf("drain: %s", out)
		for _, id := range []string{idle.Id, second.Id, third.Id} {
			e.waitVM(c, id, waitTimeout, "RUNNING away from lm-b", func(v *pb.VM) bool {
				return v.Host != "lm-b" && v.Host != "" && running("")(v)
			})
		}
		if out, err := e.cli("", "host", "undrain", "lm-b"); err != nil {
			t.Fatalf("host undrain: %v\n%s", err, out)
		}
	})
	w.checkNoOverlap(t)
}

// TestControllerLeaderKilledDuringFailover: three HA VMs on a host that is powered off; the
// controller leader is SIGKILLed as soon as the failover starts; the next leader finishes
// it: every VM runs on the spare host, moved exactly once (epoch +1, one vm.failover
// operation each).
func TestControllerLeaderKilledDuringFailover(t *testing.T) {
	// One VM per health interval: the leader is killed with the failover half done.
	e := newHAEnv(t, 2, "--max-failovers-per-pass", "1")
	c0 := e.api(0, "")
	w := e.watchHeartbeats()
	fhA, _ := e.addHAHost("cl-a")
	var vms []*pb.VM
	for i := range 3 {
		vms = append(vms, e.create(c0, "demo", fmt.Sprintf("ha%d", i), haSpec(int32(i))))
	}
	epochs := map[string]int64{}
	for _, vm := range vms {
		v, _ := e.waitVM(c0, vm.Id, bootTimeout, "running", running(""))
		epochs[vm.Id] = v.Epoch
	}
	e.addHAHost("cl-b")

	leader := e.leaderIndex()
	other := 1 - leader
	c := e.api(other, "")
	e.powerOff(fhA)
	// Kill the leader when the first VM has been moved (the failover is under way).
	deadline := time.Now().Add(2 * failoverLimit)
	for {
		moved := 0
		for _, vm := range vms {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			v, err := get(ctx, c, vm.Id)
			cancel()
			if err == nil && v != nil && v.Host == "cl-b" {
				moved++
			}
		}
		if moved > 0 {
			t.Logf("killing leader pvmc%d with %d of 3 VMs moved", leader+1, moved)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("failover did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := e.ctrls[leader].Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		v, _ := e.waitVM(c, vm.Id, 2*failoverLimit, "RUNNING on cl-b", func(v *pb.VM) bool {
			return v.Host == "cl-b" && running("")(v)
		})
		if v.Epoch != epochs[vm.Id]+1 {
			t.Errorf("VM %s: epoch %d, want %d (moved exactly once)", vm.Name, v.Epoch, epochs[vm.Id]+1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := c.op.ListOperations(ctx, connect.NewRequest(&pb.ListOperationsRequest{VmId: vm.Id}))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, op := range resp.Msg.Operations {
			if op.Kind == "vm.failover" {
				n++
				if op.State != pb.OperationState_OPERATION_STATE_DONE {
					t.Errorf("VM %s: failover operation %s: %v %s", vm.Name, op.Id, op.State, op.Reason)
				}
			}
		}
		if n != 1 {
			t.Errorf("VM %s: %d vm.failover operations, want exactly 1", vm.Name, n)
		}
	}
	w.checkNoOverlap(t)
}

// leaderIndex is the index of the controller holding /plasmavmc/leader.
func (e *env) leaderIndex() int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := e.cfc.Get(ctx, state.KeyLeader)
	if err != nil || len(resp.Kvs) == 0 {
		e.t.Fatalf("no controller leader: %v", err)
	}
	id := string(resp.Kvs[0].Value)
	for i := range e.ctrls {
		if id == fmt.Sprintf("pvmc%d", i+1) {
			return i
		}
	}
	e.t.Fatalf("leader %q is none of the controllers", id)
	return -1
}
