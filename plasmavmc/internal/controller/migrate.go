package controller

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// Live migration, controller side. MigrateVM (any replica) validates and records the
// request in one txn (state.BuildMigrationStart); the source host's agent performs it
// and switches ownership (state.Store.CompleteMigration) or fails the operation; the
// leader's housekeeping (migrationHousekeeping) finalizes either way and fails
// operations that stopped making progress.

// MigrateVM live-migrates a running VM whose disks are all on the shared pool to
// to_host (or the scheduler's choice). Errors name the field: FailedPrecondition for a
// VM that is not running, already migrating, being deleted, has a disk on a host-local
// pool, or a target that is not UP, has no migration_uri or no room; InvalidArgument for
// the VM's own host; NotFound for an unknown VM or host.
func (s vmService) MigrateVM(ctx context.Context, req *connect.Request[pb.MigrateVMRequest]) (*connect.Response[pb.MigrateVMResponse], error) {
	r := req.Msg
	if err := checkID("id", r.Id); err != nil {
		return nil, err
	}
	if r.ToHost != "" {
		if err := checkName("to_host", r.ToHost); err != nil {
			return nil, err
		}
	}
	if r.TimeoutSeconds != nil && *r.TimeoutSeconds <= 0 {
		return nil, invalid("timeout_seconds", "%d: must be positive", *r.TimeoutSeconds)
	}
	if r.PostCopyAfterSeconds != nil && *r.PostCopyAfterSeconds < 0 {
		return nil, invalid("post_copy_after_seconds", "%d: negative", *r.PostCopyAfterSeconds)
	}
	if r.MaxBandwidthMib != nil && *r.MaxBandwidthMib < 0 {
		return nil, invalid("max_bandwidth_mib", "%d: negative", *r.MaxBandwidthMib)
	}
	if r.MaxDowntimeMs != nil && (*r.MaxDowntimeMs < 0 || *r.MaxDowntimeMs > 60000) {
		return nil, invalid("max_downtime_ms", "%d: must be 0 (adaptive) to 60000", *r.MaxDowntimeMs)
	}
	m := s.c.migrationOptions(r)
	op, err := s.c.startMigration(ctx, 0, r.ToHost, m, func(ctx context.Context) (*state.VMRecord, error) {
		return s.c.getVisible(ctx, r.Id)
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.MigrateVMResponse{Operation: op}), nil
}

// migrationOptions is the request's options over the controller's defaults.
func (c *Controller) migrationOptions(r *pb.MigrateVMRequest) *pb.Migration {
	d := c.cfg.Migration
	m := &pb.Migration{
		AutoConverge:         d.AutoConverge,
		PostCopyAfterSeconds: int32(d.PostCopyAfter / time.Second),
		TimeoutSeconds:       int32(d.Timeout / time.Second),
		MaxBandwidthMib:      d.MaxBandwidthMiB,
	}
	if m.TimeoutSeconds <= 0 {
		m.TimeoutSeconds = 120
	}
	if r == nil {
		return m
	}
	if r.AutoConverge != nil {
		m.AutoConverge = *r.AutoConverge
	}
	if r.PostCopyAfterSeconds != nil {
		m.PostCopyAfterSeconds = *r.PostCopyAfterSeconds
	}
	if r.TimeoutSeconds != nil {
		m.TimeoutSeconds = *r.TimeoutSeconds
	}
	if r.MaxBandwidthMib != nil {
		m.MaxBandwidthMib = *r.MaxBandwidthMib
	}
	if r.MaxDowntimeMs != nil {
		m.MaxDowntimeMs = *r.MaxDowntimeMs
	}
	return m
}

func failedPrecondition(format string, args ...any) error {
	return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf(format, args...))
}

