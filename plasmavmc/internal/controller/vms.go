package controller

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// vmService implements plasmavmcv1connect.VMServiceHandler.
type vmService struct{ c *Controller }

// maxCAS bounds read-modify-write retries of one call.
const maxCAS = 32

// CreateVM validates, then creates the VM PENDING in one transaction. It is idempotent
// by request_id: a retry (also one racing the first call, or one after a ChainFire
// leader change left the first call's outcome unknown) returns the same VM and operation.
func (s vmService) CreateVM(ctx context.Context, req *connect.Request[pb.CreateVMRequest]) (*connect.Response[pb.CreateVMResponse], error) {
	c := s.c
	sc, err := callerScope(ctx)
	if err != nil {
		return nil, err
	}
	r := proto.Clone(req.Msg).(*pb.CreateVMRequest)
	if r.Project == "" && !sc.all {
		r.Project = sc.project
	}
	if err := checkCreateSyntax(r); err != nil {
		return nil, err
	}
	if !sc.sees(r.Project) {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("project: the token is scoped to project %q, not %q", sc.project, r.Project))
	}
	if resp, ok, err := c.lookupRequest(ctx, r, sc); ok || err != nil {
		return resp, err
	}
	if err := c.checkCreateRefs(ctx, r); err != nil {
		return nil, err
	}

	now := c.st.Now()
	op := &pb.Operation{Id: newUUID(), Kind: state.OpCreate, State: pb.OperationState_OPERATION_STATE_RUNNING, StartTime: now, Project: r.Project}
	vm := &pb.VM{
		Name: r.Name, Project: r.Project, Spec: r.Spec, PowerState: pb.PowerState_POWER_STATE_RUNNING,
		Labels: map[string]string{}, Generation: 1, CreateTime: now,
	}
	if r.Stopped {
		vm.PowerState = pb.PowerState_POWER_STATE_STOPPED
	}
	for k, v := range r.Labels {
		vm.Labels[k] = v
	}
	vm.Labels[state.LabelCreate] = op.Id
	st := &pb.VMStatus{State: pb.VMState_VM_STATE_PENDING, Reason: "waiting for the scheduler", UpdateTime: now}

	for attempt := 0; attempt < maxCAS; attempt++ {
		vm.Id = newUUID()
		op.VmId = vm.Id
		lease, err := c.requestLeaseID(ctx)
		if err != nil {
			return nil, toConnect(err)
		}
		tr, err := c.st.Commit(ctx, state.BuildCreate(vm, st, op, r.RequestId, lease))
		if err != nil {
			if errors.Is(err, chainfire.ErrOutcomeUnknown) {
				// The create may have been applied: the request key says.
				if resp, ok, lerr := c.lookupRequest(ctx, r, sc); ok || lerr != nil {
					return resp, lerr
				}
				continue
			}
			if strings.Contains(err.Error(), "lease not found") {
				c.dropRequestLease(lease)
				continue
			}
			return nil, toConnect(err)
		}
		if tr.Succeeded {
			c.metrics.creates.Inc()
			c.Kick()
			out := proto.Clone(vm).(*pb.VM)
			out.Status = st
			return connect.NewResponse(&pb.CreateVMResponse{Vm: apiView(out), Operation: op}), nil
		}
		if len(state.RangeKvs(tr, 0)) > 0 { // a concurrent call with this request id won
			if resp, ok, lerr := c.lookupRequest(ctx, r, sc); ok || lerr != nil {
				return resp, lerr
			}
			continue
		}
		if len(state.RangeKvs(tr, 1)) > 0 {
			return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("name: a VM named %q already exists in project %q", r.Name, r.Project))
		}
		// Only a UUID collision is left: try another id.
	}
	return nil, connect.NewError(connect.CodeAborted, errors.New("create: too many concurrent changes, try again"))
}

