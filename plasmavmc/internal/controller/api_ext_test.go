package controller_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestCreateValidation: bad input gets the right code naming the problem, and nothing
// is created.
func TestCreateValidation(t *testing.T) {
	e := newEnv(t)
	c := e.controller(false, nil)
	root := c.as(e.token("root", ""))
	ctx := context.Background()
	e.addHost("h1", 8, 4096)
	e.addHost("h2", 4, 2048)
	e.registerImages(root)

	for _, tc := range []struct {
		name string
		mod  func(r *pb.CreateVMRequest)
		code connect.Code
		want []string
	}{
		{"zero vcpus", func(r *pb.CreateVMRequest) { r.Spec.Vcpus = 0 }, connect.CodeInvalidArgument, []string{"spec.vcpus"}},
		{"tiny memory", func(r *pb.CreateVMRequest) { r.Spec.MemoryMib = 8 }, connect.CodeInvalidArgument, []string{"spec.memory_mib"}},
		{"memory beyond every host", func(r *pb.CreateVMRequest) { r.Spec.MemoryMib = 8192 }, connect.CodeInvalidArgument, []string{"memory_mib", "4096"}},
		{"vcpus beyond every host", func(r *pb.CreateVMRequest) { r.Spec.Vcpus = 64 }, connect.CodeInvalidArgument, []string{"spec.vcpus"}},
		{"unknown disk image", func(r *pb.CreateVMRequest) {
			r.Spec.Disks = []*pb.Disk{{Name: "root", Image: "nope", Pool: "local"}}
		}, connect.CodeNotFound, []string{"spec.disks[0].image", `"nope"`}},
		{"unknown pool", func(r *pb.CreateVMRequest) {
			r.Spec.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "ceph"}}
		}, connect.CodeNotFound, []string{"spec.disks[0].pool", `"ceph"`}},
		{"unknown kernel", func(r *pb.CreateVMRequest) { r.Spec.Boot.KernelImage = "vmlinuz-9" }, connect.CodeNotFound, []string{"spec.boot.kernel_image", "vmlinuz-9"}},
		{"kernel not in the first disk's pool", func(r *pb.CreateVMRequest) {
			r.Spec.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "shared"}}
		}, connect.CodeNotFound, []string{"spec.boot.kernel_image", `"shared"`}},
		{"no boot source", func(r *pb.CreateVMRequest) { r.Spec.Boot = nil }, connect.CodeInvalidArgument, []string{"spec.disks"}},
		{"blank disk without size", func(r *pb.CreateVMRequest) {
			r.Spec.Disks = []*pb.Disk{{Name: "data", Pool: "local"}}
		}, connect.CodeInvalidArgument, []string{"spec.disks[0].size_gib"}},
		{"duplicate disk", func(r *pb.CreateVMRequest) {
			r.Spec.Disks = []*pb.Disk{{Name: "d", Pool: "local", SizeGib: 1}, {Name: "d", Pool: "local", SizeGib: 1}}
		}, connect.CodeInvalidArgument, []string{"spec.disks[1].name"}},
		{"bad name", func(r *pb.CreateVMRequest) { r.Name = "Web_1" }, connect.CodeInvalidArgument, []string{"name", "Web_1"}},
		{"bad project", func(r *pb.CreateVMRequest) { r.Project = "" }, connect.CodeInvalidArgument, []string{"project"}},
		{"no request id", func(r *pb.CreateVMRequest) { r.RequestId = "" }, connect.CodeInvalidArgument, []string{"request_id"}},
		{"malformed request id", func(r *pb.CreateVMRequest) { r.RequestId = "a b/c" }, connect.CodeInvalidArgument, []string{"request_id"}},
		{"no spec", func(r *pb.CreateVMRequest) { r.Spec = nil }, connect.CodeInvalidArgument, []string{"spec"}},
		{"bad anti-affinity", func(r *pb.CreateVMRequest) { r.Spec.AntiAffinity = []string{"nokey"} }, connect.CodeInvalidArgument, []string{"spec.anti_affinity[0]"}},
		{"nic without port", func(r *pb.CreateVMRequest) { r.Spec.Nics = []*pb.NIC{{}} }, connect.CodeInvalidArgument, []string{"spec.nics[0].port_id"}},
		{"bad label key", func(r *pb.CreateVMRequest) { r.Labels = map[string]string{"Bad Key": "x"} }, connect.CodeInvalidArgument, []string{"labels"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := createReq("pa", "web", 1, 256)
			tc.mod(r)
			_, err := root.vms.CreateVM(ctx, connect.NewRequest(r))
			wantCode(t, err, tc.code, tc.want...)
		})
	}
	if n := e.count(state.Prefix + "vms/"); n != 0 {
		t.Fatalf("%d VMs created by invalid requests", n)
	}
	if n := e.count(state.PrefixOperations); n != 0 {
		t.Fatalf("%d operations created by invalid requests", n)
	}

	// Duplicate name in a project → AlreadyExists; the same name in another project is fine.
	if _, err := root.vms.CreateVM(ctx, connect.NewRequest(createReq("pa", "web", 1, 256))); err != nil {
		t.Fatal(err)
	}
	dup := createReq("pa", "web", 1, 256)
	dup.RequestId = "another"
	_, err := root.vms.CreateVM(ctx, connect.NewRequest(dup))
	wantCode(t, err, connect.CodeAlreadyExists, "name", `"web"`, `"pa"`)
	if _, err := root.vms.CreateVM(ctx, connect.NewRequest(createReq("pb", "web", 1, 256))); err != nil {
		t.Fatal(err)
	}
	if n := e.count(state.PrefixVMs); n != 2 {
		t.Fatalf("%d VMs, want 2", n)
	}

	// Malformed ids.
	t.Run("malformed ids", func(t *testing.T) {
		_, err := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: "../etc"}))
		wantCode(t, err, connect.CodeInvalidArgument, "id")
		_, err = root.vms.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: "x"}))
		wantCode(t, err, connect.CodeInvalidArgument, "id")
		_, err = root.vms.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: ""}))
		wantCode(t, err, connect.CodeInvalidArgument, "id")
		_, err = root.ops.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: "nope"}))
		wantCode(t, err, connect.CodeInvalidArgument, "id")
		_, err = root.hosts.GetHost(ctx, connect.NewRequest(&pb.GetHostRequest{Name: "H/1"}))
		wantCode(t, err, connect.CodeInvalidArgument, "name")
		_, err = root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: "00000000-0000-4000-8000-000000000000"}))
		wantCode(t, err, connect.CodeNotFound)
		_, err = root.images.RegisterImage(ctx, connect.NewRequest(&pb.RegisterImageRequest{Image: &pb.Image{Name: "x", Pool: "local", Format: "qcow2", Path: "../x"}}))
		wantCode(t, err, connect.CodeInvalidArgument, "image.path")
		_, err = root.images.RegisterImage(ctx, connect.NewRequest(&pb.RegisterImageRequest{Image: &pb.Image{Name: "x", Pool: "nfs", Format: "qcow2", Path: "x"}}))
		wantCode(t, err, connect.CodeNotFound, "image.pool", `"nfs"`)
	})
}

