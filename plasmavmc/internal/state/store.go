package state

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// maxCAS bounds the read-modify-write retries of one call under contention.
const maxCAS = 32

// Store reads and writes the layout over one ChainFire client. It holds no cached
// state; any number of Stores in any number of processes may share a ChainFire. Safe
// for concurrent use. The client is the caller's: it closes it after the last use.
type Store struct {
	c   *chainfire.Client
	now func() time.Time
}

// New returns a Store over c; now is the clock (nil: time.Now).
func New(c *chainfire.Client, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{c: c, now: now}
}

// Client returns the ChainFire client the Store uses.
func (s *Store) Client() *chainfire.Client { return s.c }

// Now returns the Store's clock reading as a proto timestamp.
func (s *Store) Now() *timestamppb.Timestamp { return timestamppb.New(s.now()) }

func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, err)
}

// Txn is a transaction under construction: compares and the operations applied when
// all hold (Then) or not (Else, typically gets that explain the failure).
type Txn struct {
	If   []chainfire.Cmp
	Then []chainfire.Op
	Else []chainfire.Op
}

// Commit runs t. A ChainFire failure wraps ErrUnavailable (and chainfire.ErrOutcomeUnknown
// when the write may have been applied: re-read before retrying a non-idempotent change).
func (s *Store) Commit(ctx context.Context, t Txn) (*etcdserverpb.TxnResponse, error) {
	resp, err := s.c.Txn(ctx).If(t.If...).Then(t.Then...).Else(t.Else...).Commit()
	if err != nil {
		return nil, unavailable("txn", err)
	}
	return resp, nil
}

// Absent holds while key does not exist.
func Absent(key string) chainfire.Cmp {
	return chainfire.Compare(chainfire.CreateRevision(key), "=", 0)
}

// Exists holds while key exists.
func Exists(key string) chainfire.Cmp {
	return chainfire.Compare(chainfire.CreateRevision(key), ">", 0)
}

// Unchanged holds while key is at modRev (0: still absent).
func Unchanged(key string, modRev int64) chainfire.Cmp {
	return chainfire.Compare(chainfire.ModRevision(key), "=", modRev)
}

// RangeKvs returns the key-values of the i-th response of a txn (a get).
func RangeKvs(resp *etcdserverpb.TxnResponse, i int) []*mvccpb.KeyValue {
	if i >= len(resp.GetResponses()) {
		return nil
	}
	return resp.Responses[i].GetResponseRange().GetKvs()
}

// ---------------------------------------------------------------------------------------
// VMs

// VMRecord is a VM as read: the record with its status merged into VM.Status (nil when
// there is no status key), and the revisions compare-and-swap writers need.
type VMRecord struct {
	VM                *pb.VM
	ModRevision       int64 // of /vms/<id>
	StatusModRevision int64 // of /status/<id>; 0: absent
}

// GetVM reads VM id with its status. ErrNotFound when there is no such VM.
func (s *Store) GetVM(ctx context.Context, id string) (*VMRecord, error) {
	resp, err := s.c.Txn(ctx).Then(chainfire.OpGet(VMKey(id)), chainfire.OpGet(StatusKey(id))).Commit()
	if err != nil {
		return nil, unavailable("read vm "+id, err)
	}
	vms, sts := RangeKvs(resp, 0), RangeKvs(resp, 1)
	if len(vms) == 0 {
		return nil, fmt.Errorf("%w: vm %q", ErrNotFound, id)
	}
	return merge(vms[0], first(sts))
}

func first(kvs []*mvccpb.KeyValue) *mvccpb.KeyValue {
	if len(kvs) == 0 {
		return nil
	}
	return kvs[0]
}

func merge(vmKV, stKV *mvccpb.KeyValue) (*VMRecord, error) {
	vm, err := DecodeVM(string(vmKV.Key), vmKV.Value)
	if err != nil {
		return nil, err
	}
	rec := &VMRecord{VM: vm, ModRevision: vmKV.ModRevision}
	if stKV != nil {
		st, err := DecodeStatus(string(stKV.Key), stKV.Value)
		if err != nil {
			return nil, err
		}
		vm.Status = st
		rec.StatusModRevision = stKV.ModRevision
	}
	return rec, nil
}