// lookupRequest answers a create whose request id was already used: ok is true (with a
// response or an error) when it was.
func (c *Controller) lookupRequest(ctx context.Context, r *pb.CreateVMRequest, sc scope) (*connect.Response[pb.CreateVMResponse], bool, error) {
	g, err := c.cf.Get(ctx, state.RequestKey(r.RequestId))
	if err != nil {
		return nil, false, toConnect(fmt.Errorf("%w: read request: %w", state.ErrUnavailable, err))
	}
	if len(g.Kvs) == 0 {
		return nil, false, nil
	}
	rr, err := state.DecodeRequest(string(g.Kvs[0].Key), g.Kvs[0].Value)
	if err != nil {
		return nil, true, toConnect(err)
	}
	used := connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("request_id: %q was already used for another create", r.RequestId))
	rec, err := c.st.GetVM(ctx, rr.VMID)
	if errors.Is(err, state.ErrNotFound) {
		return nil, true, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("request_id: %q created VM %s, which has since been deleted", r.RequestId, rr.VMID))
	}
	if err != nil {
		return nil, true, toConnect(err)
	}
	if !sc.sees(rec.VM.Project) || rec.VM.Project != r.Project || rec.VM.Name != r.Name {
		return nil, true, used
	}
	op, _, err := c.st.GetOperation(ctx, rr.OperationID)
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return nil, true, toConnect(err)
	}
	return connect.NewResponse(&pb.CreateVMResponse{Vm: apiView(rec.VM), Operation: op}), true, nil
}

// checkCreateRefs checks what a create refers to: memory and vCPUs that some host can
// hold, and the disks' and boot's images.
func (c *Controller) checkCreateRefs(ctx context.Context, r *pb.CreateVMRequest) error {
	hosts, _, err := c.st.ListHosts(ctx)
	if err != nil {
		return toConnect(err)
	}
	if len(hosts) > 0 {
		var maxMem int64
		var maxCPU int32
		for _, h := range hosts {
			maxMem = max(maxMem, h.Host.GetCapacity().GetMemoryMib())
			maxCPU = max(maxCPU, h.Host.GetCapacity().GetVcpus())
		}
		if r.Spec.MemoryMib > maxMem {
			return invalid("spec.memory_mib", "%d MiB is more than any host has (largest: %d MiB)", r.Spec.MemoryMib, maxMem)
		}
		if r.Spec.Vcpus > maxCPU {
			return invalid("spec.vcpus", "%d is more than any host has (largest: %d)", r.Spec.Vcpus, maxCPU)
		}
	}
	for i, d := range r.Spec.Disks {
		if d.Image == "" {
			continue
		}
		if _, err := c.st.GetImage(ctx, d.Pool, d.Image); err != nil {
			if errors.Is(err, state.ErrNotFound) {
				return notFound("spec.disks[%d].image: image %q not found in pool %q", i, d.Image, d.Pool)
			}
			return toConnect(err)
		}
	}
	pool := bootPool(r.Spec)
	for field, name := range map[string]string{"spec.boot.kernel_image": r.Spec.GetBoot().GetKernelImage(), "spec.boot.initrd_image": r.Spec.GetBoot().GetInitrdImage()} {
		if name == "" {
			continue
		}
		if _, err := c.st.GetImage(ctx, pool, name); err != nil {
			if errors.Is(err, state.ErrNotFound) {
				return notFound("%s: image %q not found in pool %q", field, name, pool)
			}
			return toConnect(err)
		}
	}
	return nil
}

// requestLeaseID returns the lease request keys are put on: granted for RequestTTL plus
// an hour and replaced hourly, so a request id is remembered between RequestTTL and
// RequestTTL + 1 h.
func (c *Controller) requestLeaseID(ctx context.Context) (int64, error) {
	c.leaseMu.Lock()
	defer c.leaseMu.Unlock()
	if c.requestLease != 0 && c.now().Sub(c.leaseGranted) < time.Hour {
		return c.requestLease, nil
	}
	g, err := c.cf.Grant(ctx, int64((c.cfg.RequestTTL + time.Hour).Seconds()))
	if err != nil {
		return 0, fmt.Errorf("%w: grant request lease: %w", state.ErrUnavailable, err)
	}
	c.requestLease, c.leaseGranted = g.ID, c.now()
	return g.ID, nil
}

