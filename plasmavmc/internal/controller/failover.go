package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// failover handles the running VMs of every FENCED host, in spec.ha.priority order
// (higher first, then creation time): a VM with spec.ha.failover and every disk on the
// shared pool is moved to the scheduler's choice among the other hosts (one txn:
// epoch+1, both ledgers, status SCHEDULED, the vm.failover operation with its derived
// id); without room it is FAILED and retried next round while it stays on the fenced
// host; any other VM is HOST_DOWN with the reason. Idempotent: each move is one
// compare-and-swap on the VM record, so however many leaders run this pass one after
// the other, each VM moves once per fence.
func (c *Controller) failover(ctx context.Context, lease int64) error {
	hosts, _, err := c.st.ListHosts(ctx)
	if err != nil {
		return err
	}
	fencedHosts := map[string]*state.HostRecord{}
	for _, h := range hosts {
		if h.Health.GetState() == pb.HostState_HOST_STATE_FENCED {
			fencedHosts[h.Host.Name] = h
		}
	}
	if len(fencedHosts) == 0 {
		return nil
	}
	vms, _, err := c.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	byHost := map[string][]*pb.VM{}
	var work []*state.VMRecord
	for _, rec := range vms {
		vm := rec.VM
		if vm.Host == "" {
			continue
		}
		byHost[vm.Host] = append(byHost[vm.Host], vm)
		if fencedHosts[vm.Host] != nil && vm.PowerState == pb.PowerState_POWER_STATE_RUNNING &&
			vm.Labels[state.LabelDelete] == "" && vm.Migration == nil {
			work = append(work, rec)
		}
	}
	sort.SliceStable(work, func(i, j int) bool {
		a, b := work[i].VM, work[j].VM
		if pa, pb := a.Spec.GetHa().GetPriority(), b.Spec.GetHa().GetPriority(); pa != pb {
			return pa > pb
		}
		if ta, tb := a.GetCreateTime().AsTime(), b.GetCreateTime().AsTime(); !ta.Equal(tb) {
			return ta.Before(tb)
		}
		return a.Id < b.Id
	})
	var errs []error
	moved := 0
	for _, rec := range work {
		src := fencedHosts[rec.VM.Host]
		if why := noFailover(rec.VM); why != "" {
			if err := c.markHostDown(ctx, lease, rec, fmt.Sprintf("host %s fenced; %s", src.Host.Name, why)); err != nil {
				if errors.Is(err, errNotLeader) {
					return err
				}
				errs = append(errs, err)
			}
			continue
		}
		if max := c.cfg.HA.MaxFailoversPerPass; max > 0 && moved >= max {
			continue
		}
		ok, err := c.failoverOne(ctx, lease, rec, src, hosts, byHost)
		if err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			errs = append(errs, fmt.Errorf("failover of VM %s: %w", rec.VM.Id, err))
		}
		if ok {
			moved++
		}
	}
	return errors.Join(errs...)
}

// noFailover says why vm is not restarted elsewhere ("" when it is).
func noFailover(vm *pb.VM) string {
	if !vm.Spec.GetHa().GetFailover() {
		return "failover disabled"
	}
	for _, d := range vm.Spec.GetDisks() {
		if d.Pool != "shared" {
			return fmt.Sprintf("disk %s is on host-local pool %s", d.Name, d.Pool)
		}
	}
	return ""
}

// markHostDown records status HOST_DOWN with reason for a VM of a fenced host that is
// not restarted elsewhere (unless it already says so). Its agent restarts it when the
// host is back.
func (c *Controller) markHostDown(ctx context.Context, lease int64, rec *state.VMRecord, reason string) error {
	old := rec.VM.GetStatus()
	if old.GetState() == pb.VMState_VM_STATE_HOST_DOWN && old.GetReason() == reason {
		return nil
	}
	st := &pb.VMStatus{}
	if old != nil {
		st = proto.Clone(old).(*pb.VMStatus)
	}
	st.State, st.Reason, st.Host, st.UpdateTime = pb.VMState_VM_STATE_HOST_DOWN, reason, rec.VM.Host, c.st.Now()
	st.Heartbeat = nil
	tr, err := c.st.Commit(ctx, fenced(state.Txn{
		If: []chainfire.Cmp{
			state.Unchanged(state.VMKey(rec.VM.Id), rec.ModRevision),
			state.Unchanged(state.StatusKey(rec.VM.Id), rec.StatusModRevision),
		},
		Then: []chainfire.Op{state.PutStatusOp(rec.VM.Id, st)},
	}, lease))
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return c.lostRace(ctx, lease)
	}
	c.metrics.failovers.WithLabelValues("host_down").Inc()
	c.log.Warn("VM host down", "vm", rec.VM.Id, "name", rec.VM.Name, "reason", reason)
	// Operations waiting for its agent end now, with the reason (a no-op for finished ones).
	for _, l := range []string{state.LabelCreate, state.LabelStart, state.LabelStop, state.LabelReboot} {
		if id := rec.VM.Labels[l]; id != "" {
			if err := c.st.FinishOperation(ctx, id, pb.OperationState_OPERATION_STATE_FAILED, reason); err != nil {
				c.log.Warn("finish operation of a host-down VM", "vm", rec.VM.Id, "operation", id, "err", err)
			}
		}
	}
	return nil
}