// TestIdempotentCreate: the same request id, sequentially and concurrently, makes one VM.
func TestIdempotentCreate(t *testing.T) {
	e := newEnv(t)
	c := e.controller(false, nil)
	c2 := e.controller(false, nil)
	root := c.as(e.token("root", ""))
	ctx := context.Background()
	e.registerImages(root)

	r := createReq("pa", "web", 1, 256)
	a, err := root.vms.CreateVM(ctx, connect.NewRequest(r))
	if err != nil {
		t.Fatal(err)
	}
	b, err := root.vms.CreateVM(ctx, connect.NewRequest(r))
	if err != nil {
		t.Fatal(err)
	}
	if a.Msg.Vm.Id != b.Msg.Vm.Id || a.Msg.Operation.Id != b.Msg.Operation.Id {
		t.Fatalf("retry made another VM or operation: %s/%s vs %s/%s", a.Msg.Vm.Id, a.Msg.Operation.Id, b.Msg.Vm.Id, b.Msg.Operation.Id)
	}
	// The request id reused for a different VM is refused.
	other := createReq("pa", "db", 1, 256)
	other.RequestId = r.RequestId
	_, err = root.vms.CreateVM(ctx, connect.NewRequest(other))
	wantCode(t, err, connect.CodeAlreadyExists, "request_id")

	// Concurrently, through two replicas.
	r2 := createReq("pa", "db", 1, 256)
	const n = 16
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		cl := root
		if i%2 == 1 {
			cl = c2.as(e.token("root", ""))
		}
		wg.Go(func() {
			resp, err := cl.vms.CreateVM(ctx, connect.NewRequest(proto.Clone(r2).(*pb.CreateVMRequest)))
			errs[i] = err
			if err == nil {
				ids[i] = resp.Msg.Vm.Id
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("call %d: %v id %s (first %s)", i, errs[i], ids[i], ids[0])
		}
	}
	if got := e.count(state.PrefixVMs); got != 2 {
		t.Fatalf("%d VMs, want 2", got)
	}
	if got := e.count(state.PrefixOperations); got != 2 {
		t.Fatalf("%d operations, want 2", got)
	}
}

// TestProjectIsolation: a token of project pb cannot see or act on a VM of project pa
// (NotFound, as for a VM that does not exist); a global admin sees both; a global
// reader cannot create.
func TestProjectIsolation(t *testing.T) {
	e := newEnv(t)
	c := e.controller(false, nil)
	ctx := context.Background()
	root := c.as(e.token("root", ""))
	alice := c.as(e.token("alice", "pa"))
	bob := c.as(e.token("bob", "pb"))
	carol := c.as(e.token("carol", ""))
	e.registerImages(root)

	r := createReq("", "web", 1, 256) // project from the token
	ra, err := alice.vms.CreateVM(ctx, connect.NewRequest(r))
	if err != nil {
		t.Fatal(err)
	}
	if ra.Msg.Vm.Project != "pa" {
		t.Fatalf("project %q", ra.Msg.Vm.Project)
	}
	id := ra.Msg.Vm.Id
	rb, err := bob.vms.CreateVM(ctx, connect.NewRequest(createReq("pb", "web", 1, 256)))
	if err != nil {
		t.Fatal(err)
	}

	_, err = bob.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = bob.vms.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: id}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = bob.vms.RebootVM(ctx, connect.NewRequest(&pb.RebootVMRequest{Id: id}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = bob.vms.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: id}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = bob.ops.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: ra.Msg.Operation.Id}))
	wantCode(t, err, connect.CodeNotFound)
	_, err = bob.vms.CreateVM(ctx, connect.NewRequest(createReq("pa", "evil", 1, 256)))
	wantCode(t, err, connect.CodePermissionDenied, "project")
	_, err = bob.vms.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{Project: "pa"}))
	wantCode(t, err, connect.CodePermissionDenied, "project")
	lb, err := bob.vms.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{}))
	if err != nil || len(lb.Msg.Vms) != 1 || lb.Msg.Vms[0].Id != rb.Msg.Vm.Id {
		t.Fatalf("bob's list: %v %v", lb, err)
	}
	ob, err := bob.ops.ListOperations(ctx, connect.NewRequest(&pb.ListOperationsRequest{}))
	if err != nil || len(ob.Msg.Operations) != 1 {
		t.Fatalf("bob's operations: %v %v", ob, err)
	}
	// The request id of another project's create does not leak it either.
	_, err = bob.vms.CreateVM(ctx, connect.NewRequest(&pb.CreateVMRequest{Name: "web", Project: "pb", RequestId: r.RequestId, Spec: r.Spec}))
	wantCode(t, err, connect.CodeAlreadyExists, "request_id")

	// Nothing of pa changed.
	g, err := alice.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id}))
	if err != nil || g.Msg.Vm.PowerState != pb.PowerState_POWER_STATE_RUNNING || g.Msg.Vm.Generation != 1 {
		t.Fatalf("alice's VM: %v %v", g, err)
	}
	// The global admin sees both; the global reader lists but cannot create.
	la, err := root.vms.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{}))
	if err != nil || len(la.Msg.Vms) != 2 {
		t.Fatalf("root's list: %v %v", la, err)
	}
	if _, err := carol.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id})); err != nil {
		t.Fatal(err)
	}
	_, err = carol.vms.CreateVM(ctx, connect.NewRequest(createReq("pa", "x", 1, 256)))
	wantCode(t, err, connect.CodePermissionDenied, "vm.create")
	// No token at all.
	anon := c.as("")
	_, err = anon.vms.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{}))
	wantCode(t, err, connect.CodeUnauthenticated)
}