// migratable checks that vm may be live-migrated at all (the target aside).
func migratable(vm *pb.VM) error {
	if opID := vm.Labels[state.LabelDelete]; opID != "" {
		return failedPrecondition("id: VM %s is being deleted (operation %s)", vm.Id, opID)
	}
	if m := vm.Migration; m != nil {
		return failedPrecondition("id: VM %s is already migrating from %s to %s (operation %s)", vm.Id, m.SourceHost, m.TargetHost, m.OperationId)
	}
	st := vm.GetStatus()
	if vm.PowerState != pb.PowerState_POWER_STATE_RUNNING || vm.Host == "" || st.GetState() != pb.VMState_VM_STATE_RUNNING || st.GetHost() != vm.Host {
		return failedPrecondition("id: VM %s is not running on a host (state %s, power %s); only a running VM can be live-migrated",
			vm.Id, strings.ToLower(strings.TrimPrefix(st.GetState().String(), "VM_STATE_")), strings.ToLower(strings.TrimPrefix(vm.PowerState.String(), "POWER_STATE_")))
	}
	for i, d := range vm.Spec.GetDisks() {
		if d.Pool != "shared" {
			return failedPrecondition("spec.disks[%d]: disk %s of VM %s is on host-local pool %s; live migration needs every disk on pool shared", i, d.Name, vm.Id, d.Pool)
		}
	}
	return nil
}

// startMigration validates and records a migration of the VM read by get to host to
// ("": the scheduler's choice) with options m (operation id, hosts and epoch are filled
// in here). lease fences the txn (0: none, the API's path). It returns the vm.migrate
// operation RUNNING, or a Connect error naming the field.
func (c *Controller) startMigration(ctx context.Context, lease int64, to string, m *pb.Migration, get func(context.Context) (*state.VMRecord, error)) (*pb.Operation, error) {
	for range maxCAS {
		rec, err := get(ctx)
		if err != nil {
			return nil, err
		}
		vm := rec.VM
		if err := migratable(vm); err != nil {
			return nil, err
		}
		hosts, _, err := c.st.ListHosts(ctx)
		if err != nil {
			return nil, toConnect(err)
		}
		vms, _, err := c.st.ListVMs(ctx)
		if err != nil {
			return nil, toConnect(err)
		}
		byHost := map[string][]*pb.VM{}
		for _, r := range vms {
			if r.VM.Host != "" {
				byHost[r.VM.Host] = append(byHost[r.VM.Host], r.VM)
			}
		}
		var src *state.HostRecord
		for _, h := range hosts {
			if h.Host.Name == vm.Host {
				src = h
			}
		}
		if src == nil || !src.Alive || (src.Host.State != pb.HostState_HOST_STATE_UP && src.Host.State != pb.HostState_HOST_STATE_MAINTENANCE) {
			hs := "unknown"
			if src != nil {
				hs = stateName(src.Host.State)
			}
			return nil, failedPrecondition("id: VM %s's host %s is %s; only a VM on a healthy host can be live-migrated", vm.Id, vm.Host, hs)
		}
		target, err := pickMigrationTarget(vm, to, hosts, byHost)
		if err != nil {
			return nil, err
		}
		now := c.st.Now()
		op := &pb.Operation{Id: newUUID(), Kind: state.OpMigrate, VmId: vm.Id, State: pb.OperationState_OPERATION_STATE_RUNNING,
			StartTime: now, Project: vm.Project,
			Migration: &pb.MigrationProgress{SourceHost: vm.Host, TargetHost: target.Host.Name, Phase: "precopy"}}
		mig := proto.Clone(m).(*pb.Migration)
		mig.OperationId, mig.SourceHost, mig.TargetHost, mig.SourceEpoch = op.Id, vm.Host, target.Host.Name, vm.Epoch
		next := state.StoredVM(vm)
		next.Migration = mig
		next.Generation++
		st := proto.Clone(vm.Status).(*pb.VMStatus)
		st.State, st.Reason, st.UpdateTime = pb.VMState_VM_STATE_MIGRATING, fmt.Sprintf("migrating to %s (operation %s)", target.Host.Name, op.Id), now
		ledger := state.Ledger{Host: target.Host.Name, Rev: target.AllocRev, Alloc: state.Add(target.Host.Allocated, state.VMResources(vm))}
		tr, err := c.st.Commit(ctx, fenced(state.BuildMigrationStart(next, rec.ModRevision, ledger, st, op), lease))
		if err != nil {
			return nil, toConnect(err)
		}
		if tr.Succeeded {
			c.metrics.migrations.WithLabelValues("started").Inc()
			c.log.Info("migration requested", "vm", vm.Id, "from", vm.Host, "to", target.Host.Name, "operation", op.Id)
			return op, nil
		}
		if lease != 0 && !c.stillLeader(ctx, lease) {
			return nil, errNotLeader
		}
	}
	return nil, connect.NewError(connect.CodeAborted, errors.New("id: too many concurrent changes, try again"))
}

