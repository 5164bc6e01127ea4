package mvcc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
	"google.golang.org/protobuf/proto"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

// Apply applies entries in order in ONE pebble batch that also records the last applied
// entry's index and term, commits it (fsync only with Options.Sync) and only then
// publishes the new revision to readers and notifies watchers. Entries with Index <=
// AppliedIndex() are skipped (log replay after a restart) and get an empty ApplyResult.
//
// Revisions follow etcd: a write that changes something raises the revision by exactly
// one; all ops of a Txn share one revision; a DeleteRange that deletes nothing, a
// read-only Txn and a failed command leave it unchanged. Response headers carry only
// Revision; the caller fills cluster_id, member_id and raft_term. Commands fail
// deterministically (ApplyResult.Err, nothing stored) on: invalid structure (ErrInvalid,
// ErrDuplicateKey), unknown lease (ErrLeaseNotFound), ignore_value/ignore_lease on a
// missing key (ErrKeyNotFound), compaction at or below the compaction point
// (ErrCompacted) or above the current revision (ErrFutureRev), a reused lease id
// (ErrLeaseExists).
//
// Results, responses and watch events may share the byte slices of the commands (keys,
// values): callers must not modify commands after Apply. If pebble fails, every applied
// entry of the call reports an error wrapping ErrStorage, nothing is committed and
// AppliedIndex does not move; the caller should stop the state machine.
//
// Apply must be called from one goroutine (the FSM), never concurrently with Snapshot,
// Restore or Close.
func (s *Store) Apply(entries []Entry) []ApplyResult {
	results := make([]ApplyResult, len(entries))
	if s.closed.Load() {
		for i := range results {
			results[i].Err = ErrClosed
		}
		return results
	}
	a := s.ap
	applied := s.applied.Load()
	startRev, startCompacted := a.rev, a.compacted
	var lastIndex, lastTerm uint64
	begun := false
	for i := range entries {
		e := &entries[i]
		if e.Index <= applied {
			continue
		}
		if !begun {
			a.begin(s.hub.active(), s.hub.prevActive())
			begun = true
		}
		res, err := a.apply(e.Cmd)
		if err != nil && errors.Is(err, ErrStorage) {
			return a.abort(entries, results, err)
		}
		results[i] = ApplyResult{Result: res, Err: err}
		applied, lastIndex, lastTerm = e.Index, e.Index, e.Term
	}
	if !begun {
		return results
	}
	if err := a.commit(lastIndex, lastTerm, startRev, startCompacted); err != nil {
		return a.abort(entries, results, err)
	}
	s.applied.Store(lastIndex)
	s.appliedTerm.Store(lastTerm)
	s.compacted.Store(a.compacted)
	s.rev.Store(a.rev)
	if a.compacted != startCompacted {
		s.cp.kick()
	}
	if a.rev != startRev {
		s.hub.notify(startRev+1, a.rev, a.events, a.collect, a.collectPrev)
	}
	a.finish()
	return results
}

// applier holds the FSM goroutine's write state: the batch of the current Apply, an
// iterator over it, the revision and lease table as of the batch, the key index and the
// events collected for watchers.
//
// Each Apply writes into a plain batch, the cheapest kind. The first operation that must
// read through the batch (a range scan, or the value of a key written earlier in the same
// Apply) switches to an indexed batch, copying what was written so far; reads then see
// the committed state plus every earlier write of the Apply.
type applier struct {
	s       *Store
	h       *dbHandle
	b       *pebble.Batch // active batch: plain or idxb
	plain   *pebble.Batch
	idxb    *pebble.Batch
	indexed bool  // b == idxb
	baseRev int64 // revision of the committed state under the batch
	it      *pebble.Iterator
	itLen   int
	itOpts  pebble.IterOptions

	rev, compacted int64
	sub            int64 // index of the next write within the pending revision
	leases         map[int64]int64

	// index maps every live key to the metadata of its newest version, including this
	// Apply's uncommitted writes (etcd keeps a similar in-memory key index). It spares
	// puts, compares and point deletes a pebble read; values are read only when needed.
	index map[string]*keyMeta

	collect     bool // build watch events
	collectPrev bool // ... with prev_kv
	events      []pendingEvent

	chunk                  revChunk // by-revision index entries not yet in the batch
	kbuf, vbuf, rbuf, abuf []byte
	vs                     versionScan
}

