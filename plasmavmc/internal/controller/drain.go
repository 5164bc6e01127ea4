package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// Drain: DrainHost (any replica) puts /maintenance/<host> and a host.drain operation
// RUNNING; the leader's runDrains advances every RUNNING drain each round, reading
// everything it needs back from ChainFire (so a new leader resumes a drain where the
// last one stopped): it live-migrates the host's running VMs one at a time (as
// MigrateVM with the scheduler's choice), moves stopped VMs with shared disks by record
// only (epoch+1), and finishes the operation DONE when the host is empty, or FAILED
// listing each VM left and why once nothing else can move.

// DrainHost puts host name in maintenance and starts draining it. A host already being
// drained returns the running drain operation.
func (s hostService) DrainHost(ctx context.Context, req *connect.Request[pb.DrainHostRequest]) (*connect.Response[pb.DrainHostResponse], error) {
	c := s.c
	name := req.Msg.Name
	if err := checkName("name", name); err != nil {
		return nil, err
	}
	if _, err := c.st.GetHost(ctx, name); err != nil {
		return nil, toConnect(err)
	}
	running, err := c.runningDrains(ctx, name)
	if err != nil {
		return nil, toConnect(err)
	}
	if len(running) > 0 {
		return connect.NewResponse(&pb.DrainHostResponse{Operation: running[0]}), nil
	}
	op := &pb.Operation{Id: newUUID(), Kind: state.OpDrain, Host: name, State: pb.OperationState_OPERATION_STATE_RUNNING,
		StartTime: c.st.Now(), Reason: "draining"}
	if _, err := c.st.Commit(ctx, state.Txn{Then: []chainfire.Op{
		chainfire.OpPut(state.MaintenanceKey(name), "1"),
		state.PutOp(op),
	}}); err != nil {
		return nil, toConnect(err)
	}
	c.log.Info("drain requested", "host", name, "operation", op.Id)
	return connect.NewResponse(&pb.DrainHostResponse{Operation: op}), nil
}

// UndrainHost returns host name to service: deletes /maintenance/<name> and fails a
// drain still running ("cancelled: host undrained"). Migrations already started go on.
func (s hostService) UndrainHost(ctx context.Context, req *connect.Request[pb.UndrainHostRequest]) (*connect.Response[pb.UndrainHostResponse], error) {
	c := s.c
	name := req.Msg.Name
	if err := checkName("name", name); err != nil {
		return nil, err
	}
	if _, err := c.st.GetHost(ctx, name); err != nil {
		return nil, toConnect(err)
	}
	if err := c.st.SetMaintenance(ctx, name, false); err != nil {
		return nil, toConnect(err)
	}
	running, err := c.runningDrains(ctx, name)
	if err != nil {
		return nil, toConnect(err)
	}
	for _, op := range running {
		if err := c.st.FinishOperation(ctx, op.Id, pb.OperationState_OPERATION_STATE_FAILED, "cancelled: host undrained"); err != nil {
			return nil, toConnect(err)
		}
	}
	h, err := c.st.GetHost(ctx, name)
	if err != nil {
		return nil, toConnect(err)
	}
	c.log.Info("host undrained", "host", name)
	return connect.NewResponse(&pb.UndrainHostResponse{Host: h.Host}), nil
}

// runningDrains reads the RUNNING host.drain operations (of host, when not empty).
func (c *Controller) runningDrains(ctx context.Context, host string) ([]*pb.Operation, error) {
	ops, err := c.st.ListOperations(ctx, "")
	if err != nil {
		return nil, err
	}
	return drainsIn(ops, host), nil
}

// drainsIn picks the RUNNING host.drain operations (of host, when not empty) out of ops.
func drainsIn(ops []*pb.Operation, host string) []*pb.Operation {
	var out []*pb.Operation
	for _, op := range ops {
		if op.Kind == state.OpDrain && op.State == pb.OperationState_OPERATION_STATE_RUNNING && (host == "" || op.Host == host) {
			out = append(out, op)
		}
	}
	return out
}