// ListVMs reads every VM with its status, at one revision (returned), sorted by
// project, then name.
func (s *Store) ListVMs(ctx context.Context) ([]*VMRecord, int64, error) {
	resp, err := s.c.Txn(ctx).Then(
		chainfire.OpGet(PrefixVMs, chainfire.WithPrefix()),
		chainfire.OpGet(PrefixStatus, chainfire.WithPrefix()),
	).Commit()
	if err != nil {
		return nil, 0, unavailable("list vms", err)
	}
	status := map[string]*mvccpb.KeyValue{}
	for _, kv := range RangeKvs(resp, 1) {
		status[LastSegment(string(kv.Key))] = kv
	}
	out := make([]*VMRecord, 0, len(RangeKvs(resp, 0)))
	for _, kv := range RangeKvs(resp, 0) {
		rec, err := merge(kv, status[LastSegment(string(kv.Key))])
		if err != nil {
			return nil, 0, err
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].VM, out[j].VM
		if a.Project != b.Project {
			return a.Project < b.Project
		}
		return a.Name < b.Name
	})
	return out, resp.GetHeader().GetRevision(), nil
}

// ListAssigned reads the VM records placed on host (the agent's desired state) and the
// revision of the read, to watch from revision+1.
func (s *Store) ListAssigned(ctx context.Context, host string) ([]*pb.VM, int64, error) {
	resp, err := s.c.Get(ctx, AssignedPrefix(host), chainfire.WithPrefix())
	if err != nil {
		return nil, 0, unavailable("list assigned "+host, err)
	}
	out := make([]*pb.VM, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		vm, err := DecodeVM(string(kv.Key), kv.Value)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, vm)
	}
	return out, resp.GetHeader().GetRevision(), nil
}

// PutStatus writes VM id's status as host's agent observed it. It applies only while
// the VM is assigned to host; otherwise (deleted, moved) it returns ErrNotFound and
// writes nothing. update_time and host are filled in when empty.
func (s *Store) PutStatus(ctx context.Context, host, id string, st *pb.VMStatus) error {
	st = proto.Clone(st).(*pb.VMStatus)
	if st.Host == "" {
		st.Host = host
	}
	if st.UpdateTime == nil {
		st.UpdateTime = s.Now()
	}
	resp, err := s.Commit(ctx, Txn{
		If:   []chainfire.Cmp{Exists(AssignedKey(host, id))},
		Then: []chainfire.Op{chainfire.OpPut(StatusKey(id), Encode(st))},
	})
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: vm %q is not assigned to host %q", ErrNotFound, id, host)
	}
	return nil
}

// AgentDeleted is the agent's last step of a delete: the domain and disks are gone, so
// /status/<id> and /assigned/<host>/<id> are removed together; the controller's
// housekeeping then removes the record and frees the allocation. Idempotent.
func (s *Store) AgentDeleted(ctx context.Context, host, id string) error {
	_, err := s.Commit(ctx, Txn{Then: []chainfire.Op{
		chainfire.OpDelete(AssignedKey(host, id)),
		chainfire.OpDelete(StatusKey(id)),
	}})
	return err
}

// ---------------------------------------------------------------------------------------
// Transactions of the controller (pure builders)

// BuildCreate is the create txn: it succeeds only if the VM id, the name in its project
// and the request id are all unused, and then writes the record, the name, the request
// (on requestLease, 0: none), status PENDING and the RUNNING operation. Else it reads
// the request key (response 0) and the name key (response 1), so the caller tells a
// retried request from a duplicate name.
func BuildCreate(vm *pb.VM, st *pb.VMStatus, op *pb.Operation, requestID string, requestLease int64) Txn {
	var leaseOpt []chainfire.OpOption
	if requestLease != 0 {
		leaseOpt = append(leaseOpt, chainfire.WithLease(requestLease))
	}
	return Txn{
		If: []chainfire.Cmp{
			Absent(VMKey(vm.Id)),
			Absent(NameKey(vm.Project, vm.Name)),
			Absent(RequestKey(requestID)),
		},
		Then: []chainfire.Op{
			chainfire.OpPut(VMKey(vm.Id), Encode(StoredVM(vm))),
			chainfire.OpPut(NameKey(vm.Project, vm.Name), vm.Id),
			chainfire.OpPut(RequestKey(requestID), EncodeRequest(RequestRecord{VMID: vm.Id, OperationID: op.Id}), leaseOpt...),
			chainfire.OpPut(StatusKey(vm.Id), Encode(st)),
			chainfire.OpPut(OperationKey(op.Id), Encode(op)),
		},
		Else: []chainfire.Op{
			chainfire.OpGet(RequestKey(requestID)),
			chainfire.OpGet(NameKey(vm.Project, vm.Name)),
		},
	}
}