// pickMigrationTarget checks host to (or picks one when empty) for vm: UP (so not in
// maintenance), not vm's host, with a migration_uri and room (the scheduler's filter).
func pickMigrationTarget(vm *pb.VM, to string, hosts []*state.HostRecord, byHost map[string][]*pb.VM) (*state.HostRecord, error) {
	if to != "" {
		if to == vm.Host {
			return nil, invalid("to_host", "%s is VM %s's host already", to, vm.Id)
		}
		var t *state.HostRecord
		for _, h := range hosts {
			if h.Host.Name == to {
				t = h
			}
		}
		if t == nil {
			return nil, notFound("to_host: host %q not found", to)
		}
		if t.Host.State != pb.HostState_HOST_STATE_UP {
			why := stateName(t.Host.State)
			if t.Host.StateReason != "" {
				why += " (" + t.Host.StateReason + ")"
			}
			return nil, failedPrecondition("to_host: host %s is %s", to, why)
		}
		if t.Host.MigrationUri == "" {
			return nil, failedPrecondition("to_host: host %s has no migration_uri (its agent cannot receive live migrations)", to)
		}
		cands, reasons := candidates(vm, []*state.HostRecord{t}, byHost)
		if len(cands) == 0 {
			return nil, failedPrecondition("to_host: host %s cannot take VM %s: %s", to, vm.Id, strings.Join(reasons, "; "))
		}
		return cands[0], nil
	}
	var pool []*state.HostRecord
	var reasons []string
	for _, h := range hosts {
		switch {
		case h.Host.Name == vm.Host:
		case h.Host.MigrationUri == "" && h.Host.State == pb.HostState_HOST_STATE_UP:
			reasons = append(reasons, h.Host.Name+": no migration_uri")
		default:
			pool = append(pool, h)
		}
	}
	cands, more := candidates(vm, pool, byHost)
	if len(cands) == 0 {
		reasons = append(reasons, more...)
		if len(reasons) == 0 {
			reasons = []string{"no other host"}
		}
		return nil, failedPrecondition("to_host: no host can take VM %s: %s", vm.Id, strings.Join(reasons, "; "))
	}
	return cands[0], nil
}

// migrationHousekeeping finalizes every VM's migration whose operation ended, and fails
// the operations that cannot end by themselves: the source or the target host fenced,
// or still RUNNING MigrationGrace after the migration's timeout.
func (c *Controller) migrationHousekeeping(ctx context.Context, lease int64) error {
	vms, _, err := c.st.ListVMs(ctx)
	if err != nil {
		return err
	}
	var hosts map[string]*state.HostRecord
	var errs []error
	for _, rec := range vms {
		if rec.VM.Migration == nil {
			continue
		}
		if hosts == nil {
			list, _, err := c.st.ListHosts(ctx)
			if err != nil {
				return err
			}
			hosts = map[string]*state.HostRecord{}
			for _, h := range list {
				hosts[h.Host.Name] = h
			}
		}
		if err := c.finalizeMigration(ctx, lease, rec, hosts); err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			errs = append(errs, fmt.Errorf("migration of VM %s: %w", rec.VM.Id, err))
		}
	}
	return errors.Join(errs...)
}

func fencedHost(hosts map[string]*state.HostRecord, name string) bool {
	h := hosts[name]
	return h != nil && h.Health.GetState() == pb.HostState_HOST_STATE_FENCED
}

