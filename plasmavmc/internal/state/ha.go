package state

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// HA and live migration (issue 7): host health, host events, maintenance, the move of a
// VM to another host (failover, a drain's record-only move) and a migration's records.
//
// Every change of a VM's host increments VM.epoch and goes through one txn comparing
// the ModRevision of /vms/<id> and of every ledger it changes, so a move happens at most
// once however many controllers (or a controller and the source agent) race for it.

// DecodeHealth decodes a /health/ value.
func DecodeHealth(key string, data []byte) (*pb.HostHealth, error) {
	h := &pb.HostHealth{}
	return h, Decode(key, data, h)
}

// DecodeHostEvent decodes a /hostevents/ value.
func DecodeHostEvent(key string, data []byte) (*pb.HostEvent, error) {
	e := &pb.HostEvent{}
	return e, Decode(key, data, e)
}

// PutHealthOp is the operation that stores h at /health/<h.host>.
func PutHealthOp(h *pb.HostHealth) chainfire.Op {
	return chainfire.OpPut(HealthKey(h.Host), Encode(h))
}

// PutHostEventOp is the operation that stores ev at /hostevents/<host>/<time> on lease
// (0: none; the controller uses a 24 h lease).
func PutHostEventOp(ev *pb.HostEvent, lease int64) chainfire.Op {
	var opts []chainfire.OpOption
	if lease != 0 {
		opts = append(opts, chainfire.WithLease(lease))
	}
	return chainfire.OpPut(HostEventKey(ev.Host, ev.GetTime().AsTime()), Encode(ev), opts...)
}

// ListHostEvents reads the events of host ("": every host), oldest first.
func (s *Store) ListHostEvents(ctx context.Context, host string) ([]*pb.HostEvent, error) {
	resp, err := s.c.Get(ctx, HostEventsPrefix(host), chainfire.WithPrefix())
	if err != nil {
		return nil, unavailable("list host events", err)
	}
	out := make([]*pb.HostEvent, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		ev, err := DecodeHostEvent(string(kv.Key), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, ev)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].GetTime().AsTime().Before(out[j].GetTime().AsTime()) })
	return out, nil
}

// SetMaintenance puts (on) or deletes /maintenance/<host>. It does not check that the
// host exists.
func (s *Store) SetMaintenance(ctx context.Context, host string, on bool) error {
	var err error
	if on {
		_, err = s.c.Put(ctx, MaintenanceKey(host), "1")
	} else {
		_, err = s.c.Delete(ctx, MaintenanceKey(host))
	}
	if err != nil {
		return unavailable("maintenance of "+host, err)
	}
	return nil
}