// BuildSchedule is the placement txn: vm (with Host set) was read at vmRev, host's
// ledger at allocRev; alloc is the new ledger (old + the VM's resources). It writes the
// ledger, the record, the assigned copy and status st (SCHEDULED) only if neither the
// ledger nor the record changed since — the compare-and-swap that keeps two schedulers
// from overcommitting a host.
func BuildSchedule(vm *pb.VM, vmRev int64, alloc *pb.Resources, allocRev int64, st *pb.VMStatus) Txn {
	rec := Encode(StoredVM(vm))
	return Txn{
		If: []chainfire.Cmp{
			Unchanged(VMKey(vm.Id), vmRev),
			Unchanged(AllocKey(vm.Host), allocRev),
		},
		Then: []chainfire.Op{
			chainfire.OpPut(AllocKey(vm.Host), Encode(alloc)),
			chainfire.OpPut(VMKey(vm.Id), rec),
			chainfire.OpPut(AssignedKey(vm.Host, vm.Id), rec),
			chainfire.OpPut(StatusKey(vm.Id), Encode(st)),
		},
	}
}

// BuildUpdateVM writes a changed record read at vmRev (and its assigned copy when it is
// placed, and the migration target's copy while a migration to another host is in
// flight), plus the given extra operations (operation records, a status), if the record
// did not change since.
func BuildUpdateVM(vm *pb.VM, vmRev int64, extra ...chainfire.Op) Txn {
	rec := Encode(StoredVM(vm))
	then := []chainfire.Op{chainfire.OpPut(VMKey(vm.Id), rec)}
	if vm.Host != "" {
		then = append(then, chainfire.OpPut(AssignedKey(vm.Host, vm.Id), rec))
	}
	if tg := vm.GetMigration().GetTargetHost(); vm.Host != "" && tg != "" && tg != vm.Host {
		then = append(then, chainfire.OpPut(AssignedKey(tg, vm.Id), rec))
	}
	return Txn{If: []chainfire.Cmp{Unchanged(VMKey(vm.Id), vmRev)}, Then: append(then, extra...)}
}

// BuildRemoveVM removes a VM record read at vmRev with its name and status, if the
// record did not change since: the delete of a VM never placed (alloc nil) or the last
// step of a placed VM's delete, after its agent called AgentDeleted (then the assigned
// copy must be absent and alloc is the host's ledger minus the VM's resources, read at
// allocRev). extra are applied too (the finished operation).
func BuildRemoveVM(vm *pb.VM, vmRev int64, alloc *pb.Resources, allocRev int64, extra ...chainfire.Op) Txn {
	t := Txn{
		If: []chainfire.Cmp{Unchanged(VMKey(vm.Id), vmRev)},
		Then: []chainfire.Op{
			chainfire.OpDelete(VMKey(vm.Id)),
			chainfire.OpDelete(StatusKey(vm.Id)),
		},
	}
	// The name may have been reused only after this delete, so delete it only while it
	// still names this VM.
	t.Then = append(t.Then, chainfire.OpTxn(
		[]chainfire.Cmp{chainfire.Compare(chainfire.Value(NameKey(vm.Project, vm.Name)), "=", vm.Id)},
		[]chainfire.Op{chainfire.OpDelete(NameKey(vm.Project, vm.Name))}, nil))
	if vm.Host != "" {
		t.If = append(t.If, Absent(AssignedKey(vm.Host, vm.Id)))
		if alloc != nil {
			t.If = append(t.If, Unchanged(AllocKey(vm.Host), allocRev))
			t.Then = append(t.Then, chainfire.OpPut(AllocKey(vm.Host), Encode(alloc)))
		}
	}
	t.Then = append(t.Then, extra...)
	return t
}

// PutOp is the operation that stores op.
func PutOp(op *pb.Operation) chainfire.Op { return chainfire.OpPut(OperationKey(op.Id), Encode(op)) }

// PutStatusOp is the operation that stores VM id's status.
func PutStatusOp(id string, st *pb.VMStatus) chainfire.Op {
	return chainfire.OpPut(StatusKey(id), Encode(st))
}

