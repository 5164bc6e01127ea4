package controller

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// errNotLeader ends a pass whose fence failed: this replica no longer leads.
var errNotLeader = errors.New("controller: not the leader any more")

// runLeader runs scheduling passes while ctx (leadership) lasts: on a kick from this
// replica's API, on a change under /plasmavmc/ that can create work (a VM record, an
// assigned copy, a host or its heartbeat), and every ScheduleInterval.
func (c *Controller) runLeader(ctx context.Context, lease int64) {
	c.metrics.leader.Set(1)
	defer c.metrics.leader.Set(0)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		defer cancel() // the HA manager found it no longer leads: so does the scheduler
		c.runHA(ctx, lease)
	})
	defer wg.Wait()
	defer cancel()
	watch := c.cf.Watch(ctx, state.Prefix, chainfire.WithPrefix())
	tick := time.NewTicker(c.cfg.ScheduleInterval)
	defer tick.Stop()
	for ctx.Err() == nil {
		if err := c.Pass(ctx, lease); err != nil {
			if errors.Is(err, errNotLeader) {
				c.log.Warn("fenced: another replica leads")
				return
			}
			if ctx.Err() == nil {
				c.log.Warn("scheduling pass", "err", err)
			}
		}
	wait:
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-tick.C:
		case w, ok := <-watch:
			if !ok {
				watch = c.cf.Watch(ctx, state.Prefix, chainfire.WithPrefix())
				continue
			}
			if !relevant(w) {
				goto wait
			}
		}
	}
}

// relevant reports whether a watch response may create scheduling or housekeeping
// work (status writes by agents do not).
func relevant(w chainfire.WatchResponse) bool {
	if w.Relist {
		return true
	}
	for _, ev := range w.Events {
		k := string(ev.Kv.GetKey())
		if strings.HasPrefix(k, state.PrefixVMs) || strings.HasPrefix(k, state.PrefixAssigned) ||
			strings.HasPrefix(k, state.PrefixAlive) || strings.HasPrefix(k, state.PrefixHosts) {
			return true
		}
	}
	return false
}