func (c *Controller) dropRequestLease(id int64) {
	c.leaseMu.Lock()
	defer c.leaseMu.Unlock()
	if c.requestLease == id {
		c.requestLease = 0
	}
}

// getVisible reads VM id for a caller; a VM of a project the caller does not see is
// NotFound, like one that does not exist.
func (c *Controller) getVisible(ctx context.Context, id string) (*state.VMRecord, error) {
	if err := checkID("id", id); err != nil {
		return nil, err
	}
	sc, err := callerScope(ctx)
	if err != nil {
		return nil, err
	}
	rec, err := c.st.GetVM(ctx, id)
	if err == nil && !sc.sees(rec.VM.Project) {
		err = fmt.Errorf("%w: vm %q", state.ErrNotFound, id)
	}
	if err != nil {
		return nil, toConnect(err)
	}
	return rec, nil
}

func (s vmService) GetVM(ctx context.Context, req *connect.Request[pb.GetVMRequest]) (*connect.Response[pb.GetVMResponse], error) {
	rec, err := s.c.getVisible(ctx, req.Msg.Id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.GetVMResponse{Vm: apiView(rec.VM)}), nil
}

func (s vmService) ListVMs(ctx context.Context, req *connect.Request[pb.ListVMsRequest]) (*connect.Response[pb.ListVMsResponse], error) {
	sc, err := callerScope(ctx)
	if err != nil {
		return nil, err
	}
	r := req.Msg
	if r.Project != "" {
		if err := checkName("project", r.Project); err != nil {
			return nil, err
		}
		if !sc.sees(r.Project) {
			return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("project: the token is scoped to project %q, not %q", sc.project, r.Project))
		}
	}
	if r.Host != "" {
		if err := checkName("host", r.Host); err != nil {
			return nil, err
		}
	}
	recs, _, err := s.c.st.ListVMs(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	out := &pb.ListVMsResponse{}
	for _, rec := range recs {
		vm := rec.VM
		if !sc.sees(vm.Project) || (r.Project != "" && vm.Project != r.Project) || (r.Host != "" && vm.Host != r.Host) {
			continue
		}
		out.Vms = append(out.Vms, apiView(vm))
	}
	return connect.NewResponse(out), nil
}

// mutate applies change to VM id under compare-and-swap and records op (kind) with it.
// change returns done=true when the VM already is as asked: op is then stored finished
// and the record is left alone.
func (c *Controller) mutate(ctx context.Context, id, kind string, change func(vm *pb.VM, op *pb.Operation) (done bool, err error)) (*pb.Operation, error) {
	for range maxCAS {
		rec, err := c.getVisible(ctx, id)
		if err != nil {
			return nil, err
		}
		if opID, ok := rec.VM.Labels[state.LabelDelete]; ok && kind != state.OpDelete {
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("id: VM %s is being deleted (operation %s)", id, opID))
		}
		if err := notMigrating(rec.VM); err != nil {
			return nil, err
		}
		now := c.st.Now()
		op := &pb.Operation{Id: newUUID(), Kind: kind, VmId: id, State: pb.OperationState_OPERATION_STATE_RUNNING, StartTime: now, Project: rec.VM.Project}
		vm := proto.Clone(rec.VM).(*pb.VM) // with status, for change to look at; never stored
		if vm.Labels == nil {
			vm.Labels = map[string]string{}
		}
		done, err := change(vm, op)
		if err != nil {
			return nil, err
		}
		var t state.Txn
		if done {
			op.State, op.EndTime = pb.OperationState_OPERATION_STATE_DONE, now
			t = state.Txn{If: []chainfire.Cmp{state.Unchanged(state.VMKey(id), rec.ModRevision)}, Then: []chainfire.Op{state.PutOp(op)}}
		} else {
			vm.Generation++
			t = state.BuildUpdateVM(vm, rec.ModRevision, state.PutOp(op))
		}
		tr, err := c.st.Commit(ctx, t)
		if err != nil {
			return nil, toConnect(err)
		}
		if tr.Succeeded {
			return op, nil
		}
	}
	return nil, connect.NewError(connect.CodeAborted, fmt.Errorf("id: VM %s: too many concurrent changes, try again", id))
}