// Add returns a + b; Sub returns a - b floored at zero.
func Add(a, b *pb.Resources) *pb.Resources {
	return &pb.Resources{Vcpus: a.GetVcpus() + b.GetVcpus(), MemoryMib: a.GetMemoryMib() + b.GetMemoryMib()}
}

// Sub returns a - b, floored at zero.
func Sub(a, b *pb.Resources) *pb.Resources {
	return &pb.Resources{Vcpus: max(0, a.GetVcpus()-b.GetVcpus()), MemoryMib: max(0, a.GetMemoryMib()-b.GetMemoryMib())}
}

// VMResources is what VM reserves on its host.
func VMResources(vm *pb.VM) *pb.Resources {
	return &pb.Resources{Vcpus: vm.GetSpec().GetVcpus(), MemoryMib: vm.GetSpec().GetMemoryMib()}
}

// ---------------------------------------------------------------------------------------
// Operations

// GetOperation reads operation id. ErrNotFound when absent.
func (s *Store) GetOperation(ctx context.Context, id string) (*pb.Operation, int64, error) {
	resp, err := s.c.Get(ctx, OperationKey(id))
	if err != nil {
		return nil, 0, unavailable("read operation "+id, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, 0, fmt.Errorf("%w: operation %q", ErrNotFound, id)
	}
	op, err := DecodeOperation(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	return op, resp.Kvs[0].ModRevision, err
}

// ListOperations reads every operation (of vmID, when not empty), oldest first.
func (s *Store) ListOperations(ctx context.Context, vmID string) ([]*pb.Operation, error) {
	resp, err := s.c.Get(ctx, PrefixOperations, chainfire.WithPrefix())
	if err != nil {
		return nil, unavailable("list operations", err)
	}
	var out []*pb.Operation
	for _, kv := range resp.Kvs {
		op, err := DecodeOperation(string(kv.Key), kv.Value)
		if err != nil {
			return nil, err
		}
		if vmID == "" || op.VmId == vmID {
			out = append(out, op)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].GetStartTime().AsTime().Before(out[j].GetStartTime().AsTime())
	})
	return out, nil
}

// FinishOperation sets operation id to state (DONE or FAILED) with reason and an end
// time, if it is still RUNNING. Finishing an operation already finished (or absent) is
// a no-op, so agent and controller may both try.
func (s *Store) FinishOperation(ctx context.Context, id string, state pb.OperationState, reason string) error {
	for range maxCAS {
		op, rev, err := s.GetOperation(ctx, id)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				return nil
			}
			return err
		}
		if op.State != pb.OperationState_OPERATION_STATE_RUNNING {
			return nil
		}
		op.State, op.Reason, op.EndTime = state, reason, s.Now()
		resp, err := s.Commit(ctx, Txn{If: []chainfire.Cmp{Unchanged(OperationKey(id), rev)}, Then: []chainfire.Op{PutOp(op)}})
		if err != nil {
			return err
		}
		if resp.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: operation %q", ErrConflict, id)
}

// ---------------------------------------------------------------------------------------
// Hosts

// HostRecord is a host as the API shows it: the record with State merged (see
// [MergeHostState]) and Allocated from the ledger, plus what the HA manager reads.
type HostRecord struct {
	Host          *pb.Host
	ModRevision   int64 // of /hosts/<name>
	Alive         bool
	AliveInstance string // value of /alive/<name> (the agent instance id)
	AliveLease    int64  // lease of /alive/<name>
	AllocRev      int64  // ModRevision of /alloc/<name>; 0: no ledger yet
	// Health is the HA manager's record (/health/<name>; nil: none yet), read at HealthRev.
	Health    *pb.HostHealth
	HealthRev int64
	// Maintenance: /maintenance/<name> exists (drained).
	Maintenance bool
}

// Schedulable reports whether new VMs may be placed on the host: UP (so neither in
// maintenance nor suspect, down, fenced or recovered).
func (h *HostRecord) Schedulable() bool { return h.Host.State == pb.HostState_HOST_STATE_UP }

// Free is capacity minus allocated.
func (h *HostRecord) Free() *pb.Resources { return Sub(h.Host.Capacity, h.Host.Allocated) }