// Pass runs one round of housekeeping and scheduling, fenced by lease (the caller's
// leader lease; 0 disables the fence, for tests that force schedulers). It returns
// errNotLeader when the fence failed.
func (c *Controller) Pass(ctx context.Context, lease int64) error {
	start := time.Now()
	defer func() { c.metrics.passSeconds.Observe(time.Since(start).Seconds()) }()
	vms, _, err := c.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	hosts, _, err := c.st.ListHosts(ctx)
	if err != nil {
		return err
	}
	ag, err := c.cf.Get(ctx, state.PrefixAssigned, chainfire.WithPrefix(), chainfire.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("%w: list assigned: %w", state.ErrUnavailable, err)
	}
	assigned := map[string]bool{}
	for _, kv := range ag.Kvs {
		assigned[string(kv.Key)] = true
	}
	byHost := map[string][]*pb.VM{}
	counts := map[pb.VMState]int{}
	var pending []*state.VMRecord
	var errs []error
	for _, rec := range vms {
		vm := rec.VM
		counts[vm.GetStatus().GetState()]++
		switch {
		case vm.Host != "" && vm.Labels[state.LabelDelete] != "" && !assigned[state.AssignedKey(vm.Host, vm.Id)]:
			if err := c.finishDelete(ctx, lease, rec); err != nil {
				errs = append(errs, err)
			}
		case vm.Host != "":
			byHost[vm.Host] = append(byHost[vm.Host], vm)
		case vm.Labels[state.LabelDelete] == "":
			pending = append(pending, rec)
		}
	}
	c.metrics.setCounts(counts)
	sort.SliceStable(pending, func(i, j int) bool {
		return pending[i].VM.GetCreateTime().AsTime().Before(pending[j].VM.GetCreateTime().AsTime())
	})
	for _, rec := range pending {
		if err := c.place(ctx, lease, rec, hosts, byHost); err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// fenced adds the leader fence to t (lease 0: none).
func fenced(t state.Txn, lease int64) state.Txn {
	if lease != 0 {
		t.If = append(t.If, Fence(lease))
	}
	return t
}

// candidates filters and weighs the hosts for vm: UP, enough free vCPUs and memory,
// every pool the VM uses, no VM of the same project carrying one of its anti-affinity
// labels; then most free memory first, then fewest VMs of the project (spread), then
// name. reasons says why each excluded host was.
func candidates(vm *pb.VM, hosts []*state.HostRecord, byHost map[string][]*pb.VM) ([]*state.HostRecord, []string) {
	need := state.VMResources(vm)
	pools := map[string]bool{bootPool(vm.Spec): true}
	for _, d := range vm.Spec.GetDisks() {
		pools[d.Pool] = true
	}
	var out []*state.HostRecord
	var reasons []string
	projectVMs := map[string]int{}
hosts:
	for _, h := range hosts {
		name := h.Host.Name
		if !h.Schedulable() {
			reasons = append(reasons, fmt.Sprintf("%s: %s", name, strings.TrimPrefix(h.Host.State.String(), "HOST_STATE_")))
			continue
		}
		free := h.Free()
		if free.Vcpus < need.Vcpus || free.MemoryMib < need.MemoryMib {
			reasons = append(reasons, fmt.Sprintf("%s: %d vCPUs and %d MiB free", name, free.Vcpus, free.MemoryMib))
			continue
		}
		for p := range pools {
			if !hasPool(h.Host, p) {
				reasons = append(reasons, fmt.Sprintf("%s: no pool %q", name, p))
				continue hosts
			}
		}
		for _, other := range byHost[name] {
			if other.Project != vm.Project {
				continue
			}
			projectVMs[name]++
			for _, a := range vm.Spec.GetAntiAffinity() {
				k, v, _ := strings.Cut(a, "=")
				if other.Labels[k] == v {
					reasons = append(reasons, fmt.Sprintf("%s: anti-affinity %s with VM %s", name, a, other.Name))
					continue hosts
				}
			}
		}
		out = append(out, h)
	}
	sort.SliceStable(out, func(i, j int) bool {
		fi, fj := out[i].Free().MemoryMib, out[j].Free().MemoryMib
		if fi != fj {
			return fi > fj
		}
		pi, pj := projectVMs[out[i].Host.Name], projectVMs[out[j].Host.Name]
		if pi != pj {
			return pi < pj
		}
		return out[i].Host.Name < out[j].Host.Name
	})
	return out, reasons
}

func hasPool(h *pb.Host, pool string) bool {
	for _, p := range h.Pools {
		if p == pool {
			return true
		}
	}
	return false
}

// place schedules one PENDING VM: the best candidate's ledger is compare-and-swapped
// together with the VM record, its assigned copy and status SCHEDULED. On a lost race
// it re-reads the VM and the host and tries again. hosts and byHost are updated with
// the placement for the rest of the pass.
func (c *Controller) place(ctx context.Context, lease int64, rec *state.VMRecord, hosts []*state.HostRecord, byHost map[string][]*pb.VM) error {
	for range maxCAS {
		cands, reasons := candidates(rec.VM, hosts, byHost)
		if len(cands) == 0 {
			return c.unschedulable(ctx, lease, rec, reasons)
		}
		h := cands[0]
		vm := proto.Clone(rec.VM).(*pb.VM)
		vm.Status = nil
		vm.Host = h.Host.Name
		vm.Epoch++ // 1 at the first placement
		alloc := state.Add(h.Host.Allocated, state.VMResources(vm))
		st := &pb.VMStatus{State: pb.VMState_VM_STATE_SCHEDULED, Host: vm.Host, Reason: "placed on " + vm.Host, Epoch: vm.Epoch, UpdateTime: c.st.Now()}
		tr, err := c.st.Commit(ctx, fenced(state.BuildSchedule(vm, rec.ModRevision, alloc, h.AllocRev, st), lease))
		if err != nil {
			return err
		}
		if tr.Succeeded {
			h.Host.Allocated, h.AllocRev = alloc, tr.GetHeader().GetRevision()
			byHost[vm.Host] = append(byHost[vm.Host], vm)
			c.metrics.placements.Inc()
			return nil
		}
		c.metrics.conflicts.Inc()
		// Lost a race: find out with what.
		fresh, err := c.st.GetVM(ctx, vm.Id)
		if errors.Is(err, state.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if fresh.VM.Host != "" || fresh.VM.Labels[state.LabelDelete] != "" {
			return nil
		}
		nh, err := c.st.GetHost(ctx, h.Host.Name)
		if err != nil && !errors.Is(err, state.ErrNotFound) {
			return err
		}
		if fresh.ModRevision == rec.ModRevision && nh != nil && nh.AllocRev == h.AllocRev {
			if lease != 0 && !c.stillLeader(ctx, lease) {
				return errNotLeader
			}
		}
		rec = fresh
		if nh != nil {
			*h = *nh
		}
	}
	return fmt.Errorf("%w: placing VM %s", state.ErrConflict, rec.VM.Id)
}

// stillLeader reads whether lease still holds the leader key.
func (c *Controller) stillLeader(ctx context.Context, lease int64) bool {
	g, err := c.cf.Get(ctx, state.KeyLeader)
	return err == nil && len(g.Kvs) == 1 && g.Kvs[0].Lease == lease
}

// unschedulable records why no host fits in the PENDING status (only when the reason
// changed, to keep ChainFire quiet).
func (c *Controller) unschedulable(ctx context.Context, lease int64, rec *state.VMRecord, reasons []string) error {
	reason := "no host fits"
	if len(reasons) == 0 {
		reason += ": no hosts registered"
	} else {
		reason += ": " + strings.Join(reasons, "; ")
	}
	if len(reason) > 1024 {
		reason = reason[:1021] + "..."
	}
	if rec.VM.GetStatus().GetReason() == reason {
		return nil
	}
	st := &pb.VMStatus{State: pb.VMState_VM_STATE_PENDING, Reason: reason, UpdateTime: c.st.Now()}
	_, err := c.st.Commit(ctx, fenced(state.Txn{
		If: []chainfire.Cmp{
			state.Unchanged(state.VMKey(rec.VM.Id), rec.ModRevision),
			state.Unchanged(state.StatusKey(rec.VM.Id), rec.StatusModRevision),
		},
		Then: []chainfire.Op{state.PutStatusOp(rec.VM.Id, st)},
	}, lease))
	return err
}

// finishDelete is the last step of a placed VM's delete, once its agent removed the
// assigned copy: remove the record, the name and any status, free the ledger, and
// finish the delete operation — one txn, retried on a lost race.
func (c *Controller) finishDelete(ctx context.Context, lease int64, rec *state.VMRecord) error {
	vm := rec.VM
	opID := vm.Labels[state.LabelDelete]
	for range maxCAS {
		g, err := c.cf.Txn(ctx).Then(chainfire.OpGet(state.AllocKey(vm.Host)), chainfire.OpGet(state.OperationKey(opID))).Commit()
		if err != nil {
			return fmt.Errorf("%w: read alloc: %w", state.ErrUnavailable, err)
		}
		var alloc *pb.Resources
		var allocRev int64
		if kv := state.RangeKvs(g, 0); len(kv) > 0 {
			if alloc, err = state.DecodeResources(string(kv[0].Key), kv[0].Value); err != nil {
				return err
			}
			allocRev = kv[0].ModRevision
			alloc = state.Sub(alloc, state.VMResources(vm))
		}
		var extra []chainfire.Op
		t := state.BuildRemoveVM(vm, rec.ModRevision, alloc, allocRev)
		if kv := state.RangeKvs(g, 1); len(kv) > 0 {
			op, err := state.DecodeOperation(string(kv[0].Key), kv[0].Value)
			if err != nil {
				return err
			}
			if op.State == pb.OperationState_OPERATION_STATE_RUNNING {
				op.State, op.EndTime = pb.OperationState_OPERATION_STATE_DONE, c.st.Now()
				t.If = append(t.If, state.Unchanged(string(kv[0].Key), kv[0].ModRevision))
				extra = append(extra, state.PutOp(op))
			}
		}
		t.Then = append(t.Then, extra...)
		tr, err := c.st.Commit(ctx, fenced(t, lease))
		if err != nil {
			return err
		}
		if tr.Succeeded {
			c.metrics.deletes.Inc()
			for _, l := range []string{state.LabelCreate, state.LabelStart, state.LabelStop, state.LabelReboot} {
				if id := vm.Labels[l]; id != "" {
					_ = c.st.FinishOperation(ctx, id, pb.OperationState_OPERATION_STATE_FAILED, "VM deleted")
				}
			}
			return nil
		}
		fresh, err := c.st.GetVM(ctx, vm.Id)
		if errors.Is(err, state.ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		if fresh.ModRevision != rec.ModRevision {
			rec, vm = fresh, fresh.VM
			continue
		}
		if lease != 0 && !c.stillLeader(ctx, lease) {
			return errNotLeader
		}
	}
	return fmt.Errorf("%w: finishing delete of VM %s", state.ErrConflict, vm.Id)
}