// failoverOne moves one HA VM off fenced host src (ok: moved), or records why it
// cannot be (status FAILED, operation FAILED). hosts and byHost are updated with the
// move for the rest of the pass.
func (c *Controller) failoverOne(ctx context.Context, lease int64, rec *state.VMRecord, src *state.HostRecord, hosts []*state.HostRecord, byHost map[string][]*pb.VM) (bool, error) {
	for attempt := 0; attempt < 3; attempt++ {
		vm := rec.VM
		opID := state.FailoverOperationID(vm.Id, vm.Epoch)
		start := src.Health.GetFencedAt()
		if start == nil {
			start = c.st.Now()
		}
		cands, reasons := candidates(vm, hosts, byHost)
		if len(cands) == 0 {
			return false, c.failoverNoRoom(ctx, lease, rec, src, opID, reasons)
		}
		tgt := cands[0]
		moved := state.Moved(vm, tgt.Host.Name)
		res := state.VMResources(vm)
		ledgers := []state.Ledger{
			{Host: src.Host.Name, Rev: src.AllocRev, Alloc: state.Sub(src.Host.Allocated, res)},
			{Host: tgt.Host.Name, Rev: tgt.AllocRev, Alloc: state.Add(tgt.Host.Allocated, res)},
		}
		now := c.st.Now()
		st := &pb.VMStatus{State: pb.VMState_VM_STATE_SCHEDULED, Host: tgt.Host.Name, Reason: "failover from " + src.Host.Name,
			Epoch: moved.Epoch, UpdateTime: now}
		op := &pb.Operation{Id: opID, Kind: state.OpFailover, VmId: vm.Id, Project: vm.Project, Host: src.Host.Name,
			State: pb.OperationState_OPERATION_STATE_DONE, StartTime: start, EndTime: now,
			Reason: fmt.Sprintf("moved from %s to %s (epoch %d)", src.Host.Name, tgt.Host.Name, moved.Epoch)}
		tr, err := c.st.Commit(ctx, fenced(state.BuildMove(moved, rec.ModRevision, src.Host.Name, st, ledgers, state.PutOp(op)), lease))
		if err != nil {
			return false, err
		}
		if tr.Succeeded {
			rev := tr.GetHeader().GetRevision()
			src.Host.Allocated, src.AllocRev = ledgers[0].Alloc, rev
			tgt.Host.Allocated, tgt.AllocRev = ledgers[1].Alloc, rev
			byHost[tgt.Host.Name] = append(byHost[tgt.Host.Name], moved)
			c.metrics.failovers.WithLabelValues("moved").Inc()
			c.log.Info("failover", "vm", vm.Id, "name", vm.Name, "from", src.Host.Name, "to", tgt.Host.Name, "epoch", moved.Epoch, "operation", opID)
			return true, nil
		}
		if err := c.lostRace(ctx, lease); err != nil {
			return false, err
		}
		// Lost a race: re-read the VM and the hosts, and try again.
		fresh, err := c.st.GetVM(ctx, vm.Id)
		if errors.Is(err, state.ErrNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if fresh.VM.Host != src.Host.Name || fresh.VM.Migration != nil || fresh.VM.Labels[state.LabelDelete] != "" {
			return false, nil // moved (by another leader's pass) or changed: nothing left to do
		}
		rec = fresh
		list, _, err := c.st.ListHosts(ctx)
		if err != nil {
			return false, err
		}
		for _, h := range list {
			for _, old := range hosts {
				if old.Host.Name == h.Host.Name {
					*old = *h
				}
			}
			if h.Host.Name == src.Host.Name {
				*src = *h
			}
		}
	}
	return false, nil
}

// failoverNoRoom records that no host has room for a VM of fenced host src: status
// FAILED and the failover operation FAILED with the scheduler's reasons (written only
// when the reason changed).
func (c *Controller) failoverNoRoom(ctx context.Context, lease int64, rec *state.VMRecord, src *state.HostRecord, opID string, reasons []string) error {
	reason := "failover: no host has room (" + strings.Join(reasons, "; ") + ")"
	if len(reasons) == 0 {
		reason = "failover: no host has room (no other host)"
	}
	if len(reason) > 1024 {
		reason = reason[:1020] + "...)"
	}
	if old := rec.VM.GetStatus(); old.GetState() == pb.VMState_VM_STATE_FAILED && old.GetReason() == reason {
		return nil
	}
	now := c.st.Now()
	start := src.Health.GetFencedAt()
	if start == nil {
		start = now
	}
	st := &pb.VMStatus{State: pb.VMState_VM_STATE_FAILED, Host: rec.VM.Host, Reason: reason, Epoch: rec.VM.Epoch, UpdateTime: now}
	op := &pb.Operation{Id: opID, Kind: state.OpFailover, VmId: rec.VM.Id, Project: rec.VM.Project, Host: src.Host.Name,
		State: pb.OperationState_OPERATION_STATE_FAILED, StartTime: start, EndTime: now, Reason: reason}
	tr, err := c.st.Commit(ctx, fenced(state.Txn{
		If:   []chainfire.Cmp{state.Unchanged(state.VMKey(rec.VM.Id), rec.ModRevision)},
		Then: []chainfire.Op{state.PutStatusOp(rec.VM.Id, st), state.PutOp(op)},
	}, lease))
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return c.lostRace(ctx, lease)
	}
	c.metrics.failovers.WithLabelValues("no_room").Inc()
	c.log.Warn("failover: no room", "vm", rec.VM.Id, "name", rec.VM.Name, "host", src.Host.Name, "reason", reason)
	return nil
}