// ListHosts reads every host with its heartbeat, ledger, health and maintenance flag at
// one revision (returned), sorted by name.
func (s *Store) ListHosts(ctx context.Context) ([]*HostRecord, int64, error) {
	resp, err := s.c.Txn(ctx).Then(
		chainfire.OpGet(PrefixHosts, chainfire.WithPrefix()),
		chainfire.OpGet(PrefixAlive, chainfire.WithPrefix()),
		chainfire.OpGet(PrefixAlloc, chainfire.WithPrefix()),
		chainfire.OpGet(PrefixHealth, chainfire.WithPrefix()),
		chainfire.OpGet(PrefixMaintenance, chainfire.WithPrefix(), chainfire.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, 0, unavailable("list hosts", err)
	}
	byName := func(i int) map[string]*mvccpb.KeyValue {
		m := map[string]*mvccpb.KeyValue{}
		for _, kv := range RangeKvs(resp, i) {
			m[LastSegment(string(kv.Key))] = kv
		}
		return m
	}
	alive, allocs, health, maint := byName(1), byName(2), byName(3), byName(4)
	var out []*HostRecord
	for _, kv := range RangeKvs(resp, 0) {
		name := LastSegment(string(kv.Key))
		rec, err := hostRecord(kv, alive[name], allocs[name], health[name], maint[name] != nil)
		if err != nil {
			return nil, 0, err
		}
		out = append(out, rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host.Name < out[j].Host.Name })
	return out, resp.GetHeader().GetRevision(), nil
}

// GetHost reads host name like ListHosts. ErrNotFound when absent.
func (s *Store) GetHost(ctx context.Context, name string) (*HostRecord, error) {
	resp, err := s.c.Txn(ctx).Then(
		chainfire.OpGet(HostKey(name)),
		chainfire.OpGet(AliveKey(name)),
		chainfire.OpGet(AllocKey(name)),
		chainfire.OpGet(HealthKey(name)),
		chainfire.OpGet(MaintenanceKey(name), chainfire.WithKeysOnly()),
	).Commit()
	if err != nil {
		return nil, unavailable("read host "+name, err)
	}
	hk := first(RangeKvs(resp, 0))
	if hk == nil {
		return nil, fmt.Errorf("%w: host %q", ErrNotFound, name)
	}
	return hostRecord(hk, first(RangeKvs(resp, 1)), first(RangeKvs(resp, 2)), first(RangeKvs(resp, 3)), first(RangeKvs(resp, 4)) != nil)
}

func hostRecord(kv, alive, alloc, health *mvccpb.KeyValue, maintenance bool) (*HostRecord, error) {
	h, err := DecodeHost(string(kv.Key), kv.Value)
	if err != nil {
		return nil, err
	}
	rec := &HostRecord{Host: h, ModRevision: kv.ModRevision, Alive: alive != nil, Maintenance: maintenance}
	if alive != nil {
		rec.AliveInstance, rec.AliveLease = string(alive.Value), alive.Lease
	}
	h.Allocated = &pb.Resources{}
	if alloc != nil {
		if h.Allocated, err = DecodeResources(string(alloc.Key), alloc.Value); err != nil {
			return nil, err
		}
		rec.AllocRev = alloc.ModRevision
	}
	if health != nil {
		if rec.Health, err = DecodeHealth(string(health.Key), health.Value); err != nil {
			return nil, err
		}
		rec.HealthRev = health.ModRevision
	}
	if h.Name == "" {
		h.Name = LastSegment(string(kv.Key))
	}
	MergeHostState(h, rec.Alive, rec.Health, maintenance)
	return rec, nil
}

// MergeHostState sets h.state, state_reason, state_since and maintenance as the API
// shows them: MAINTENANCE while drained (no since: the flag carries no time) (/maintenance/<host>, or a record the controller
// marked MAINTENANCE before issue 7); else the HA manager's health state — except that
// a host it last saw UP, SUSPECT or RECOVERED whose lease is gone shows DOWN at once;
// else (no health record yet) UP iff the agent's alive key exists, DOWN otherwise.
func MergeHostState(h *pb.Host, alive bool, health *pb.HostHealth, maintenance bool) {
	stored := h.State
	h.StateReason, h.StateSince = "", nil
	switch {
	case health != nil:
		h.State, h.StateReason, h.StateSince = health.State, health.Reason, health.Since
		switch health.State {
		case pb.HostState_HOST_STATE_UP, pb.HostState_HOST_STATE_SUSPECT, pb.HostState_HOST_STATE_RECOVERED:
			if !alive {
				h.State, h.StateReason, h.StateSince = pb.HostState_HOST_STATE_DOWN, "lease expired", nil
			}
		}
	case stored == pb.HostState_HOST_STATE_FENCED:
	case alive:
		h.State = pb.HostState_HOST_STATE_UP
	default:
		h.State, h.StateReason = pb.HostState_HOST_STATE_DOWN, "no heartbeat"
	}
	if maintenance || stored == pb.HostState_HOST_STATE_MAINTENANCE {
		h.Maintenance = true
		reason := "drained"
		if h.State != pb.HostState_HOST_STATE_UP && h.State != pb.HostState_HOST_STATE_MAINTENANCE {
			reason += "; health " + strings.ToLower(strings.TrimPrefix(h.State.String(), "HOST_STATE_"))
			if h.StateReason != "" {
				reason += ": " + h.StateReason
			}
		}
		h.State, h.StateReason, h.StateSince = pb.HostState_HOST_STATE_MAINTENANCE, reason, nil
	}
}

// RegisterHost writes the agent's view of its host (capacity, pools, labels, versions,
// last_heartbeat), keeping a MAINTENANCE or FENCED state the controller set; any other
// state is stored as UP. Safe against a concurrent controller change (compare-and-swap).
func (s *Store) RegisterHost(ctx context.Context, h *pb.Host) error {
	h = proto.Clone(h).(*pb.Host)
	h.Allocated = nil
	for range maxCAS {
		resp, err := s.c.Get(ctx, HostKey(h.Name))
		if err != nil {
			return unavailable("read host "+h.Name, err)
		}
		var rev int64
		h.State = pb.HostState_HOST_STATE_UP
		if len(resp.Kvs) > 0 {
			rev = resp.Kvs[0].ModRevision
			old, err := DecodeHost(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
			if err == nil && (old.State == pb.HostState_HOST_STATE_MAINTENANCE || old.State == pb.HostState_HOST_STATE_FENCED) {
				h.State = old.State
			}
		}
		tr, err := s.Commit(ctx, Txn{If: []chainfire.Cmp{Unchanged(HostKey(h.Name), rev)}, Then: []chainfire.Op{chainfire.OpPut(HostKey(h.Name), Encode(h))}})
		if err != nil {
			return err
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: host %q", ErrConflict, h.Name)
}

// SetHostState sets the stored state of host name (the controller's MAINTENANCE or
// FENCED, or UNSPECIFIED/UP to clear them). ErrNotFound when the host is unknown.
func (s *Store) SetHostState(ctx context.Context, name string, state pb.HostState) error {
	for range maxCAS {
		resp, err := s.c.Get(ctx, HostKey(name))
		if err != nil {
			return unavailable("read host "+name, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("%w: host %q", ErrNotFound, name)
		}
		h, err := DecodeHost(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
		if err != nil {
			return err
		}
		h.State = state
		tr, err := s.Commit(ctx, Txn{If: []chainfire.Cmp{Unchanged(HostKey(name), resp.Kvs[0].ModRevision)}, Then: []chainfire.Op{chainfire.OpPut(HostKey(name), Encode(h))}})
		if err != nil {
			return err
		}
		if tr.Succeeded {
			return nil
		}
	}
	return fmt.Errorf("%w: host %q", ErrConflict, name)
}

// ---------------------------------------------------------------------------------------
// Images

// GetImage reads image name of pool. ErrNotFound when absent.
func (s *Store) GetImage(ctx context.Context, pool, name string) (*pb.Image, error) {
	resp, err := s.c.Get(ctx, ImageKey(pool, name))
	if err != nil {
		return nil, unavailable("read image "+pool+"/"+name, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("%w: image %q in pool %q", ErrNotFound, name, pool)
	}
	return DecodeImage(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
}

// ListImages reads the images of pool ("": every pool), sorted by pool then name.
func (s *Store) ListImages(ctx context.Context, pool string) ([]*pb.Image, error) {
	resp, err := s.c.Get(ctx, ImagePrefix(pool), chainfire.WithPrefix())
	if err != nil {
		return nil, unavailable("list images", err)
	}
	out := make([]*pb.Image, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		img, err := DecodeImage(string(kv.Key), kv.Value)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// PutImage stores img (registering an image twice with the same name replaces it).
func (s *Store) PutImage(ctx context.Context, img *pb.Image) error {
	if _, err := s.c.Put(ctx, ImageKey(img.Pool, img.Name), Encode(img)); err != nil {
		return unavailable("write image", err)
	}
	return nil
}
