package agent_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// requestMigration writes what the controller's MigrateVM writes (state's
// BuildMigrationStart): the migration on the record and both assigned copies, the
// target's reservation, status MIGRATING and a RUNNING vm.migrate operation, whose id
// it returns.
func (l *lab) requestMigration(id, target string) string {
	l.t.Helper()
	ctx := l.t.Context()
	rec, err := l.st.GetVM(ctx, id)
	if err != nil {
		l.t.Fatal(err)
	}
	hr, err := l.st.GetHost(ctx, target)
	if err != nil {
		l.t.Fatal(err)
	}
	vm := state.StoredVM(rec.VM)
	opID := newID()
	vm.Migration = &pb.Migration{OperationId: opID, SourceHost: vm.Host, TargetHost: target, AutoConverge: true,
		TimeoutSeconds: 30, SourceEpoch: vm.Epoch}
	vm.Generation++
	op := &pb.Operation{Id: opID, Kind: state.OpMigrate, VmId: id, Project: vm.Project,
		State: pb.OperationState_OPERATION_STATE_RUNNING, StartTime: timestamppb.Now(),
		Migration: &pb.MigrationProgress{SourceHost: vm.Host, TargetHost: target, Phase: "precopy"}}
	st := &pb.VMStatus{State: pb.VMState_VM_STATE_MIGRATING, Host: vm.Host, Epoch: vm.Epoch,
		Reason: "migrating to " + target}
	t := state.BuildMigrationStart(vm, rec.ModRevision,
		state.Ledger{Host: target, Rev: hr.AllocRev, Alloc: state.Add(hr.Host.Allocated, state.VMResources(vm))}, st, op)
	if r, err := l.st.Commit(ctx, t); err != nil || !r.Succeeded {
		l.t.Fatalf("migration start txn: %v", err)
	}
	return opID
}

// finalizeMigration is the controller's housekeeping after the operation ended: done →
// migration cleared (BuildMigrationDone); failed → cleared and the target's copy removed
// (BuildMigrationAbort).
func (l *lab) finalizeMigration(id string, done bool) {
	l.t.Helper()
	ctx := l.t.Context()
	rec, err := l.st.GetVM(ctx, id)
	if err != nil {
		l.t.Fatal(err)
	}
	m := rec.VM.GetMigration()
	var t state.Txn
	if done {
		hr, _ := l.st.GetHost(ctx, m.SourceHost)
		t = state.BuildMigrationDone(rec.VM, rec.ModRevision, state.Ledger{Host: m.SourceHost, Rev: hr.AllocRev,
			Alloc: state.Sub(hr.Host.Allocated, state.VMResources(rec.VM))})
	} else {
		hr, _ := l.st.GetHost(ctx, m.TargetHost)
		t = state.BuildMigrationAbort(rec.VM, rec.ModRevision, state.Ledger{Host: m.TargetHost, Rev: hr.AllocRev,
			Alloc: state.Sub(hr.Host.Allocated, state.VMResources(rec.VM))})
	}
	if r, err := l.st.Commit(ctx, t); err != nil || !r.Succeeded {
		l.t.Fatalf("migration finalization txn: %v", err)
	}
}

