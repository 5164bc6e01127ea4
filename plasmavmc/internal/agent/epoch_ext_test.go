package agent_test

import (
	"os"
	"slices"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestEpochRule drives an agent of fake host "a" (fake hypervisor, real ChainFire) with
// the records the controller writes and checks the split-brain rule: domains are stamped
// with their epoch (and failover mark); a newer epoch destroys the running copy and
// starts afresh; a stale copy (older epoch, or the record names another host) is
// destroyed; an incoming migration's domain is left alone and no status is written;
// after the switch the domain is adopted (restamped, same boot, restarts carried over).
func TestEpochRule(t *testing.T) {
	l, fnet := newFakeLab(t, 1, chainfiretest.Options{})
	ha := l.fakeHost(fnet, "a")
	cfg := l.fakeConfig(ha)
	l.runAgent(cfg)
	waitReady(t, "http://"+cfg.Listener.Addr().String())
	const short = 20 * time.Second

	vm := l.fakeVM("web", "a", true)
	l.create(vm)
	st := l.waitStatus(vm.Id, short, "RUNNING at epoch 1", runningAt(1))
	t.Run("stamped", func(t *testing.T) {
		d, ok := ha.Domain(vm.Id)
		if !ok || d.Meta.Labels[state.LabelEpoch] != "1" || d.Meta.Labels[state.LabelFailover] != "true" ||
			d.Meta.Labels[agent.HostLabel] != "a" {
			t.Fatalf("domain: %+v %v", d, ok)
		}
		h := l.hostRecord("a")
		if h.Host.MigrationUri != "fake://a" || h.Host.StateDir != ha.stateDir || h.Host.RejoinedInstance == "" ||
			h.Host.RejoinedInstance != h.AliveInstance {
			t.Fatalf("host record: %v (alive %q)", h.Host, h.AliveInstance)
		}
	})

	t.Run("newer-epoch-restarts-fresh", func(t *testing.T) {
		boot0 := ha.Boot(vm.Id)
		vm.Epoch, vm.Generation = 2, vm.Generation+1
		l.put(vm, "a")
		st2 := l.waitStatus(vm.Id, short, "RUNNING at epoch 2", runningAt(2))
		if st2.BootId == st.BootId || ha.Boot(vm.Id) == boot0 {
			t.Fatalf("not started afresh: boot %s → %s", st.BootId, st2.BootId)
		}
		if d, _ := ha.Domain(vm.Id); d.Meta.Labels[state.LabelEpoch] != "2" {
			t.Fatalf("domain epoch label: %v", d.Meta.Labels)
		}
		calls := callsOf(ha, vm.Id)
		if !slices.Contains(calls, "destroyed "+vm.Id) || !slices.Contains(calls, "undefine "+vm.Id) {
			t.Fatalf("stale copy not destroyed and undefined: %v", calls)
		}
		st = st2
	})

	t.Run("stale-copies", func(t *testing.T) {
		// A copy left at an older epoch by an agent of this host while the VM (now at
		// epoch 3) was elsewhere: destroyed, then started afresh.
		v := l.fakeVM("old", "a", true)
		v.Epoch = 3
		ha.Put(v.Id, map[string]string{agent.HostLabel: "a", state.LabelEpoch: "1", state.LabelFailover: "true"}, true)
		staleBoot := ha.Boot(v.Id)
		l.create(v)
		st := l.waitStatus(v.Id, short, "RUNNING at epoch 3", runningAt(3))
		if st.BootId == staleBoot {
			t.Fatalf("stale copy kept running (boot %s)", staleBoot)
		}
		// A copy whose record names another host (an assignment copy without a
		// migration): destroyed, nothing started, no status.
		o := l.fakeVM("other", "b", false)
		ha.Put(o.Id, map[string]string{agent.HostLabel: "a", state.LabelEpoch: "1"}, true)
		l.put(o, "a")
		waitFor(t, short, "copy of a VM placed on b destroyed", func() bool {
			d, ok := ha.Domain(o.Id)
			return !ok || !d.Running()
		})
		time.Sleep(1500 * time.Millisecond)
		if d, ok := ha.Domain(o.Id); ok && d.Running() {
			t.Fatalf("started a VM whose record names b: %+v", d)
		}
		if st, _ := l.status(t.Context(), o.Id); st != nil {
			t.Fatalf("status written for a VM placed on b: %v", st)
		}
	})

	t.Run("incoming-then-adopted", func(t *testing.T) {
		// VM m runs on b at epoch 4; a migration to a is in flight: a holds a copy of
		// the record and b's domain arrives (paused, b's labels).
		m := l.fakeVM("mover", "b", true)
		m.Epoch = 4
		m.Migration = &pb.Migration{OperationId: newID(), SourceHost: "b", TargetHost: "a", SourceEpoch: 4}
		l.put(m, "b", "a")
		// b's agent reported the VM before (restarts 2, its boot).
		ha.Put(m.Id, map[string]string{agent.HostLabel: "b", state.LabelEpoch: "4", state.LabelFailover: "true",
			agent.LabelMigrationTarget: "a"}, true)
		boot := ha.Boot(m.Id)
		if err := l.st.PutStatus(t.Context(), "b", m.Id, &pb.VMStatus{State: pb.VMState_VM_STATE_MIGRATING, Host: "b",
			BootId: boot, Restarts: 2, Epoch: 4, ObservedGeneration: 1}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, short, "state directory prepared for the incoming VM", func() bool {
			_, err := os.Stat(ha.Paths(m.Id).Dir)
			return err == nil
		})
		time.Sleep(2500 * time.Millisecond) // a few reconciles and a sweep
		if d, ok := ha.Domain(m.Id); !ok || !d.Running() || ha.Boot(m.Id) != boot {
			t.Fatalf("incoming domain touched: %+v %v", d, ok)
		}
		if st, _ := l.status(t.Context(), m.Id); st.GetHost() != "b" || st.GetState() != pb.VMState_VM_STATE_MIGRATING {
			t.Fatalf("status written by the target during the migration: %v", st)
		}
		if c := callsOf(ha, m.Id); len(c) != 0 {
			t.Fatalf("target acted on the incoming domain: %v", c)
		}

		// The switch (what CompleteMigration writes): a owns it at epoch 5.
		m.Host, m.Epoch, m.Generation = "a", 5, m.Generation+1
		l.put(m, "a")
		if _, err := l.c.Delete(t.Context(), state.AssignedKey("b", m.Id)); err != nil {
			t.Fatal(err)
		}
		st := l.waitStatus(m.Id, short, "RUNNING at epoch 5 from a", func(st *pb.VMStatus) bool {
			return runningAt(5)(st) && st.Host == "a"
		})
		if st.BootId != boot || st.Restarts != 2 {
			t.Fatalf("adoption restarted the VM or lost its count: boot %s → %s, restarts %d", boot, st.BootId, st.Restarts)
		}
		d, _ := ha.Domain(m.Id)
		if d.Meta.Labels[state.LabelEpoch] != "5" || d.Meta.Labels[agent.HostLabel] != "a" ||
			d.Meta.Labels[agent.LabelMigrationTarget] != "" || ha.Boot(m.Id) != boot {
			t.Fatalf("domain after adoption: %+v", d)
		}
		if c := callsOf(ha, m.Id); slices.Contains(c, "start "+m.Id) || slices.Contains(c, "destroyed "+m.Id) {
			t.Fatalf("adoption started or destroyed the domain: %v", c)
		}
	})

	t.Run("unassigned-domain-not-ours-left-alone", func(t *testing.T) {
		// A domain coming in for a migration whose copy has not reached this agent yet
		// carries the source's host label: the no-orphan sweep leaves it alone.
		id := newID()
		ha.Put(id, map[string]string{agent.HostLabel: "b", state.LabelEpoch: "7", state.LabelFailover: "true",
			agent.LabelMigrationTarget: "a"}, true)
		time.Sleep(3 * time.Second) // > OrphanSweep
		if d, ok := ha.Domain(id); !ok || !d.Running() {
			t.Fatalf("sweep destroyed a domain coming in: %+v %v", d, ok)
		}
		// One labelled with this host and not assigned is an orphan: removed.
		orphan := newID()
		ha.Put(orphan, map[string]string{agent.HostLabel: "a", state.LabelEpoch: "1"}, true)
		waitFor(t, 10*time.Second, "orphan removed", func() bool { _, ok := ha.Domain(orphan); return !ok })
	})
}