// pendingEvent is one change of an Apply, handed to the watch hub after the commit.
type pendingEvent struct {
	rev            int64
	typ            mvccpb.Event_EventType
	kv, prev       *mvccpb.KeyValue
	plain, withPrv *mvccpb.Event // built lazily by the hub, shared by all watchers
}

// keyMeta is the newest version of a live key, without its value.
type keyMeta struct{ mod, create, version, lease int64 }

func newApplier(s *Store) *applier {
	a := &applier{s: s}
	a.itOpts = pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper}
	return a
}

// reset rebinds the applier to a database and its persisted state (Open, Restore,
// abort), rebuilding the key index by scanning the newest version of every key.
func (a *applier) reset(h *dbHandle, m meta) error {
	a.close()
	a.h = h
	a.rev, a.compacted, a.leases = m.rev, m.compacted, m.leases
	a.events = a.events[:0]
	idx, err := buildIndex(h.db, m.rev)
	if err != nil {
		return err
	}
	a.index = idx
	a.newBatches()
	return nil
}

func (a *applier) newBatches() {
	a.plain, a.idxb = a.h.db.NewBatch(), a.h.db.NewIndexedBatch()
	a.b, a.indexed = a.plain, false
}

// needIndexed switches the Apply to the indexed batch.
func (a *applier) needIndexed() error {
	if a.indexed {
		return nil
	}
	if !a.plain.Empty() {
		if err := a.idxb.Apply(a.plain, nil); err != nil {
			return storageErr("index batch", err)
		}
		a.plain.Reset()
	}
	a.b, a.indexed = a.idxb, true
	return nil
}

func buildIndex(db *pebble.DB, rev int64) (map[string]*keyMeta, error) {
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return nil, storageErr("build index", err)
	}
	defer it.Close()
	idx := map[string]*keyMeta{}
	var vs versionScan
	var kb []byte
	vs.start(it, kvLower, nil, rev)
	for vs.next() {
		rec, err := decodeRecord(vs.value)
		if err != nil {
			return nil, storageErr("build index", err)
		}
		if rec.tombstone {
			continue
		}
		kb = appendUserKey(kb[:0], vs.prefix)
		idx[string(kb)] = &keyMeta{mod: vs.modRev, create: rec.create, version: rec.version, lease: rec.lease}
	}
	if vs.err != nil {
		return nil, vs.err
	}
	return idx, nil
}

func (a *applier) close() {
	a.chunk.reset()
	if a.it != nil {
		a.it.Close()
		a.it = nil
	}
	if a.plain != nil {
		a.plain.Close()
		a.idxb.Close()
		a.plain, a.idxb, a.b = nil, nil, nil
	}
}

func (a *applier) begin(collect, collectPrev bool) {
	a.baseRev = a.rev
	a.collect, a.collectPrev = collect, collect && collectPrev
	a.events = a.events[:0]
	a.sub = 0
}

// iter returns the batch iterator, refreshed to see every write made so far.
func (a *applier) iter() (*pebble.Iterator, error) {
	if err := a.needIndexed(); err != nil {
		return nil, err
	}
	if a.it == nil {
		it, err := a.b.NewIter(&a.itOpts)
		if err != nil {
			return nil, storageErr("batch iterator", err)
		}
		a.it, a.itLen = it, a.b.Len()
	} else if n := a.b.Len(); n != a.itLen {
		a.it.SetOptions(&a.itOpts)
		a.itLen = n
	}
	return a.it, nil
}

// flushChunk writes the pending by-revision index chunk into the batch.
func (a *applier) flushChunk() error {
	if a.chunk.empty() {
		return nil
	}
	a.rbuf = appendRevKey(a.rbuf[:0], a.chunk.startRev, a.chunk.startSub)
	err := a.b.Set(a.rbuf, a.chunk.buf, nil)
	a.chunk.reset()
	if err != nil {
		return storageErr("write", err)
	}
	return nil
}