// runDrains advances every RUNNING drain by one step.
func (c *Controller) runDrains(ctx context.Context, lease int64) error {
	ops, err := c.st.ListOperations(ctx, "")
	if err != nil {
		return err
	}
	drains := drainsIn(ops, "")
	if len(drains) == 0 {
		return nil
	}
	var errs []error
	for _, d := range drains {
		if err := c.drainStep(ctx, lease, d, ops); err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			errs = append(errs, fmt.Errorf("drain of %s: %w", d.Host, err))
		}
	}
	return errors.Join(errs...)
}

// drainStep advances drain d (ops: every operation, to find the migrations it started).
func (c *Controller) drainStep(ctx context.Context, lease int64, d *pb.Operation, ops []*pb.Operation) error {
	finish := func(st pb.OperationState, reason string) error {
		if err := c.st.FinishOperation(ctx, d.Id, st, reason); err != nil {
			return err
		}
		result := "done"
		if st != pb.OperationState_OPERATION_STATE_DONE {
			result = "failed"
		}
		c.metrics.drains.WithLabelValues(result).Inc()
		c.log.Info("drain finished", "host", d.Host, "operation", d.Id, "result", result, "reason", reason)
		return nil
	}
	h, err := c.st.GetHost(ctx, d.Host)
	if errors.Is(err, state.ErrNotFound) {
		return finish(pb.OperationState_OPERATION_STATE_FAILED, "host not found")
	}
	if err != nil {
		return err
	}
	if !h.Maintenance {
		return finish(pb.OperationState_OPERATION_STATE_FAILED, "cancelled: host undrained")
	}
	vms, _, err := c.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	// The last migration this drain started for each VM (since the drain began, from
	// this host).
	lastMigration := map[string]*pb.Operation{}
	for _, op := range ops {
		if op.Kind == state.OpMigrate && op.Migration.GetSourceHost() == d.Host &&
			!op.GetStartTime().AsTime().Before(d.GetStartTime().AsTime()) {
			lastMigration[op.VmId] = op // ops are oldest first
		}
	}
	var on []*state.VMRecord
	for _, rec := range vms {
		if rec.VM.Host == d.Host {
			on = append(on, rec)
		}
	}
	if len(on) == 0 {
		return finish(pb.OperationState_OPERATION_STATE_DONE, "host empty")
	}
	sort.SliceStable(on, func(i, j int) bool {
		a, b := on[i].VM, on[j].VM
		if pa, pb := a.Spec.GetHa().GetPriority(), b.Spec.GetHa().GetPriority(); pa != pb {
			return pa > pb
		}
		return a.GetCreateTime().AsTime().Before(b.GetCreateTime().AsTime())
	})
	var left []string
	var live, byRecord []*state.VMRecord
	waiting, migrating := 0, false
	for _, rec := range on {
		vm := rec.VM
		name := fmt.Sprintf("VM %s (%s)", vm.Name, vm.Id)
		if vm.Labels[state.LabelDelete] != "" {
			waiting++ // its delete finishes soon
			continue
		}
		if vm.Migration != nil {
			waiting++
			migrating = true
			continue
		}
		if op := lastMigration[vm.Id]; op != nil && op.State == pb.OperationState_OPERATION_STATE_FAILED {
			left = append(left, fmt.Sprintf("%s: migration failed: %s", name, op.Reason))
			continue
		}
		if why := localDisk(vm); why != "" {
			left = append(left, fmt.Sprintf("%s: %s", name, why))
			continue
		}
		if vm.PowerState == pb.PowerState_POWER_STATE_RUNNING {
			switch vm.GetStatus().GetState() {
			case pb.VMState_VM_STATE_RUNNING:
				live = append(live, rec)
				continue
			case pb.VMState_VM_STATE_PENDING, pb.VMState_VM_STATE_SCHEDULED, pb.VMState_VM_STATE_STARTING,
				pb.VMState_VM_STATE_STOPPING, pb.VMState_VM_STATE_MIGRATING, pb.VMState_VM_STATE_UNKNOWN:
				waiting++ // settling: decided next round
				continue
			}
		}
		byRecord = append(byRecord, rec) // stopped (or failed): nothing runs, move the record
	}
	for _, rec := range byRecord {
		why, err := c.moveByRecord(ctx, lease, rec, h)
		if err != nil {
			return err
		}
		if why != "" {
			left = append(left, fmt.Sprintf("VM %s (%s): %s", rec.VM.Name, rec.VM.Id, why))
		}
	}
	if !migrating {
		for _, rec := range live {
			id := rec.VM.Id
			_, err := c.startMigration(ctx, lease, "", c.migrationOptions(nil), func(ctx context.Context) (*state.VMRecord, error) {
				r, err := c.st.GetVM(ctx, id)
				return r, toConnect(err)
			})
			if err == nil {
				migrating = true
				break
			}
			if errors.Is(err, errNotLeader) {
				return err
			}
			if connect.CodeOf(err) != connect.CodeFailedPrecondition {
				return err
			}
			left = append(left, fmt.Sprintf("VM %s (%s): %s", rec.VM.Name, id, connectMessage(err)))
		}
	} else if len(live) > 0 {
		waiting += len(live)
	}
	if migrating || waiting > 0 {
		return nil
	}
	if len(left) == 0 {
		return nil // everything moved by record this round: DONE next round, once re-read
	}
	return finish(pb.OperationState_OPERATION_STATE_FAILED, fmt.Sprintf("%d VM(s) left on %s: %s", len(left), d.Host, strings.Join(left, "; ")))
}

