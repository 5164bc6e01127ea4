package state_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

func newStore(t *testing.T) *state.Store {
	t.Helper()
	cf := chainfiretest.Start(t, 1, chainfiretest.Options{})
	c, err := chainfire.New(chainfire.Config{Endpoints: cf.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return state.New(c, nil)
}

func testVM(id, project, name string) *pb.VM {
	return &pb.VM{Id: id, Name: name, Project: project, PowerState: pb.PowerState_POWER_STATE_RUNNING, Generation: 1,
		Spec: &pb.VMSpec{Vcpus: 2, MemoryMib: 512}}
}

func TestKeys(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{state.VMKey("a"), "/plasmavmc/vms/a"},
		{state.AssignedKey("h1", "a"), "/plasmavmc/assigned/h1/a"},
		{state.StatusKey("a"), "/plasmavmc/status/a"},
		{state.NameKey("p", "n"), "/plasmavmc/names/p/n"},
		{state.RequestKey("r"), "/plasmavmc/requests/r"},
		{state.HostKey("h1"), "/plasmavmc/hosts/h1"},
		{state.AliveKey("h1"), "/plasmavmc/alive/h1"},
		{state.AllocKey("h1"), "/plasmavmc/alloc/h1"},
		{state.ImageKey("local", "img"), "/plasmavmc/images/local/img"},
		{state.OperationKey("o"), "/plasmavmc/operations/o"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q want %q", tc.got, tc.want)
		}
	}
	if h, id, ok := state.ParseAssignedKey("/plasmavmc/assigned/h1/abc"); !ok || h != "h1" || id != "abc" {
		t.Errorf("ParseAssignedKey: %q %q %v", h, id, ok)
	}
	if _, _, ok := state.ParseAssignedKey("/plasmavmc/vms/abc"); ok {
		t.Error("ParseAssignedKey accepted a vm key")
	}
}

// TestLifecycle walks create → schedule → agent status → delete → remove through the
// txn builders against a real ChainFire.
func TestLifecycle(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	vm := testVM("vm-1", "p1", "web")
	op := &pb.Operation{Id: "op-1", Kind: state.OpCreate, VmId: vm.Id, State: pb.OperationState_OPERATION_STATE_RUNNING, Project: "p1", StartTime: s.Now()}
	pending := &pb.VMStatus{State: pb.VMState_VM_STATE_PENDING}

	resp, err := s.Commit(ctx, state.BuildCreate(vm, pending, op, "req-1", 0))
	if err != nil || !resp.Succeeded {
		t.Fatalf("create: %v %v", resp, err)
	}
	// The same request again fails the compare and explains why.
	vm2 := testVM("vm-2", "p1", "web")
	resp, err = s.Commit(ctx, state.BuildCreate(vm2, pending, op, "req-1", 0))
	if err != nil || resp.Succeeded {
		t.Fatalf("duplicate create: %v %v", resp, err)
	}
	rr, err := state.DecodeRequest("", state.RangeKvs(resp, 0)[0].Value)
	if err != nil || rr.VMID != "vm-1" || rr.OperationID != "op-1" {
		t.Fatalf("request record %+v %v", rr, err)
	}
	if got := string(state.RangeKvs(resp, 1)[0].Value); got != "vm-1" {
		t.Fatalf("name key %q", got)
	}

	rec, err := s.GetVM(ctx, "vm-1")
	if err != nil || rec.VM.Status.GetState() != pb.VMState_VM_STATE_PENDING || rec.VM.Name != "web" {
		t.Fatalf("GetVM: %v %v", rec, err)
	}
	if _, err := s.GetVM(ctx, "nope"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("GetVM missing: %v", err)
	}

	// Host and schedule.
	if err := s.RegisterHost(ctx, &pb.Host{Name: "h1", Capacity: &pb.Resources{Vcpus: 4, MemoryMib: 1024}, Pools: []string{"local"}}); err != nil {
		t.Fatal(err)
	}
	hosts, _, err := s.ListHosts(ctx)
	if err != nil || len(hosts) != 1 || hosts[0].Host.State != pb.HostState_HOST_STATE_DOWN || hosts[0].AllocRev != 0 {
		t.Fatalf("hosts %v %v", hosts, err)
	}
	if _, err := s.Client().Put(ctx, state.AliveKey("h1"), "agent-1"); err != nil {
		t.Fatal(err)
	}
	h, err := s.GetHost(ctx, "h1")
	if err != nil || !h.Schedulable() || h.Free().MemoryMib != 1024 {
		t.Fatalf("host %v %v", h, err)
	}
	placed := proto.Clone(rec.VM).(*pb.VM)
	placed.Host = "h1"
	sched := &pb.VMStatus{State: pb.VMState_VM_STATE_SCHEDULED, Host: "h1"}
	newAlloc := state.Add(h.Host.Allocated, state.VMResources(placed))
	resp, err = s.Commit(ctx, state.BuildSchedule(placed, rec.ModRevision, newAlloc, h.AllocRev, sched))
	if err != nil || !resp.Succeeded {
		t.Fatalf("schedule: %v %v", resp, err)
	}
	// A second scheduler with the same (now stale) reads loses.
	resp, err = s.Commit(ctx, state.BuildSchedule(placed, rec.ModRevision, newAlloc, h.AllocRev, sched))
	if err != nil || resp.Succeeded {
		t.Fatalf("stale schedule succeeded: %v %v", resp, err)
	}
	h, _ = s.GetHost(ctx, "h1")
	if h.Host.Allocated.MemoryMib != 512 || h.Host.Allocated.Vcpus != 2 {
		t.Fatalf("allocated %v", h.Host.Allocated)
	}
	assigned, _, err := s.ListAssigned(ctx, "h1")
	if err != nil || len(assigned) != 1 || assigned[0].Id != "vm-1" || assigned[0].Status != nil {
		t.Fatalf("assigned %v %v", assigned, err)
	}

	// The agent reports.
	if err := s.PutStatus(ctx, "h1", "vm-1", &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING, BootId: "b1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStatus(ctx, "h2", "vm-1", &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING}); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("status from the wrong host: %v", err)
	}
	if err := s.FinishOperation(ctx, "op-1", pb.OperationState_OPERATION_STATE_DONE, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.FinishOperation(ctx, "op-1", pb.OperationState_OPERATION_STATE_FAILED, "late"); err != nil {
		t.Fatal(err)
	}
	o, _, err := s.GetOperation(ctx, "op-1")
	if err != nil || o.State != pb.OperationState_OPERATION_STATE_DONE || o.EndTime == nil {
		t.Fatalf("operation %v %v", o, err)
	}
	rec, _ = s.GetVM(ctx, "vm-1")
	if rec.VM.Status.State != pb.VMState_VM_STATE_RUNNING || rec.VM.Status.Host != "h1" || rec.VM.Host != "h1" {
		t.Fatalf("vm %v", rec.VM)
	}

	// Delete: mark, agent finishes, controller removes.
	del := proto.Clone(rec.VM).(*pb.VM)
	del.PowerState = pb.PowerState_POWER_STATE_STOPPED
	del.Labels = map[string]string{state.LabelDelete: "op-2"}
	del.Generation++
	if resp, err = s.Commit(ctx, state.BuildUpdateVM(del, rec.ModRevision)); err != nil || !resp.Succeeded {
		t.Fatalf("mark delete: %v %v", resp, err)
	}
	rec, _ = s.GetVM(ctx, "vm-1")
	h, _ = s.GetHost(ctx, "h1")
	freed := state.Sub(h.Host.Allocated, state.VMResources(rec.VM))
	// Not yet: the agent still has it.
	if resp, err = s.Commit(ctx, state.BuildRemoveVM(rec.VM, rec.ModRevision, freed, h.AllocRev)); err != nil || resp.Succeeded {
		t.Fatalf("remove before agent: %v %v", resp, err)
	}
	if err := s.AgentDeleted(ctx, "h1", "vm-1"); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStatus(ctx, "h1", "vm-1", &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING}); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("late status write: %v", err)
	}
	if resp, err = s.Commit(ctx, state.BuildRemoveVM(rec.VM, rec.ModRevision, freed, h.AllocRev)); err != nil || !resp.Succeeded {
		t.Fatalf("remove: %v %v", resp, err)
	}
	if _, err := s.GetVM(ctx, "vm-1"); !errors.Is(err, state.ErrNotFound) {
		t.Fatalf("vm still there: %v", err)
	}
	g, _ := s.Client().Get(ctx, state.NameKey("p1", "web"))
	h, _ = s.GetHost(ctx, "h1")
	if len(g.Kvs) != 0 || h.Host.Allocated.MemoryMib != 0 {
		t.Fatalf("name %v alloc %v", g.Kvs, h.Host.Allocated)
	}
}

func TestHostStateKept(t *testing.T) {
	s := newStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.RegisterHost(ctx, &pb.Host{Name: "h1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHostState(ctx, "h1", pb.HostState_HOST_STATE_MAINTENANCE); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterHost(ctx, &pb.Host{Name: "h1", AgentVersion: "2"}); err != nil {
		t.Fatal(err)
	}
	h, err := s.GetHost(ctx, "h1")
	if err != nil || h.Host.State != pb.HostState_HOST_STATE_MAINTENANCE || h.Host.AgentVersion != "2" || h.Schedulable() {
		t.Fatalf("host %v %v", h, err)
	}
}