func (a *applier) commit(index, term uint64, startRev, startCompacted int64) error {
	if a.it != nil {
		a.it.Close()
		a.it = nil
	}
	if err := a.flushChunk(); err != nil {
		return err
	}
	var v [16]byte
	binary.BigEndian.PutUint64(v[:], index)
	binary.BigEndian.PutUint64(v[8:], term)
	if err := a.b.Set(keyAppliedB, v[:], nil); err != nil {
		return storageErr("commit", err)
	}
	if a.rev != startRev {
		if err := a.b.Set(keyRevisionB, binary.BigEndian.AppendUint64(v[:0], uint64(a.rev)), nil); err != nil {
			return storageErr("commit", err)
		}
	}
	if a.compacted != startCompacted {
		if err := a.b.Set(keyCompactRevB, binary.BigEndian.AppendUint64(v[:0], uint64(a.compacted)), nil); err != nil {
			return storageErr("commit", err)
		}
	}
	wo := pebble.NoSync
	if a.s.opts.Sync {
		wo = pebble.Sync
	}
	if err := a.b.Commit(wo); err != nil {
		return storageErr("commit", err)
	}
	a.b.Reset()
	a.b, a.indexed = a.plain, false
	return nil
}

func (a *applier) finish() {
	clear(a.events)
	a.events = a.events[:0]
}

// abort drops the uncommitted batch, reloads the committed state and fails every entry
// this call tried to apply.
func (a *applier) abort(entries []Entry, results []ApplyResult, err error) []ApplyResult {
	applied := a.s.applied.Load()
	for i := range entries {
		if entries[i].Index > applied {
			results[i] = ApplyResult{Err: err}
		}
	}
	a.s.log.Error("mvcc apply failed; batch dropped", "err", err)
	m, lerr := loadMeta(a.h.db, false)
	if lerr == nil {
		lerr = a.reset(a.h, m)
	}
	if lerr != nil {
		a.s.log.Error("mvcc reload after failed apply", "err", lerr)
	}
	a.finish()
	return results
}

func header(rev int64) *pb.ResponseHeader { return &pb.ResponseHeader{Revision: rev} }

// apply applies one command to the batch.
func (a *applier) apply(cmd *peerv1.Command) (*peerv1.Result, error) {
	if err := validateCommand(cmd, Limits{}); err != nil {
		return nil, err
	}
	switch op := cmd.Op.(type) {
	case *peerv1.Command_Put:
		a.sub = 0
		resp, err := a.put(op.Put, a.rev+1)
		if err != nil {
			return nil, err
		}
		a.rev++
		resp.Header = header(a.rev)
		return &peerv1.Result{Resp: &peerv1.Result_Put{Put: resp}}, nil
	case *peerv1.Command_DeleteRange:
		a.sub = 0
		resp, err := a.deleteRange(op.DeleteRange, a.rev+1)
		if err != nil {
			return nil, err
		}
		if resp.Deleted > 0 {
			a.rev++
		}
		resp.Header = header(a.rev)
		return &peerv1.Result{Resp: &peerv1.Result_DeleteRange{DeleteRange: resp}}, nil
	case *peerv1.Command_Txn:
		resp, err := a.txn(op.Txn)
		if err != nil {
			return nil, err
		}
		return &peerv1.Result{Resp: &peerv1.Result_Txn{Txn: resp}}, nil
	case *peerv1.Command_Compact:
		rev := op.Compact.Revision
		if rev <= a.compacted {
			return nil, fmt.Errorf("%w: compact.revision %d, compacted at %d", ErrCompacted, rev, a.compacted)
		}
		if rev > a.rev {
			return nil, fmt.Errorf("%w: compact.revision %d, current %d", ErrFutureRev, rev, a.rev)
		}
		a.compacted = rev
		return &peerv1.Result{Resp: &peerv1.Result_Compact{Compact: &pb.CompactionResponse{Header: header(a.rev)}}}, nil
	case *peerv1.Command_LeaseGrant:
		return a.leaseGrant(op.LeaseGrant)
	case *peerv1.Command_LeaseRevoke:
		return a.leaseRevoke(op.LeaseRevoke)
	case *peerv1.Command_MemberPut:
		v, err := proto.MarshalOptions{Deterministic: true}.Marshal(op.MemberPut)
		if err != nil {
			return nil, fmt.Errorf("%w: member_put: %v", ErrInvalid, err)
		}
		if err := a.b.Set(appendMemberKey(a.kbuf[:0], op.MemberPut.Id), v, nil); err != nil {
			return nil, storageErr("member put", err)
		}
		return &peerv1.Result{Resp: &peerv1.Result_Empty{Empty: &peerv1.Empty{}}}, nil
	case *peerv1.Command_MemberDelete:
		if err := a.b.Delete(appendMemberKey(a.kbuf[:0], op.MemberDelete.Id), nil); err != nil {
			return nil, storageErr("member delete", err)
		}
		return &peerv1.Result{Resp: &peerv1.Result_Empty{Empty: &peerv1.Empty{}}}, nil
	}
	return nil, fmt.Errorf("%w: command has no operation", ErrInvalid)
}