// FailoverOperationID is the id of the vm.failover operation that moves VM vmID off the
// host it had at epoch: derived, not random, so that a new controller leader finishing
// a failover finds (and never doubles) the operation of the old one. UUID-shaped.
func FailoverOperationID(vmID string, epoch int64) string {
	b := sha256.Sum256([]byte("plasmavmc/failover/" + vmID + "/" + strconv.FormatInt(epoch, 10)))
	b[6] = b[6]&0x0f | 0x50
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ---------------------------------------------------------------------------------------
// Moves (pure builders)

// Ledger is a new value of a host's allocation ledger, applied only while the ledger is
// still at Rev (its ModRevision as read; 0: absent).
type Ledger struct {
	Host  string
	Rev   int64
	Alloc *pb.Resources
}

func (t *Txn) ledgers(ls []Ledger) {
	for _, l := range ls {
		t.If = append(t.If, Unchanged(AllocKey(l.Host), l.Rev))
		t.Then = append(t.Then, chainfire.OpPut(AllocKey(l.Host), Encode(l.Alloc)))
	}
}

// Moved returns a copy of vm (status cleared) placed on target: host = target,
// epoch + 1, generation + 1. The migration field is left as it is.
func Moved(vm *pb.VM, target string) *pb.VM {
	m := StoredVM(vm)
	m.Host = target
	m.Epoch++
	m.Generation++
	return m
}

// BuildMove is the change of host of a VM without live migration (failover off a fenced
// host, a drain's move of a stopped VM): moved (see [Moved]) was read at vmRev on host
// from. It puts /vms/<id> and /assigned/<moved.host>/<id>, deletes
// /assigned/<from>/<id>, writes the ledgers (typically the target's += and the source's
// -=) and status st (nil: left alone), plus extra (the operation), only if the record
// and every ledger are unchanged since they were read.
func BuildMove(moved *pb.VM, vmRev int64, from string, st *pb.VMStatus, ledgers []Ledger, extra ...chainfire.Op) Txn {
	rec := Encode(StoredVM(moved))
	t := Txn{
		If: []chainfire.Cmp{Unchanged(VMKey(moved.Id), vmRev)},
		Then: []chainfire.Op{
			chainfire.OpPut(VMKey(moved.Id), rec),
			chainfire.OpPut(AssignedKey(moved.Host, moved.Id), rec),
		},
	}
	if from != "" && from != moved.Host {
		t.Then = append(t.Then, chainfire.OpDelete(AssignedKey(from, moved.Id)))
	}
	t.ledgers(ledgers)
	if st != nil {
		t.Then = append(t.Then, PutStatusOp(moved.Id, st))
	}
	t.Then = append(t.Then, extra...)
	return t
}

// BuildMigrationStart records a requested live migration: vm (read at vmRev, still on
// its source vm.Host) carries Migration (target, options, source_epoch = epoch,
// operation id) and generation + 1. It reserves the target's ledger (target: the new
// value), puts /vms/<id>, /assigned/<source>/<id> and /assigned/<target>/<id> (the
// target agent's copy, so it prepares and never destroys the incoming domain), status
// st (MIGRATING) and op (vm.migrate RUNNING), only if the record and the ledger are
// unchanged.
func BuildMigrationStart(vm *pb.VM, vmRev int64, target Ledger, st *pb.VMStatus, op *pb.Operation) Txn {
	rec := Encode(StoredVM(vm))
	t := Txn{
		If: []chainfire.Cmp{Unchanged(VMKey(vm.Id), vmRev)},
		Then: []chainfire.Op{
			chainfire.OpPut(VMKey(vm.Id), rec),
			chainfire.OpPut(AssignedKey(vm.Host, vm.Id), rec),
			chainfire.OpPut(AssignedKey(vm.Migration.GetTargetHost(), vm.Id), rec),
			PutStatusOp(vm.Id, st),
			PutOp(op),
		},
	}
	t.ledgers([]Ledger{target})
	return t
}

// BuildCompleteMigration is the switch of ownership at the end of a successful live
// migration: vm (read at vmRev, still on the source, Migration set) becomes host =
// target, epoch = source_epoch + 1, generation + 1, migration kept (the target agent
// adopts the incoming domain by it); /vms/<id> and /assigned/<target>/<id> are put,
// /assigned/<source>/<id> deleted, and op (read at opRev, RUNNING) is stored DONE with
// figures p (phase "done") and end time end. Only if neither the record nor the
// operation changed — a migration the controller timed out is never switched. It
// returns the txn and the new record.
func BuildCompleteMigration(vm *pb.VM, vmRev int64, op *pb.Operation, opRev int64, p *pb.MigrationProgress, end *timestamppb.Timestamp) (Txn, *pb.VM) {
	m := vm.GetMigration()
	sw := StoredVM(vm)
	sw.Host = m.GetTargetHost()
	sw.Epoch = m.GetSourceEpoch() + 1
	sw.Generation++
	done := proto.Clone(op).(*pb.Operation)
	done.State, done.EndTime = pb.OperationState_OPERATION_STATE_DONE, end
	done.Migration = migrationFigures(p, m, "done")
	rec := Encode(sw)
	return Txn{
		If: []chainfire.Cmp{Unchanged(VMKey(vm.Id), vmRev), Unchanged(OperationKey(op.Id), opRev)},
		Then: []chainfire.Op{
			chainfire.OpPut(VMKey(vm.Id), rec),
			chainfire.OpPut(AssignedKey(sw.Host, vm.Id), rec),
			chainfire.OpDelete(AssignedKey(m.GetSourceHost(), vm.Id)),
			PutOp(done),
		},
	}, sw
}

// migrationFigures is p (copied; nil: empty) with the hosts filled in and phase set
// (unless phase is "" ).
func migrationFigures(p *pb.MigrationProgress, m *pb.Migration, phase string) *pb.MigrationProgress {
	out := &pb.MigrationProgress{}
	if p != nil {
		out = proto.Clone(p).(*pb.MigrationProgress)
	}
	if out.SourceHost == "" {
		out.SourceHost = m.GetSourceHost()
	}
	if out.TargetHost == "" {
		out.TargetHost = m.GetTargetHost()
	}
	if phase != "" {
		out.Phase = phase
	}
	return out
}

// BuildMigrationDone is the controller's finalization of a switched migration (vm read
// at vmRev: host = target, Migration set, the operation DONE): migration cleared on
// /vms/<id> and /assigned/<target>/<id>, /assigned/<source>/<id> deleted if still there,
// the source's reservation released (source: the new value of the source's ledger).
func BuildMigrationDone(vm *pb.VM, vmRev int64, source Ledger, extra ...chainfire.Op) Txn {
	return buildMigrationEnd(vm, vmRev, vm.GetMigration().GetSourceHost(), source, extra)
}

// BuildMigrationAbort is the controller's finalization of a migration that failed (or
// was given up) before the switch (vm read at vmRev: host = source, Migration set):
// migration cleared on /vms/<id> and /assigned/<source>/<id>, /assigned/<target>/<id>
// deleted, the target's reservation released (target: the new value of its ledger),
// plus extra (a status).
func BuildMigrationAbort(vm *pb.VM, vmRev int64, target Ledger, extra ...chainfire.Op) Txn {
	return buildMigrationEnd(vm, vmRev, vm.GetMigration().GetTargetHost(), target, extra)
}

// buildMigrationEnd clears the migration on the VM where it now is (vm.Host), deletes the
// assignment copy on the other host of the migration and applies that host's ledger.
func buildMigrationEnd(vm *pb.VM, vmRev int64, other string, ledger Ledger, extra []chainfire.Op) Txn {
	c := StoredVM(vm)
	c.Migration = nil
	rec := Encode(c)
	t := Txn{
		If: []chainfire.Cmp{Unchanged(VMKey(vm.Id), vmRev)},
		Then: []chainfire.Op{
			chainfire.OpPut(VMKey(vm.Id), rec),
			chainfire.OpPut(AssignedKey(c.Host, vm.Id), rec),
		},
	}
	if other != "" && other != c.Host {
		t.Then = append(t.Then, chainfire.OpDelete(AssignedKey(other, vm.Id)))
	}
	t.ledgers([]Ledger{ledger})
	t.Then = append(t.Then, extra...)
	return t
}

// ---------------------------------------------------------------------------------------
// Migrations (the source agent's calls)

// ErrMigrationGone is wrapped when the migration to complete or report on is no longer
// in flight (cleared, failed or timed out by the controller, or another host's).
var ErrMigrationGone = errors.New("state: migration no longer in flight")

// CompleteMigration is the source agent's switch txn after driver.Migrate succeeded: see
// [BuildCompleteMigration]. source is the calling agent's host; p the figures (total,
// downtime, …). Idempotent: when the switch already happened (a retry after an unknown
// outcome) it returns the switched record and nil. ErrMigrationGone when the VM has no
// migration from source any more, or its operation is no longer RUNNING (the controller
// failed it: the agent must not claim the VM moved); ErrNotFound when the VM is gone.
func (s *Store) CompleteMigration(ctx context.Context, source, id string, p *pb.MigrationProgress) (*pb.VM, error) {
	for range maxCAS {
		rec, err := s.GetVM(ctx, id)
		if err != nil {
			return nil, err
		}
		vm, m := rec.VM, rec.VM.GetMigration()
		if m == nil || m.SourceHost != source {
			return nil, fmt.Errorf("%w: vm %q has no migration from host %q", ErrMigrationGone, id, source)
		}
		if vm.Host == m.TargetHost && vm.Epoch == m.SourceEpoch+1 {
			return StoredVM(vm), nil // switched already
		}
		if vm.Host != source {
			return nil, fmt.Errorf("%w: vm %q is on host %q", ErrMigrationGone, id, vm.Host)
		}
		op, opRev, err := s.GetOperation(ctx, m.OperationId)
		if err != nil {
			return nil, err
		}
		if op.State != pb.OperationState_OPERATION_STATE_RUNNING {
			return nil, fmt.Errorf("%w: operation %s of vm %q is %s (%s)", ErrMigrationGone, op.Id, id, op.State, op.Reason)
		}
		t, sw := BuildCompleteMigration(vm, rec.ModRevision, op, opRev, p, s.Now())
		tr, err := s.Commit(ctx, t)
		if err != nil {
			return nil, err
		}
		if tr.Succeeded {
			return sw, nil
		}
	}
	return nil, fmt.Errorf("%w: completing the migration of vm %q", ErrConflict, id)
}

// UpdateMigrationProgress stores p (hosts filled in from the operation's) as operation
// opID's progress while it is RUNNING; a finished or absent operation is left alone
// (ErrMigrationGone, so the agent may cancel the migration the controller gave up).
func (s *Store) UpdateMigrationProgress(ctx context.Context, opID string, p *pb.MigrationProgress) error {
	return s.updateMigrationOp(ctx, opID, func(op *pb.Operation) {
		op.Migration = mergeProgress(op.Migration, p, "")
	})
}

// FailMigration finishes operation opID FAILED with reason and the figures p (nil: the
// last progress recorded; phase "failed" unless p says "cancelled"): the source agent's report of a migration that
// did not switch (the VM keeps running on the source). ErrMigrationGone when the
// operation is no longer RUNNING.
func (s *Store) FailMigration(ctx context.Context, opID, reason string, p *pb.MigrationProgress) error {
	return s.updateMigrationOp(ctx, opID, func(op *pb.Operation) {
		phase := "failed"
		if p.GetPhase() == "cancelled" {
			phase = "cancelled"
		}
		op.Migration = mergeProgress(op.Migration, p, phase)
		op.State, op.Reason, op.EndTime = pb.OperationState_OPERATION_STATE_FAILED, reason, s.Now()
	})
}

// mergeProgress is p (nil: the old progress, kept) with the hosts taken from old when
// p has none, and phase set when not "".
func mergeProgress(old, p *pb.MigrationProgress, phase string) *pb.MigrationProgress {
	out := &pb.MigrationProgress{}
	switch {
	case p != nil:
		out = proto.Clone(p).(*pb.MigrationProgress)
	case old != nil:
		out = proto.Clone(old).(*pb.MigrationProgress)
	}
	if out.SourceHost == "" {
		out.SourceHost = old.GetSourceHost()
	}
	if out.TargetHost == "" {
		out.TargetHost = old.GetTargetHost()
	}
	if phase != "" {
		out.Phase = phase
	}
	return out
}

func (s *Store) updateMigrationOp(ctx context.Context, opID string, change func(op *pb.Operation)) error {
	for range maxCAS {
		op, rev, err := s.GetOperation(ctx, opID)
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%w: %w", ErrMigrationGone, err)
		}
		if err != nil {
			return err
		}
		if op.State != pb.OperationState_OPERATION_STATE_RUNNING {
			return fmt.Errorf("%w: operation %s is %s (%s)", ErrMigrationGone, opID, op.State, op.Reason)
		}
		change(op)
		tr, err := s.Commit(ctx, Txn{If: []chainfire.Cmp{Unchanged(OperationKey(opID), rev)}, Then: []chainfire.Op{PutOp(op)}})
		if err != nil {
			return err
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: operation %q", ErrConflict, opID)
}
