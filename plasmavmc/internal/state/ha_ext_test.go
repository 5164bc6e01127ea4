package state_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

func TestHAKeys(t *testing.T) {
	at := time.Unix(0, 1234567890123456789)
	for _, tc := range []struct{ got, want string }{
		{state.HealthKey("h1"), "/plasmavmc/health/h1"},
		{state.MaintenanceKey("h1"), "/plasmavmc/maintenance/h1"},
		{state.HostEventsPrefix(""), "/plasmavmc/hostevents/"},
		{state.HostEventKey("h1", at), "/plasmavmc/hostevents/h1/01234567890123456789"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q want %q", tc.got, tc.want)
		}
	}
	h, ts, ok := state.ParseHostEventKey(state.HostEventKey("h1", at))
	if !ok || h != "h1" || !ts.Equal(at) {
		t.Errorf("ParseHostEventKey: %q %v %v", h, ts, ok)
	}
	a, b := state.FailoverOperationID("vm-1", 1), state.FailoverOperationID("vm-1", 2)
	if a == b || a != state.FailoverOperationID("vm-1", 1) || len(a) != 36 {
		t.Errorf("failover ids %q %q", a, b)
	}
}

func TestMergeHostState(t *testing.T) {
	since := timestamppb.Now()
	for _, tc := range []struct {
		name        string
		stored      pb.HostState
		alive       bool
		health      *pb.HostHealth
		maintenance bool
		want        pb.HostState
		reason      string
	}{
		{"no health, alive", 0, true, nil, false, pb.HostState_HOST_STATE_UP, ""},
		{"no health, dead", 0, false, nil, false, pb.HostState_HOST_STATE_DOWN, "no heartbeat"},
		{"suspect", 0, true, &pb.HostHealth{State: pb.HostState_HOST_STATE_SUSPECT, Reason: "2 keepalives missed", Since: since}, false, pb.HostState_HOST_STATE_SUSPECT, "2 keepalives missed"},
		{"up but lease gone", 0, false, &pb.HostHealth{State: pb.HostState_HOST_STATE_UP}, false, pb.HostState_HOST_STATE_DOWN, "lease expired"},
		{"fenced, alive again", 0, true, &pb.HostHealth{State: pb.HostState_HOST_STATE_FENCED, Reason: "fence delay passed"}, false, pb.HostState_HOST_STATE_FENCED, "fence delay passed"},
		{"maintenance", 0, true, &pb.HostHealth{State: pb.HostState_HOST_STATE_UP}, true, pb.HostState_HOST_STATE_MAINTENANCE, "drained"},
		{"maintenance and down", 0, false, &pb.HostHealth{State: pb.HostState_HOST_STATE_DOWN, Reason: "lease expired"}, true, pb.HostState_HOST_STATE_MAINTENANCE, "drained; health down: lease expired"},
		{"legacy maintenance record", pb.HostState_HOST_STATE_MAINTENANCE, true, nil, false, pb.HostState_HOST_STATE_MAINTENANCE, "drained"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &pb.Host{Name: "h1", State: tc.stored}
			state.MergeHostState(h, tc.alive, tc.health, tc.maintenance)
			if h.State != tc.want || h.StateReason != tc.reason {
				t.Fatalf("got %v %q, want %v %q", h.State, h.StateReason, tc.want, tc.reason)
			}
			if tc.want == pb.HostState_HOST_STATE_MAINTENANCE != h.Maintenance {
				t.Fatalf("maintenance flag %v", h.Maintenance)
			}
		})
	}
}