// TestMigration runs the agents of two fake hosts (fake hypervisors that migrate between
// each other, real ChainFire) through live migrations as the controller requests them:
// a success (progress in the operation, switch txn, the target adopts the domain with
// the same boot and reports the new epoch, the source keeps nothing), a failure (FAILED
// with the reason, the VM keeps running on the source), a source agent killed during
// the migration (a new agent fails the operation when no job runs, waits while one
// does), and a switch that happened in libvirt while the source agent was down (the new
// agent completes it).
func TestMigration(t *testing.T) {
	l, fnet := newFakeLab(t, 1, chainfiretest.Options{})
	ha, hb := l.fakeHost(fnet, "a"), l.fakeHost(fnet, "b")
	cfgA, cfgB := l.fakeConfig(ha), l.fakeConfig(hb)
	l.runAgent(cfgA)
	stopB := l.runAgent(cfgB)
	waitReady(t, "http://"+cfgA.Listener.Addr().String())
	waitReady(t, "http://"+cfgB.Listener.Addr().String())
	const short = 20 * time.Second
	ctx := t.Context()

	vm := l.fakeVM("mover", "a", true)
	l.create(vm)
	st0 := l.waitStatus(vm.Id, short, "running on a", runningAt(1))

	t.Run("success", func(t *testing.T) {
		release := make(chan struct{})
		ha.mu.Lock()
		ha.migrate = func(ctx context.Context, id string) error {
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		ha.mu.Unlock()
		defer func() { ha.mu.Lock(); ha.migrate = nil; ha.mu.Unlock() }()
		op := l.requestMigration(vm.Id, "b")
		// While it runs: the source reports MIGRATING, progress reaches the operation,
		// the target prepared the VM's directory and left the incoming domain alone.
		l.waitStatus(vm.Id, short, "MIGRATING from a", func(st *pb.VMStatus) bool {
			return st.State == pb.VMState_VM_STATE_MIGRATING && st.Host == "a" && st.Heartbeat.GetHealthy()
		})
		waitFor(t, short, "progress in the operation", func() bool {
			o, _, err := l.st.GetOperation(ctx, op)
			return err == nil && o.GetMigration().GetDataProcessedBytes() > 0 && o.GetMigration().GetSourceHost() == "a"
		})
		if _, err := os.Stat(hb.Paths(vm.Id).Dir); err != nil {
			t.Fatalf("target's VM directory: %v", err)
		}
		if d, ok := hb.Domain(vm.Id); !ok || d.Meta.Labels[agent.LabelMigrationTarget] != "b" {
			t.Fatalf("incoming domain on b: %+v %v", d, ok)
		}
		close(release)
		o := l.waitOp(op)
		if o.State != pb.OperationState_OPERATION_STATE_DONE || o.Migration.GetPhase() != "done" || o.Migration.GetDowntimeMs() != 7 ||
			o.Migration.GetTotalMs() <= 0 || o.Migration.GetDataTotalBytes() == 0 || !o.Migration.GetAutoConvergeUsed() {
			t.Fatalf("operation: %v", o)
		}
		rec, err := l.st.GetVM(ctx, vm.Id)
		if err != nil || rec.VM.Host != "b" || rec.VM.Epoch != 2 || rec.VM.Migration == nil {
			t.Fatalf("record after the switch: %v %v", rec, err)
		}
		st := l.waitStatus(vm.Id, short, "RUNNING on b at epoch 2", func(st *pb.VMStatus) bool {
			return runningAt(2)(st) && st.Host == "b"
		})
		if st.BootId != st0.BootId || st.Restarts != st0.Restarts {
			t.Fatalf("migration looked like a restart: boot %s → %s, restarts %d → %d", st0.BootId, st.BootId, st0.Restarts, st.Restarts)
		}
		if d, _ := hb.Domain(vm.Id); d.Meta.Labels[state.LabelEpoch] != "2" || d.Meta.Labels[agent.HostLabel] != "b" {
			t.Fatalf("target domain: %+v", d)
		}
		if _, ok := ha.Domain(vm.Id); ok {
			t.Fatal("source still has the domain")
		}
		if resp, _ := l.c.Get(ctx, state.AssignedKey("a", vm.Id)); len(resp.Kvs) != 0 {
			t.Fatal("source's assignment left")
		}
		if c := callsOf(hb, vm.Id); slices.Contains(c, "start "+vm.Id) {
			t.Fatalf("target started the VM: %v", c)
		}
		l.finalizeMigration(vm.Id, true)
		time.Sleep(1500 * time.Millisecond)
		if d, _ := hb.Domain(vm.Id); !d.Running() || hb.Boot(vm.Id) != st0.BootId {
			t.Fatalf("target after the controller cleared the migration: %+v", d)
		}
		time.Sleep(2 * time.Second) // a's sweep: nothing to remove, nothing to start
		if _, ok := ha.Domain(vm.Id); ok {
			t.Fatal("source defined the VM again")
		}
	})

	t.Run("failure-keeps-source", func(t *testing.T) {
		hb.mu.Lock()
		hb.migrate = func(context.Context, string) error { return errors.New("destination QEMU exited") }
		hb.mu.Unlock()
		defer func() { hb.mu.Lock(); hb.migrate = nil; hb.mu.Unlock() }()
		before := hb.Boot(vm.Id)
		op := l.requestMigration(vm.Id, "a")
		o := l.waitOp(op)
		if o.State != pb.OperationState_OPERATION_STATE_FAILED || !strings.Contains(o.Reason, "destination QEMU exited") ||
			!strings.Contains(o.Reason, "VM stays on b") || o.Migration.GetPhase() != "failed" {
			t.Fatalf("operation: %v", o)
		}
		if d, _ := hb.Domain(vm.Id); !d.Running() || hb.Boot(vm.Id) != before {
			t.Fatalf("VM not left running on the source: %+v", d)
		}
		if _, ok := ha.Domain(vm.Id); ok {
			t.Fatal("failed incoming domain left on the target")
		}
		l.finalizeMigration(vm.Id, false)
		l.waitStatus(vm.Id, short, "RUNNING on b again", func(st *pb.VMStatus) bool { return runningAt(2)(st) && st.Host == "b" })
	})

	// From here the VM lives on b: migrate it to a with b's agent killed mid-way.
	t.Run("source-agent-restarted", func(t *testing.T) {
		started := make(chan struct{})
		hb.mu.Lock()
		hb.migrate = func(ctx context.Context, id string) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}
		hb.mu.Unlock()
		op := l.requestMigration(vm.Id, "a")
		<-started
		stopB() // the agent dies mid-migration (the fake aborts the job); the marker stays
		hb.mu.Lock()
		hb.migrate = nil
		hb.mu.Unlock()
		if o, _, _ := l.st.GetOperation(ctx, op); o.State != pb.OperationState_OPERATION_STATE_RUNNING {
			t.Fatalf("operation finished by a stopping agent: %v", o)
		}
		hb.SetJob(vm.Id, true) // ... as if libvirtd still ran the job
		stopB = l.runAgent(l.fakeConfig(hb))
		time.Sleep(3 * time.Second)
		if o, _, _ := l.st.GetOperation(ctx, op); o.State != pb.OperationState_OPERATION_STATE_RUNNING {
			t.Fatalf("operation finished while a migration job still runs: %v", o)
		}
		if st, _ := l.status(ctx, vm.Id); st.GetState() != pb.VMState_VM_STATE_MIGRATING {
			t.Fatalf("status while the old job runs: %v", st)
		}
		hb.SetJob(vm.Id, false)
		o := l.waitOp(op)
		if o.State != pb.OperationState_OPERATION_STATE_FAILED || o.Reason != "agent restarted during migration; VM stays on b" {
			t.Fatalf("operation: %v", o)
		}
		if d, _ := hb.Domain(vm.Id); !d.Running() {
			t.Fatal("VM not running on the source")
		}
		l.finalizeMigration(vm.Id, false)
		l.waitStatus(vm.Id, short, "RUNNING on b", func(st *pb.VMStatus) bool { return runningAt(2)(st) && st.Host == "b" })
	})

	t.Run("switched-while-source-agent-down", func(t *testing.T) {
		boot := hb.Boot(vm.Id)
		stopB()
		op := l.requestMigration(vm.Id, "a")
		// libvirt finished a migration the dead agent had started.
		if _, err := hb.Migrate(ctx, vm.Id, driver.MigrateParams{DestURI: "fake://a", DestStateDir: ha.stateDir}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		if d, ok := ha.Domain(vm.Id); !ok || d.Meta.Labels[state.LabelEpoch] != "2" {
			t.Fatalf("target touched the domain before the switch: %+v %v", d, ok)
		}
		stopB = l.runAgent(l.fakeConfig(hb))
		o := l.waitOp(op)
		if o.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("operation: %v", o)
		}
		st := l.waitStatus(vm.Id, short, "RUNNING on a at epoch 3", func(st *pb.VMStatus) bool {
			return runningAt(3)(st) && st.Host == "a"
		})
		if st.BootId != boot || ha.Boot(vm.Id) != boot {
			t.Fatalf("boot %s → %s", boot, st.BootId)
		}
		l.finalizeMigration(vm.Id, true)
	})
}