// TestLifecycleAndDelete: schedule, power changes, and the delete flow with a
// simulated agent writing status through internal/state.
func TestLifecycleAndDelete(t *testing.T) {
	e := newEnv(t)
	c := e.controller(true, nil)
	ctx := context.Background()
	root := c.as(e.token("root", ""))
	e.registerImages(root)
	e.addHost("h1", 4, 2048)

	cr, err := root.vms.CreateVM(ctx, connect.NewRequest(createReq("pa", "web", 2, 1024)))
	if err != nil {
		t.Fatal(err)
	}
	id := cr.Msg.Vm.Id
	get := func() *pb.VM {
		g, err := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id}))
		if err != nil {
			t.Fatal(err)
		}
		return g.Msg.Vm
	}
	// stored is the record in ChainFire, with the internal labels the API hides.
	stored := func() *pb.VM {
		rec, err := e.st.GetVM(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return rec.VM
	}
	waitFor(t, 10*time.Second, "SCHEDULED", func() bool { return get().GetStatus().GetState() == pb.VMState_VM_STATE_SCHEDULED })
	vm := get()
	if vm.Host != "h1" || vm.Status.Host != "h1" {
		t.Fatalf("placed %v", vm)
	}
	// The agent converges.
	if err := e.st.PutStatus(ctx, "h1", id, &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING, BootId: "b1", ObservedGeneration: 1}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.FinishOperation(ctx, cr.Msg.Operation.Id, pb.OperationState_OPERATION_STATE_DONE, ""); err != nil {
		t.Fatal(err)
	}

	// Start when running: done at once. Stop: power, generation, labels.
	st, err := root.vms.StartVM(ctx, connect.NewRequest(&pb.StartVMRequest{Id: id}))
	if err != nil || st.Msg.Operation.State != pb.OperationState_OPERATION_STATE_DONE {
		t.Fatalf("start of a running VM: %v %v", st, err)
	}
	sp, err := root.vms.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: id, TimeoutSeconds: 5}))
	if err != nil || sp.Msg.Operation.State != pb.OperationState_OPERATION_STATE_RUNNING || sp.Msg.Operation.Kind != state.OpStop {
		t.Fatalf("stop: %v %v", sp, err)
	}
	vm = stored()
	if vm.PowerState != pb.PowerState_POWER_STATE_STOPPED || vm.Generation != 2 || vm.Labels[state.LabelStop] != sp.Msg.Operation.Id || vm.Labels[state.LabelStopTimeout] != "5" {
		t.Fatalf("after stop %v", vm)
	}
	if l := get().Labels; len(l) != 0 {
		t.Fatalf("the API shows internal labels: %v", l)
	}
	assigned, _, err := e.st.ListAssigned(ctx, "h1")
	if err != nil || len(assigned) != 1 || assigned[0].Generation != 2 {
		t.Fatalf("assigned copy not updated: %v %v", assigned, err)
	}
	_, err = root.vms.RebootVM(ctx, connect.NewRequest(&pb.RebootVMRequest{Id: id}))
	wantCode(t, err, connect.CodeFailedPrecondition, "stopped")
	if _, err := root.vms.StartVM(ctx, connect.NewRequest(&pb.StartVMRequest{Id: id})); err != nil {
		t.Fatal(err)
	}
	rb, err := root.vms.RebootVM(ctx, connect.NewRequest(&pb.RebootVMRequest{Id: id}))
	if err != nil || stored().Labels[state.LabelReboot] != rb.Msg.Operation.Id {
		t.Fatalf("reboot: %v %v", rb, err)
	}

	// Delete: marked for the agent; the agent finishes; housekeeping removes.
	d, err := root.vms.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: id}))
	if err != nil || d.Msg.Operation.State != pb.OperationState_OPERATION_STATE_RUNNING {
		t.Fatalf("delete: %v %v", d, err)
	}
	vm = stored()
	if vm.PowerState != pb.PowerState_POWER_STATE_STOPPED || vm.Labels[state.LabelDelete] != d.Msg.Operation.Id {
		t.Fatalf("after delete %v", vm)
	}
	d2, err := root.vms.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: id}))
	if err != nil || d2.Msg.Operation.Id != d.Msg.Operation.Id {
		t.Fatalf("second delete: %v %v", d2, err)
	}
	_, err = root.vms.StartVM(ctx, connect.NewRequest(&pb.StartVMRequest{Id: id}))
	wantCode(t, err, connect.CodeFailedPrecondition, "deleted")
	time.Sleep(300 * time.Millisecond) // a few passes: nothing happens while the agent holds it
	if stored().Labels[state.LabelDelete] == "" {
		t.Fatal("removed before the agent finished")
	}
	if err := e.st.PutStatus(ctx, "h1", id, &pb.VMStatus{State: pb.VMState_VM_STATE_DELETING}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.AgentDeleted(ctx, "h1", id); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "VM removed", func() bool {
		_, err := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id}))
		return connect.CodeOf(err) == connect.CodeNotFound
	})
	op, err := root.ops.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: d.Msg.Operation.Id}))
	if err != nil || op.Msg.Operation.State != pb.OperationState_OPERATION_STATE_DONE {
		t.Fatalf("delete operation: %v %v", op, err)
	}
	h, err := e.st.GetHost(ctx, "h1")
	if err != nil || h.Host.Allocated.MemoryMib != 0 || h.Host.Allocated.Vcpus != 0 {
		t.Fatalf("allocation not freed: %v %v", h, err)
	}
	if n := e.count(state.PrefixNames) + e.count(state.PrefixStatus) + e.count(state.PrefixAssigned); n != 0 {
		t.Fatalf("%d keys left behind", n)
	}
	// The name is free again.
	again := createReq("pa", "web", 2, 1024)
	again.RequestId = "again"
	if _, err := root.vms.CreateVM(ctx, connect.NewRequest(again)); err != nil {
		t.Fatal(err)
	}

	// A VM never placed is deleted at once.
	big := createReq("pa", "big", 4, 2048)
	br, err := root.vms.CreateVM(ctx, connect.NewRequest(big))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "unschedulable reason", func() bool {
		g, err := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: br.Msg.Vm.Id}))
		return err == nil && g.Msg.Vm.Status.GetState() == pb.VMState_VM_STATE_PENDING && len(g.Msg.Vm.Status.Reason) > len("no host fits")
	})
	bd, err := root.vms.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: br.Msg.Vm.Id}))
	if err != nil || bd.Msg.Operation.State != pb.OperationState_OPERATION_STATE_DONE {
		t.Fatalf("delete of a pending VM: %v %v", bd, err)
	}
	_, err = root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: br.Msg.Vm.Id}))
	wantCode(t, err, connect.CodeNotFound)
	co, err := root.ops.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: br.Msg.Operation.Id}))
	if err != nil || co.Msg.Operation.State != pb.OperationState_OPERATION_STATE_FAILED {
		t.Fatalf("create operation of the deleted VM: %v %v", co, err)
	}
	// Hosts through the API.
	hl, err := root.hosts.ListHosts(ctx, connect.NewRequest(&pb.ListHostsRequest{}))
	if err != nil || len(hl.Msg.Hosts) != 1 || hl.Msg.Hosts[0].State != pb.HostState_HOST_STATE_UP || hl.Msg.Hosts[0].Allocated.MemoryMib != 1024 {
		t.Fatalf("hosts: %v %v", hl, err)
	}
}