// place puts vm on host as the scheduler does (epoch 1) and returns its record.
func place(t *testing.T, s *state.Store, vm *pb.VM, host string) *state.VMRecord {
	t.Helper()
	ctx := context.Background()
	op := &pb.Operation{Id: "op-create-" + vm.Id, Kind: state.OpCreate, VmId: vm.Id, State: pb.OperationState_OPERATION_STATE_RUNNING}
	if tr, err := s.Commit(ctx, state.BuildCreate(vm, &pb.VMStatus{State: pb.VMState_VM_STATE_PENDING}, op, "req-"+vm.Id, 0)); err != nil || !tr.Succeeded {
		t.Fatalf("create: %v %v", tr, err)
	}
	rec, _ := s.GetVM(ctx, vm.Id)
	h, err := s.GetHost(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	p := state.StoredVM(rec.VM)
	p.Host, p.Epoch = host, 1
	alloc := state.Add(h.Host.Allocated, state.VMResources(p))
	if tr, err := s.Commit(ctx, state.BuildSchedule(p, rec.ModRevision, alloc, h.AllocRev, &pb.VMStatus{State: pb.VMState_VM_STATE_SCHEDULED})); err != nil || !tr.Succeeded {
		t.Fatalf("schedule: %v %v", tr, err)
	}
	rec, _ = s.GetVM(ctx, vm.Id)
	return rec
}

func (e ledgerOf) get(t *testing.T) state.Ledger {
	h, err := e.s.GetHost(context.Background(), e.host)
	if err != nil {
		t.Fatal(err)
	}
	return state.Ledger{Host: e.host, Rev: h.AllocRev, Alloc: h.Host.Allocated}
}

type ledgerOf struct {
	s    *state.Store
	host string
}

func addHosts(t *testing.T, s *state.Store, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := s.RegisterHost(context.Background(), &pb.Host{Name: n, Capacity: &pb.Resources{Vcpus: 8, MemoryMib: 4096}, Pools: []string{"shared"}}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMigrationRecords walks a migration through the builders and the agent's calls:
// start (both copies, reservation), progress, switch (epoch+1, once), finalization; and
// a failed one with its abort.
func TestMigrationRecords(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	addHosts(t, s, "h1", "h2")
	rec := place(t, s, testVM("vm-1", "p", "web"), "h1")

	start := func(rec *state.VMRecord, opID string) *pb.VM {
		t.Helper()
		vm := state.StoredVM(rec.VM)
		vm.Migration = &pb.Migration{OperationId: opID, SourceHost: "h1", TargetHost: "h2", AutoConverge: true, TimeoutSeconds: 120, SourceEpoch: vm.Epoch}
		vm.Generation++
		l := ledgerOf{s, "h2"}.get(t)
		l.Alloc = state.Add(l.Alloc, state.VMResources(vm))
		op := &pb.Operation{Id: opID, Kind: state.OpMigrate, VmId: vm.Id, State: pb.OperationState_OPERATION_STATE_RUNNING,
			Migration: &pb.MigrationProgress{SourceHost: "h1", TargetHost: "h2", Phase: "precopy"}}
		tr, err := s.Commit(ctx, state.BuildMigrationStart(vm, rec.ModRevision, l, &pb.VMStatus{State: pb.VMState_VM_STATE_MIGRATING}, op))
		if err != nil || !tr.Succeeded {
			t.Fatalf("migration start: %v %v", tr, err)
		}
		return vm
	}
	start(rec, "op-m1")
	for _, h := range []string{"h1", "h2"} {
		got, _, _ := s.ListAssigned(ctx, h)
		if len(got) != 1 || got[0].Migration.GetTargetHost() != "h2" || got[0].Host != "h1" {
			t.Fatalf("assigned on %s: %v", h, got)
		}
	}
	if l := (ledgerOf{s, "h2"}).get(t); l.Alloc.MemoryMib != 512 {
		t.Fatalf("target not reserved: %v", l.Alloc)
	}

	if err := s.UpdateMigrationProgress(ctx, "op-m1", &pb.MigrationProgress{Phase: "precopy", DataTotalBytes: 100, DataProcessedBytes: 40}); err != nil {
		t.Fatal(err)
	}
	op, _, _ := s.GetOperation(ctx, "op-m1")
	if op.Migration.DataProcessedBytes != 40 || op.Migration.SourceHost != "h1" {
		t.Fatalf("progress %v", op.Migration)
	}
	// The wrong host cannot switch it.
	if _, err := s.CompleteMigration(ctx, "h2", "vm-1", nil); !errors.Is(err, state.ErrMigrationGone) {
		t.Fatalf("switch by the target: %v", err)
	}
	fig := &pb.MigrationProgress{TotalMs: 900, DowntimeMs: 40}
	sw, err := s.CompleteMigration(ctx, "h1", "vm-1", fig)
	if err != nil || sw.Host != "h2" || sw.Epoch != 2 || sw.Migration.GetSourceHost() != "h1" {
		t.Fatalf("switch: %v %v", sw, err)
	}
	// A retry (unknown outcome) is a no-op returning the same record.
	again, err := s.CompleteMigration(ctx, "h1", "vm-1", fig)
	if err != nil || again.Epoch != 2 {
		t.Fatalf("retry: %v %v", again, err)
	}
	op, _, _ = s.GetOperation(ctx, "op-m1")
	if op.State != pb.OperationState_OPERATION_STATE_DONE || op.Migration.Phase != "done" || op.Migration.DowntimeMs != 40 || op.Migration.TargetHost != "h2" {
		t.Fatalf("op after switch %v", op)
	}
	if got, _, _ := s.ListAssigned(ctx, "h1"); len(got) != 0 {
		t.Fatalf("source still assigned: %v", got)
	}
	if got, _, _ := s.ListAssigned(ctx, "h2"); len(got) != 1 || got[0].Epoch != 2 || got[0].Host != "h2" {
		t.Fatalf("target copy: %v", got)
	}
	if err := s.UpdateMigrationProgress(ctx, "op-m1", fig); !errors.Is(err, state.ErrMigrationGone) {
		t.Fatalf("progress after done: %v", err)
	}

	// Finalization: clear migration, release the source.
	rec, _ = s.GetVM(ctx, "vm-1")
	src := ledgerOf{s, "h1"}.get(t)
	src.Alloc = state.Sub(src.Alloc, state.VMResources(rec.VM))
	if tr, err := s.Commit(ctx, state.BuildMigrationDone(rec.VM, rec.ModRevision, src)); err != nil || !tr.Succeeded {
		t.Fatalf("done: %v %v", tr, err)
	}
	rec, _ = s.GetVM(ctx, "vm-1")
	if rec.VM.Migration != nil || (ledgerOf{s, "h1"}).get(t).Alloc.MemoryMib != 0 {
		t.Fatalf("after finalization %v", rec.VM)
	}

	// Back to h1 and fail: the agent reports, the controller aborts.
	vm := start2(t, s, rec, "h2", "h1", "op-m2")
	if err := s.FailMigration(ctx, "op-m2", "destination went away", &pb.MigrationProgress{TotalMs: 300}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CompleteMigration(ctx, "h2", vm.Id, nil); !errors.Is(err, state.ErrMigrationGone) {
		t.Fatalf("switch after failure: %v", err)
	}
	op, _, _ = s.GetOperation(ctx, "op-m2")
	if op.State != pb.OperationState_OPERATION_STATE_FAILED || op.Migration.Phase != "failed" || op.Reason != "destination went away" {
		t.Fatalf("failed op %v", op)
	}
	rec, _ = s.GetVM(ctx, "vm-1")
	tl := ledgerOf{s, "h1"}.get(t)
	tl.Alloc = state.Sub(tl.Alloc, state.VMResources(rec.VM))
	if tr, err := s.Commit(ctx, state.BuildMigrationAbort(rec.VM, rec.ModRevision, tl)); err != nil || !tr.Succeeded {
		t.Fatalf("abort: %v %v", tr, err)
	}
	if got, _, _ := s.ListAssigned(ctx, "h1"); len(got) != 0 {
		t.Fatalf("target copy left: %v", got)
	}
	rec, _ = s.GetVM(ctx, "vm-1")
	if rec.VM.Host != "h2" || rec.VM.Epoch != 2 || rec.VM.Migration != nil {
		t.Fatalf("after abort %v", rec.VM)
	}
}

func start2(t *testing.T, s *state.Store, rec *state.VMRecord, from, to, opID string) *pb.VM {
	t.Helper()
	vm := state.StoredVM(rec.VM)
	vm.Migration = &pb.Migration{OperationId: opID, SourceHost: from, TargetHost: to, SourceEpoch: vm.Epoch}
	vm.Generation++
	l := ledgerOf{s, to}.get(t)
	l.Alloc = state.Add(l.Alloc, state.VMResources(vm))
	op := &pb.Operation{Id: opID, Kind: state.OpMigrate, VmId: vm.Id, State: pb.OperationState_OPERATION_STATE_RUNNING}
	tr, err := s.Commit(context.Background(), state.BuildMigrationStart(vm, rec.ModRevision, l, &pb.VMStatus{State: pb.VMState_VM_STATE_MIGRATING}, op))
	if err != nil || !tr.Succeeded {
		t.Fatalf("migration start: %v %v", tr, err)
	}
	return vm
}

// TestMoveOnce: two movers with the same reads — only one move applies.
func TestMoveOnce(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	addHosts(t, s, "h1", "h2", "h3")
	rec := place(t, s, testVM("vm-1", "p", "web"), "h1")
	build := func(target string) state.Txn {
		moved := state.Moved(rec.VM, target)
		from := ledgerOf{s, "h1"}.get(t)
		from.Alloc = state.Sub(from.Alloc, state.VMResources(moved))
		to := ledgerOf{s, target}.get(t)
		to.Alloc = state.Add(to.Alloc, state.VMResources(moved))
		op := &pb.Operation{Id: state.FailoverOperationID(moved.Id, rec.VM.Epoch), Kind: state.OpFailover, State: pb.OperationState_OPERATION_STATE_DONE}
		return state.BuildMove(moved, rec.ModRevision, "h1", &pb.VMStatus{State: pb.VMState_VM_STATE_SCHEDULED}, []state.Ledger{from, to}, state.PutOp(op))
	}
	a, b := build("h2"), build("h3")
	if tr, err := s.Commit(ctx, a); err != nil || !tr.Succeeded {
		t.Fatalf("first move: %v %v", tr, err)
	}
	if tr, err := s.Commit(ctx, b); err != nil || tr.Succeeded {
		t.Fatalf("second move applied: %v %v", tr, err)
	}
	got, _ := s.GetVM(ctx, "vm-1")
	if got.VM.Host != "h2" || got.VM.Epoch != 2 || got.VM.Generation != rec.VM.Generation+1 {
		t.Fatalf("moved %v", got.VM)
	}
	for h, want := range map[string]int64{"h1": 0, "h2": 512, "h3": 0} {
		if l := (ledgerOf{s, h}).get(t); l.Alloc.MemoryMib != want {
			t.Errorf("ledger %s %v", h, l.Alloc)
		}
		n, _, _ := s.ListAssigned(ctx, h)
		if (len(n) == 1) != (want > 0) {
			t.Errorf("assigned on %s: %v", h, n)
		}
	}
}

func TestHostEventsAndMaintenance(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	addHosts(t, s, "h1", "h2")
	base := time.Now()
	for i, h := range []string{"h2", "h1", "h1"} {
		ev := &pb.HostEvent{Host: h, From: pb.HostState_HOST_STATE_UP, To: pb.HostState_HOST_STATE_SUSPECT, Time: timestamppb.New(base.Add(time.Duration(i) * time.Millisecond))}
		if _, err := s.Commit(ctx, state.Txn{Then: []chainfire.Op{state.PutHostEventOp(ev, 0)}}); err != nil {
			t.Fatal(err)
		}
	}
	all, err := s.ListHostEvents(ctx, "")
	if err != nil || len(all) != 3 || all[0].Host != "h2" {
		t.Fatalf("all events %v %v", all, err)
	}
	h1, _ := s.ListHostEvents(ctx, "h1")
	if len(h1) != 2 {
		t.Fatalf("h1 events %v", h1)
	}
	if err := s.SetMaintenance(ctx, "h1", true); err != nil {
		t.Fatal(err)
	}
	hosts, _, _ := s.ListHosts(ctx)
	if !hosts[0].Maintenance || hosts[0].Host.State != pb.HostState_HOST_STATE_MAINTENANCE || hosts[0].Schedulable() || hosts[1].Maintenance {
		t.Fatalf("hosts %v", hosts)
	}
	if err := s.SetMaintenance(ctx, "h1", false); err != nil {
		t.Fatal(err)
	}
	h, _ := s.GetHost(ctx, "h1")
	if h.Maintenance || h.Host.State != pb.HostState_HOST_STATE_DOWN {
		t.Fatalf("after undrain %v", h.Host)
	}
}