// latest returns the newest version of key as seen by this Apply (nil: missing or
// deleted). The pointer stays valid until the key is written or deleted.
func (a *applier) latest(key []byte) *keyMeta { return a.index[string(key)] }

// value reads the value of key's version at mod (batch and committed state); the
// result is a copy owned by the caller.
func (a *applier) value(key []byte, mod int64) ([]byte, error) {
	a.kbuf = appendVersionKey(a.kbuf[:0], key, mod)
	var r pebble.Reader = a.h.db
	if mod > a.baseRev {
		// Written by this Apply: read through the batch.
		if err := a.needIndexed(); err != nil {
			return nil, err
		}
		r = a.b
	}
	v, c, err := r.Get(a.kbuf)
	if err != nil {
		return nil, storageErr(fmt.Sprintf("read %q@%d", key, mod), err)
	}
	defer c.Close()
	rec, err := decodeRecord(v)
	if err != nil || rec.tombstone {
		return nil, storageErr(fmt.Sprintf("read %q@%d", key, mod), errCorrupt)
	}
	if len(rec.value) == 0 {
		return nil, nil
	}
	return append([]byte(nil), rec.value...), nil
}

// prevKV builds the KeyValue of key's newest version m, reading its value.
func (a *applier) prevKV(key []byte, m *keyMeta) (*mvccpb.KeyValue, error) {
	v, err := a.value(key, m.mod)
	if err != nil {
		return nil, err
	}
	return &mvccpb.KeyValue{Key: key, Value: v, CreateRevision: m.create, ModRevision: m.mod, Version: m.version, Lease: m.lease}, nil
}

// writeVersion stores one version of key at rev plus its by-revision index entry.
func (a *applier) writeVersion(key []byte, rev int64, rec []byte) error {
	a.kbuf = appendVersionKey(a.kbuf[:0], key, rev)
	if err := a.b.Set(a.kbuf, rec, nil); err != nil {
		return storageErr("write", err)
	}
	a.chunk.add(rev, a.sub, key)
	a.sub++
	if len(a.chunk.buf) >= revChunkMax {
		return a.flushChunk()
	}
	return nil
}