// finalizeMigration handles one VM with a migration in flight.
func (c *Controller) finalizeMigration(ctx context.Context, lease int64, rec *state.VMRecord, hosts map[string]*state.HostRecord) error {
	vm, m := rec.VM, rec.VM.Migration
	op, _, err := c.st.GetOperation(ctx, m.OperationId)
	switch {
	case errors.Is(err, state.ErrNotFound):
		op = &pb.Operation{Id: m.OperationId, State: pb.OperationState_OPERATION_STATE_FAILED, Reason: "operation record missing"}
	case err != nil:
		return err
	}
	now := c.now()
	if op.State == pb.OperationState_OPERATION_STATE_RUNNING {
		var reason string
		deadline := op.GetStartTime().AsTime().Add(time.Duration(m.TimeoutSeconds)*time.Second + c.cfg.HA.MigrationGrace)
		switch {
		case fencedHost(hosts, m.SourceHost):
			reason = fmt.Sprintf("source host %s fenced", m.SourceHost)
		case fencedHost(hosts, m.TargetHost):
			reason = fmt.Sprintf("target host %s fenced", m.TargetHost)
		case now.After(deadline):
			reason = fmt.Sprintf("no progress from agent on %s: still running %v after the %d s timeout", m.SourceHost, c.cfg.HA.MigrationGrace, m.TimeoutSeconds)
			c.metrics.timedOutOps.Inc()
		default:
			return nil
		}
		if err := c.st.FailMigration(ctx, op.Id, reason, nil); err != nil && !errors.Is(err, state.ErrMigrationGone) {
			return err
		}
		c.log.Warn("migration failed by the leader", "vm", vm.Id, "operation", op.Id, "reason", reason)
		if op, _, err = c.st.GetOperation(ctx, m.OperationId); err != nil {
			return err
		}
	}
	if op.State == pb.OperationState_OPERATION_STATE_RUNNING {
		return nil
	}
	res := state.VMResources(vm)
	if op.State == pb.OperationState_OPERATION_STATE_DONE && vm.Host == m.TargetHost && vm.Host != m.SourceHost {
		// Switched: wait for the target's report at the new epoch (or give up waiting when
		// the target is fenced or silent for the grace period).
		st := vm.GetStatus()
		reported := st.GetEpoch() == vm.Epoch && st.GetHost() == vm.Host
		if !reported && !fencedHost(hosts, vm.Host) && now.Before(op.GetEndTime().AsTime().Add(c.cfg.HA.MigrationGrace)) {
			return nil
		}
		src := hosts[m.SourceHost]
		ledger := state.Ledger{Host: m.SourceHost}
		if src != nil {
			ledger.Rev, ledger.Alloc = src.AllocRev, state.Sub(src.Host.Allocated, res)
		} else {
			ledger.Alloc = &pb.Resources{}
		}
		tr, err := c.st.Commit(ctx, fenced(state.BuildMigrationDone(vm, rec.ModRevision, ledger), lease))
		if err != nil {
			return err
		}
		if !tr.Succeeded {
			return c.lostRace(ctx, lease)
		}
		if src != nil {
			src.Host.Allocated, src.AllocRev = ledger.Alloc, tr.GetHeader().GetRevision()
		}
		c.metrics.migrations.WithLabelValues("done").Inc()
		c.log.Info("migration finalized", "vm", vm.Id, "from", m.SourceHost, "to", vm.Host, "epoch", vm.Epoch, "target_reported", reported)
		return nil
	}
	// Not switched (failed, or given up): the VM stays on the source.
	tgt := hosts[m.TargetHost]
	ledger := state.Ledger{Host: m.TargetHost, Alloc: &pb.Resources{}}
	if tgt != nil {
		ledger.Rev, ledger.Alloc = tgt.AllocRev, state.Sub(tgt.Host.Allocated, res)
	}
	var extra []chainfire.Op
	if vm.GetStatus().GetState() == pb.VMState_VM_STATE_MIGRATING {
		st := proto.Clone(vm.Status).(*pb.VMStatus)
		st.State, st.Reason, st.UpdateTime = pb.VMState_VM_STATE_RUNNING, fmt.Sprintf("migration to %s failed: %s", m.TargetHost, op.Reason), c.st.Now()
		extra = append(extra, chainfire.OpTxn([]chainfire.Cmp{state.Unchanged(state.StatusKey(vm.Id), rec.StatusModRevision)},
			[]chainfire.Op{state.PutStatusOp(vm.Id, st)}, nil))
	}
	tr, err := c.st.Commit(ctx, fenced(state.BuildMigrationAbort(vm, rec.ModRevision, ledger, extra...), lease))
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return c.lostRace(ctx, lease)
	}
	if tgt != nil {
		tgt.Host.Allocated, tgt.AllocRev = ledger.Alloc, tr.GetHeader().GetRevision()
	}
	c.metrics.migrations.WithLabelValues("failed").Inc()
	c.log.Warn("migration failed; VM stays on its source", "vm", vm.Id, "source", vm.Host, "target", m.TargetHost, "reason", op.Reason)
	return nil
}

// lostRace is what a leader's failed compare-and-swap means: errNotLeader when the
// fence failed, else nil (something changed meanwhile: decided again next round).
func (c *Controller) lostRace(ctx context.Context, lease int64) error {
	if lease != 0 && !c.stillLeader(ctx, lease) {
		return errNotLeader
	}
	c.metrics.conflicts.Inc()
	return nil
}