// notMigrating refuses changes to a VM while a live migration is in flight (until the
// leader finalized it): the operation ends within the migration's timeout.
func notMigrating(vm *pb.VM) error {
	if m := vm.GetMigration(); m != nil {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("id: VM %s is being live-migrated from %s to %s (operation %s); try again when it has finished",
			vm.Id, m.SourceHost, m.TargetHost, m.OperationId))
	}
	return nil
}

// converged reports whether the VM is placed and observed in the state power asks for.
func converged(vm *pb.VM, power pb.PowerState) bool {
	if vm.PowerState != power {
		return false
	}
	want := pb.VMState_VM_STATE_RUNNING
	if power == pb.PowerState_POWER_STATE_STOPPED {
		want = pb.VMState_VM_STATE_STOPPED
	}
	return vm.Host == "" || vm.Status.GetState() == want
}

func (s vmService) StartVM(ctx context.Context, req *connect.Request[pb.StartVMRequest]) (*connect.Response[pb.StartVMResponse], error) {
	op, err := s.c.mutate(ctx, req.Msg.Id, state.OpStart, func(vm *pb.VM, op *pb.Operation) (bool, error) {
		if converged(vm, pb.PowerState_POWER_STATE_RUNNING) {
			return true, nil
		}
		vm.PowerState = pb.PowerState_POWER_STATE_RUNNING
		delete(vm.Labels, state.LabelStop)
		delete(vm.Labels, state.LabelStopTimeout)
		vm.Labels[state.LabelStart] = op.Id
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StartVMResponse{Operation: op}), nil
}

func (s vmService) StopVM(ctx context.Context, req *connect.Request[pb.StopVMRequest]) (*connect.Response[pb.StopVMResponse], error) {
	r := req.Msg
	if r.TimeoutSeconds < 0 {
		return nil, invalid("timeout_seconds", "%d: negative", r.TimeoutSeconds)
	}
	if err := checkID("id", r.Id); err != nil {
		return nil, err
	}
	timeout := int32(60)
	if r.TimeoutSeconds > 0 {
		timeout = r.TimeoutSeconds
	}
	if r.Force {
		timeout = 0
	}
	op, err := s.c.mutate(ctx, r.Id, state.OpStop, func(vm *pb.VM, op *pb.Operation) (bool, error) {
		if converged(vm, pb.PowerState_POWER_STATE_STOPPED) {
			return true, nil
		}
		vm.PowerState = pb.PowerState_POWER_STATE_STOPPED
		delete(vm.Labels, state.LabelStart)
		vm.Labels[state.LabelStop] = op.Id
		vm.Labels[state.LabelStopTimeout] = strconv.Itoa(int(timeout))
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StopVMResponse{Operation: op}), nil
}

func (s vmService) RebootVM(ctx context.Context, req *connect.Request[pb.RebootVMRequest]) (*connect.Response[pb.RebootVMResponse], error) {
	op, err := s.c.mutate(ctx, req.Msg.Id, state.OpReboot, func(vm *pb.VM, op *pb.Operation) (bool, error) {
		if vm.PowerState != pb.PowerState_POWER_STATE_RUNNING {
			return false, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("id: VM %s is stopped; start it instead", vm.Id))
		}
		if vm.Host == "" {
			return true, nil // not running anywhere yet: nothing to reboot
		}
		vm.Labels[state.LabelReboot] = op.Id
		return false, nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.RebootVMResponse{Operation: op}), nil
}

// DeleteVM removes a VM never placed at once; a placed VM is marked (power STOPPED and
// the delete label) for its agent, and the leader removes the record once the agent
// has destroyed the domain and its disks. Deleting a VM being deleted returns the
// running delete operation.
func (s vmService) DeleteVM(ctx context.Context, req *connect.Request[pb.DeleteVMRequest]) (*connect.Response[pb.DeleteVMResponse], error) {
	c := s.c
	for range maxCAS {
		rec, err := c.getVisible(ctx, req.Msg.Id)
		if err != nil {
			return nil, err
		}
		vm := proto.Clone(rec.VM).(*pb.VM)
		vm.Status = nil
		if opID, ok := vm.Labels[state.LabelDelete]; ok {
			op, _, err := c.st.GetOperation(ctx, opID)
			if err != nil {
				return nil, toConnect(err)
			}
			return connect.NewResponse(&pb.DeleteVMResponse{Operation: op}), nil
		}
		if err := notMigrating(vm); err != nil {
			return nil, err
		}
		now := c.st.Now()
		op := &pb.Operation{Id: newUUID(), Kind: state.OpDelete, VmId: vm.Id, State: pb.OperationState_OPERATION_STATE_RUNNING, StartTime: now, Project: vm.Project}
		var t state.Txn
		if vm.Host == "" {
			op.State, op.EndTime, op.Reason = pb.OperationState_OPERATION_STATE_DONE, now, "never placed: removed at once"
			t = state.BuildRemoveVM(vm, rec.ModRevision, nil, 0, state.PutOp(op))
		} else {
			if vm.Labels == nil {
				vm.Labels = map[string]string{}
			}
			vm.PowerState = pb.PowerState_POWER_STATE_STOPPED
			vm.Labels[state.LabelDelete] = op.Id
			vm.Labels[state.LabelStopTimeout] = "0"
			vm.Generation++
			t = state.BuildUpdateVM(vm, rec.ModRevision, state.PutOp(op))
		}
		tr, err := c.st.Commit(ctx, t)
		if err != nil {
			return nil, toConnect(err)
		}
		if tr.Succeeded {
			if vm.Host == "" && vm.Labels[state.LabelCreate] != "" {
				if err := c.st.FinishOperation(ctx, vm.Labels[state.LabelCreate], pb.OperationState_OPERATION_STATE_FAILED, "deleted before it was placed"); err != nil {
					c.log.Warn("finish create operation", "vm", vm.Id, "err", err)
				}
			}
			c.Kick()
			return connect.NewResponse(&pb.DeleteVMResponse{Operation: op}), nil
		}
	}
	return nil, connect.NewError(connect.CodeAborted, fmt.Errorf("id: VM %s: too many concurrent changes, try again", req.Msg.Id))
}

// internalLabel is the prefix of the labels the controller and agents use to pass requests
// along in the VM record (reboot, delete, stop, start, create markers). Users cannot set
// them (label keys are names: no '.' or '/'), and the API does not show them.
const internalLabel = "plasmavmc.io/"

// apiView is vm as the API shows it: without internal labels. vm itself is not changed
// (it may be shared with a cache); a copy is made only when there is something to strip.
func apiView(vm *pb.VM) *pb.VM {
	strip := false
	for k := range vm.GetLabels() {
		if strings.HasPrefix(k, internalLabel) {
			strip = true
			break
		}
	}
	if !strip {
		return vm
	}
	out := proto.Clone(vm).(*pb.VM)
	for k := range out.Labels {
		if strings.HasPrefix(k, internalLabel) {
			delete(out.Labels, k)
		}
	}
	if len(out.Labels) == 0 {
		out.Labels = nil
	}
	return out
}