// localDisk says which disk of vm keeps it on its host ("" when all are shared).
func localDisk(vm *pb.VM) string {
	for _, d := range vm.Spec.GetDisks() {
		if d.Pool != "shared" {
			return fmt.Sprintf("disk %s is on host-local pool %s", d.Name, d.Pool)
		}
	}
	return ""
}

// connectMessage is a Connect error's message without the code.
func connectMessage(err error) string {
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce.Message()
	}
	return err.Error()
}

// moveByRecord moves a VM that does not run (stopped, failed) off host src to the
// scheduler's choice: record only (epoch+1, both ledgers), status kept with the new
// host. It returns why it could not ("" when moved, or when the VM changed meanwhile).
func (c *Controller) moveByRecord(ctx context.Context, lease int64, rec *state.VMRecord, src *state.HostRecord) (string, error) {
	hosts, _, err := c.st.ListHosts(ctx)
	if err != nil {
		return "", err
	}
	vms, _, err := c.st.ListVMs(ctx)
	if err != nil {
		return "", err
	}
	byHost := map[string][]*pb.VM{}
	for _, r := range vms {
		if r.VM.Host != "" {
			byHost[r.VM.Host] = append(byHost[r.VM.Host], r.VM)
		}
	}
	vm := rec.VM
	cands, reasons := candidates(vm, hosts, byHost)
	if len(cands) == 0 {
		return "no host has room (" + strings.Join(reasons, "; ") + ")", nil
	}
	tgt := cands[0]
	for _, h := range hosts {
		if h.Host.Name == src.Host.Name {
			src = h
		}
	}
	moved := state.Moved(vm, tgt.Host.Name)
	res := state.VMResources(vm)
	ledgers := []state.Ledger{
		{Host: src.Host.Name, Rev: src.AllocRev, Alloc: state.Sub(src.Host.Allocated, res)},
		{Host: tgt.Host.Name, Rev: tgt.AllocRev, Alloc: state.Add(tgt.Host.Allocated, res)},
	}
	st := &pb.VMStatus{}
	if vm.Status != nil {
		st = proto.Clone(vm.Status).(*pb.VMStatus)
	}
	st.Host, st.Epoch, st.UpdateTime = tgt.Host.Name, moved.Epoch, c.st.Now()
	st.Reason = strings.TrimSpace(st.Reason + " (moved from " + src.Host.Name + " by a drain)")
	tr, err := c.st.Commit(ctx, fenced(state.BuildMove(moved, rec.ModRevision, src.Host.Name, st, ledgers), lease))
	if err != nil {
		return "", err
	}
	if !tr.Succeeded {
		return "", c.lostRace(ctx, lease)
	}
	c.log.Info("drain: moved by record", "vm", vm.Id, "from", src.Host.Name, "to", tgt.Host.Name, "epoch", moved.Epoch)
	return "", nil
}