// put writes p at revision rev. It fails before writing anything.
func (a *applier) put(p *pb.PutRequest, rev int64) (*pb.PutResponse, error) {
	if p.Lease != 0 {
		if _, ok := a.leases[p.Lease]; !ok {
			return nil, fmt.Errorf("%w: put.lease %d", ErrLeaseNotFound, p.Lease)
		}
	}
	cur := a.latest(p.Key)
	if (p.IgnoreValue || p.IgnoreLease) && cur == nil {
		return nil, fmt.Errorf("%w: put.key %q", ErrKeyNotFound, p.Key)
	}
	var prev *mvccpb.KeyValue
	if cur != nil && (p.PrevKv || p.IgnoreValue || a.collectPrev) {
		var err error
		if prev, err = a.prevKV(p.Key, cur); err != nil {
			return nil, err
		}
	}
	create, version, lease, value := rev, int64(1), p.Lease, p.Value
	oldLease := int64(0)
	if cur != nil {
		create, version, oldLease = cur.create, cur.version+1, cur.lease
	}
	if p.IgnoreLease {
		lease = oldLease
	}
	if p.IgnoreValue {
		value = prev.Value
	}
	a.vbuf = appendRecord(a.vbuf[:0], create, version, lease, value)
	if err := a.writeVersion(p.Key, rev, a.vbuf); err != nil {
		return nil, err
	}
	if oldLease != lease {
		if err := a.moveLease(p.Key, oldLease, lease); err != nil {
			return nil, err
		}
	}
	if cur != nil {
		*cur = keyMeta{mod: rev, create: create, version: version, lease: lease}
	} else {
		a.index[string(p.Key)] = &keyMeta{mod: rev, create: create, version: version, lease: lease}
	}
	resp := &pb.PutResponse{}
	if p.PrevKv {
		resp.PrevKv = prev
	}
	if a.collect {
		kv := &mvccpb.KeyValue{Key: p.Key, Value: value, CreateRevision: create, ModRevision: rev, Version: version, Lease: lease}
		a.events = append(a.events, pendingEvent{rev: rev, typ: mvccpb.Event_PUT, kv: kv, prev: prev})
	}
	return resp, nil
}

// moveLease detaches key from lease from and attaches it to lease to (0 = none).
func (a *applier) moveLease(key []byte, from, to int64) error {
	if from != 0 {
		a.abuf = appendLeaseAttachKey(a.abuf[:0], from, key)
		if err := a.b.Delete(a.abuf, nil); err != nil {
			return storageErr("lease detach", err)
		}
	}
	if to != 0 {
		a.abuf = appendLeaseAttachKey(a.abuf[:0], to, key)
		if err := a.b.Set(a.abuf, nil, nil); err != nil {
			return storageErr("lease attach", err)
		}
	}
	return nil
}

// tombstone deletes key (newest version cur, value curVal when the caller has it) at
// rev. prev is the deleted version when wantPrev or a prev_kv watcher needs it. key is
// retained in prev and in events.
func (a *applier) tombstone(key []byte, cur keyMeta, curVal []byte, haveVal bool, rev int64, wantPrev bool) (prev *mvccpb.KeyValue, err error) {
	if wantPrev || a.collectPrev {
		if !haveVal {
			if curVal, err = a.value(key, cur.mod); err != nil {
				return nil, err
			}
		} else if len(curVal) > 0 {
			curVal = append([]byte(nil), curVal...)
		} else {
			curVal = nil
		}
		prev = &mvccpb.KeyValue{Key: key, Value: curVal, CreateRevision: cur.create, ModRevision: cur.mod, Version: cur.version, Lease: cur.lease}
	}
	if err := a.writeVersion(key, rev, tombstoneRecord); err != nil {
		return nil, err
	}
	if cur.lease != 0 {
		if err := a.moveLease(key, cur.lease, 0); err != nil {
			return nil, err
		}
	}
	delete(a.index, string(key))
	if a.collect {
		a.events = append(a.events, pendingEvent{rev: rev, typ: mvccpb.Event_DELETE, kv: &mvccpb.KeyValue{Key: key, ModRevision: rev}, prev: prev})
	}
	return prev, nil
}

// deleteRange deletes the live keys of [key, range_end) at rev; it never fails
// deterministically. Keys written earlier at rev by the same txn are seen.
func (a *applier) deleteRange(d *pb.DeleteRangeRequest, rev int64) (*pb.DeleteRangeResponse, error) {
	resp := &pb.DeleteRangeResponse{}
	if len(d.RangeEnd) == 0 {
		cur := a.latest(d.Key)
		if cur == nil {
			return resp, nil
		}
		prev, err := a.tombstone(d.Key, *cur, nil, false, rev, d.PrevKv)
		if err != nil {
			return nil, err
		}
		resp.Deleted = 1
		if d.PrevKv {
			resp.PrevKvs = []*mvccpb.KeyValue{prev}
		}
		return resp, nil
	}
	it, err := a.iter()
	if err != nil {
		return nil, err
	}
	lower, upper, ok := rangeBounds(nil, d.Key, d.RangeEnd)
	if !ok {
		return resp, nil
	}
	// The iterator's view stays fixed while we write into the batch below.
	vs := &a.vs
	vs.start(it, lower, upper, rev)
	for vs.next() {
		rec, err := decodeRecord(vs.value)
		if err != nil {
			return nil, storageErr("delete range", err)
		}
		if rec.tombstone {
			continue
		}
		key := appendUserKey(make([]byte, 0, userKeyLen(vs.prefix)), vs.prefix)
		cur := keyMeta{mod: vs.modRev, create: rec.create, version: rec.version, lease: rec.lease}
		prev, err := a.tombstone(key, cur, rec.value, true, rev, d.PrevKv)
		if err != nil {
			return nil, err
		}
		resp.Deleted++
		if d.PrevKv {
			resp.PrevKvs = append(resp.PrevKvs, prev)
		}
	}
	if vs.err != nil {
		return nil, vs.err
	}
	return resp, nil
}

func (a *applier) leaseGrant(g *pb.LeaseGrantRequest) (*peerv1.Result, error) {
	if g.ID == 0 {
		return nil, fmt.Errorf("%w: lease_grant.ID is 0 (the proposer assigns it)", ErrInvalid)
	}
	if _, ok := a.leases[g.ID]; ok {
		return nil, fmt.Errorf("%w: lease_grant.ID %d", ErrLeaseExists, g.ID)
	}
	if err := a.b.Set(appendLeaseKey(a.kbuf[:0], g.ID), binary.AppendUvarint(a.vbuf[:0], uint64(g.TTL)), nil); err != nil {
		return nil, storageErr("lease grant", err)
	}
	a.leases[g.ID] = g.TTL
	return &peerv1.Result{Resp: &peerv1.Result_LeaseGrant{LeaseGrant: &pb.LeaseGrantResponse{Header: header(a.rev), ID: g.ID, TTL: g.TTL}}}, nil
}

// leaseRevoke deletes every key attached to the lease at one new revision (none if no
// key is attached) and removes the lease.
func (a *applier) leaseRevoke(r *pb.LeaseRevokeRequest) (*peerv1.Result, error) {
	if _, ok := a.leases[r.ID]; !ok {
		return nil, fmt.Errorf("%w: lease_revoke.ID %d", ErrLeaseNotFound, r.ID)
	}
	if err := a.needIndexed(); err != nil {
		return nil, err
	}
	p := appendLeaseAttachKey(nil, r.ID, nil)
	it, err := a.b.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, storageErr("lease revoke", err)
	}
	var keys [][]byte
	for ok := it.First(); ok; ok = it.Next() {
		keys = append(keys, append([]byte(nil), it.Key()[len(p):]...))
	}
	err = it.Error()
	it.Close()
	if err != nil {
		return nil, storageErr("lease revoke", err)
	}
	rev := a.rev + 1
	a.sub = 0
	deleted := false
	for _, key := range keys {
		if cur := a.latest(key); cur != nil && cur.lease == r.ID {
			if _, err := a.tombstone(key, *cur, nil, false, rev, false); err != nil {
				return nil, err
			}
			deleted = true
			continue
		}
		// Stale attachment (should not happen): drop it.
		if err := a.b.Delete(appendLeaseAttachKey(a.abuf[:0], r.ID, key), nil); err != nil {
			return nil, storageErr("lease revoke", err)
		}
	}
	if err := a.b.Delete(appendLeaseKey(a.kbuf[:0], r.ID), nil); err != nil {
		return nil, storageErr("lease revoke", err)
	}
	delete(a.leases, r.ID)
	if deleted {
		a.rev = rev
	}
	return &peerv1.Result{Resp: &peerv1.Result_LeaseRevoke{LeaseRevoke: &pb.LeaseRevokeResponse{Header: header(a.rev)}}}, nil
}

var bgCtx = context.Background()

// rebind switches the applier to a restored database whose index was built already.
func (a *applier) rebind(h *dbHandle, m meta, idx map[string]*keyMeta) {
	a.close()
	a.h, a.index = h, idx
	a.rev, a.compacted, a.leases = m.rev, m.compacted, m.leases
	a.events = a.events[:0]
	a.newBatches()
}
