package mvcc

import (
	"bytes"
	"context"
	"sort"
	"sync"

	"github.com/cockroachdb/pebble/v2"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

// versionScan walks, in key order, the newest version <= rev of every user key between
// the position it starts at and upper. It reports tombstones too; callers skip them.
// The fields prefix and value alias iterator memory and are valid until the next call.
type versionScan struct {
	it    *pebble.Iterator
	upper []byte // nil: the iterator's own bounds end the scan
	rev   int64
	seek  []byte
	cur   []byte // copy of the current prefix, to skip past it
	valid bool
	moved bool // an item was returned and must be skipped on the next call
	err   error

	prefix []byte
	modRev int64
	value  []byte
}

func (v *versionScan) start(it *pebble.Iterator, lower, upper []byte, rev int64) {
	v.it, v.upper, v.rev, v.moved, v.err = it, upper, rev, false, nil
	v.valid = it.SeekGE(lower)
}

// next advances to the next user key; false at the end or on error (see err).
func (v *versionScan) next() bool {
	if v.moved {
		v.moved = false
		v.skipKey()
	}
	for v.valid {
		k := v.it.Key()
		if v.upper != nil && bytes.Compare(k, v.upper) >= 0 {
			v.valid = false
			break
		}
		prefix, r, ok := splitVersionKey(k)
		if !ok {
			v.err, v.valid = storageErr("scan", errCorrupt), false
			break
		}
		if r > v.rev {
			v.seek = appendRevSuffix(append(v.seek[:0], prefix...), v.rev)
			if v.valid = v.it.SeekGE(v.seek); !v.valid {
				break
			}
			k = v.it.Key()
			if !bytes.HasPrefix(k, v.seek[:len(v.seek)-revLen]) {
				continue // no version <= rev: now at the next user key
			}
			prefix, r, _ = splitVersionKey(k)
		}
		val, err := v.it.ValueAndErr()
		if err != nil {
			v.err, v.valid = storageErr("scan", err), false
			break
		}
		v.prefix, v.modRev, v.value, v.moved = prefix, r, val, true
		return true
	}
	if v.err == nil {
		if err := v.it.Error(); err != nil {
			v.err = storageErr("scan", err)
		}
	}
	return false
}

// skipKey moves past every remaining version of the current user key: a couple of Next
// calls (most keys have few versions), then a seek to the prefix successor.
func (v *versionScan) skipKey() {
	v.cur = append(v.cur[:0], v.prefix...)
	for i := 0; i < 3; i++ {
		if v.valid = v.it.Next(); !v.valid || !bytes.HasPrefix(v.it.Key(), v.cur) {
			return
		}
	}
	v.valid = v.it.SeekGE(prefixSuccessor(v.cur))
}

// makeKV builds a KeyValue from a version; key and value share one allocation.
func makeKV(prefix []byte, modRev int64, rec record, withValue bool) *mvccpb.KeyValue {
	kl := userKeyLen(prefix)
	vl := 0
	if withValue {
		vl = len(rec.value)
	}
	buf := make([]byte, kl, kl+vl)
	appendUserKey(buf[:0], prefix)
	kv := &mvccpb.KeyValue{Key: buf[:kl:kl], CreateRevision: rec.create, ModRevision: modRev, Version: rec.version, Lease: rec.lease}
	if vl > 0 {
		kv.Value = append(buf[kl:], rec.value...)
	}
	return kv
}

// makeKVKey is makeKV for a caller that already has the user key (retained, not copied).
func makeKVKey(key []byte, modRev int64, rec record) *mvccpb.KeyValue {
	kv := &mvccpb.KeyValue{Key: key, CreateRevision: rec.create, ModRevision: modRev, Version: rec.version, Lease: rec.lease}
	if len(rec.value) > 0 {
		kv.Value = append([]byte(nil), rec.value...)
	}
	return kv
}

// scratch holds reusable buffers for one Range call.
type scratch struct{ bounds, seek []byte }

var scratchPool = sync.Pool{New: func() any { return &scratch{bounds: make([]byte, 0, 256), seek: make([]byte, 0, 128)} }}

// rangeResult is the part of a RangeResponse computed from the data.
type rangeResult struct {
	kvs   []*mvccpb.KeyValue
	count int64
	more  bool
}

func needsFullScan(req *pb.RangeRequest) bool {
	return req.SortOrder != pb.RangeRequest_NONE || req.MinModRevision != 0 || req.MaxModRevision != 0 ||
		req.MinCreateRevision != 0 || req.MaxCreateRevision != 0
}

// effectiveSort returns etcd's sort order: results come in ascending key order, so KEY
// ASCEND needs no sort, and a non-KEY target without an order sorts ascending.
func effectiveSort(req *pb.RangeRequest) pb.RangeRequest_SortOrder {
	switch {
	case req.SortTarget != pb.RangeRequest_KEY && req.SortOrder == pb.RangeRequest_NONE:
		return pb.RangeRequest_ASCEND
	case req.SortTarget == pb.RangeRequest_KEY && req.SortOrder == pb.RangeRequest_ASCEND:
		return pb.RangeRequest_NONE
	}
	return req.SortOrder
}

// rangeRead evaluates req at revision rev over it with etcd's semantics: count is every
// live key in the range (ignoring limit and filters); limit applies after the mod/create
// revision filters and sorting; more reports a truncation.
func rangeRead(ctx context.Context, it *pebble.Iterator, req *pb.RangeRequest, lower, upper []byte, rev int64, vs *versionScan) (rangeResult, error) {
	var res rangeResult
	order := effectiveSort(req)
	withValues := !req.KeysOnly || (order != pb.RangeRequest_NONE && req.SortTarget == pb.RangeRequest_VALUE)
	fetch := int64(0) // 0: all
	if req.Limit > 0 && !needsFullScan(req) {
		fetch = req.Limit + 1
	}
	if len(req.RangeEnd) == 0 {
		seek := appendRevSuffix(append(vs.seek[:0], lower...), rev)
		vs.seek = seek
		if it.SeekPrefixGE(seek) && bytes.HasPrefix(it.Key(), lower) {
			_, r, _ := splitVersionKey(it.Key())
			val, err := it.ValueAndErr()
			if err != nil {
				return res, storageErr("range", err)
			}
			rec, err := decodeRecord(val)
			if err != nil {
				return res, storageErr("range", err)
			}
			if !rec.tombstone {
				res.count = 1
				if !req.CountOnly {
					res.kvs = []*mvccpb.KeyValue{makeKVKey(append([]byte(nil), req.Key...), r, recValue(rec, withValues))}
				}
			}
		}
		if err := it.Error(); err != nil {
			return res, storageErr("range", err)
		}
	} else {
		vs.start(it, lower, upper, rev)
		for vs.next() {
			if len(vs.value) == 0 || vs.value[0] == recTombstone {
				if len(vs.value) == 0 {
					return res, storageErr("range", errCorrupt)
				}
				continue
			}
			res.count++
			if res.count&1023 == 0 && ctx.Err() != nil {
				return res, ctx.Err()
			}
			if req.CountOnly || (fetch > 0 && int64(len(res.kvs)) >= fetch) {
				continue
			}
			rec, err := decodeRecord(vs.value)
			if err != nil {
				return res, storageErr("range", err)
			}
			res.kvs = append(res.kvs, makeKV(vs.prefix, vs.modRev, rec, withValues))
		}
		if vs.err != nil {
			return res, vs.err
		}
	}
	if req.CountOnly {
		return res, nil
	}
	res.kvs = pruneKVs(req, res.kvs)
	sortKVs(req.SortTarget, order, res.kvs)
	if req.Limit > 0 && int64(len(res.kvs)) > req.Limit {
		res.kvs = res.kvs[:req.Limit]
		res.more = true
	}
	if req.KeysOnly && withValues {
		for _, kv := range res.kvs {
			kv.Value = nil
		}
	}
	return res, nil
}

func recValue(rec record, withValue bool) record {
	if !withValue {
		rec.value = nil
	}
	return rec
}

func pruneKVs(req *pb.RangeRequest, kvs []*mvccpb.KeyValue) []*mvccpb.KeyValue {
	if req.MinModRevision == 0 && req.MaxModRevision == 0 && req.MinCreateRevision == 0 && req.MaxCreateRevision == 0 {
		return kvs
	}
	out := kvs[:0]
	for _, kv := range kvs {
		if (req.MaxModRevision != 0 && kv.ModRevision > req.MaxModRevision) ||
			(req.MinModRevision != 0 && kv.ModRevision < req.MinModRevision) ||
			(req.MaxCreateRevision != 0 && kv.CreateRevision > req.MaxCreateRevision) ||
			(req.MinCreateRevision != 0 && kv.CreateRevision < req.MinCreateRevision) {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func sortKVs(target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder, kvs []*mvccpb.KeyValue) {
	if order == pb.RangeRequest_NONE || len(kvs) < 2 {
		return
	}
	var less func(a, b *mvccpb.KeyValue) bool
	switch target {
	case pb.RangeRequest_KEY:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Key, b.Key) < 0 }
	case pb.RangeRequest_VERSION:
		less = func(a, b *mvccpb.KeyValue) bool { return a.Version < b.Version }
	case pb.RangeRequest_CREATE:
		less = func(a, b *mvccpb.KeyValue) bool { return a.CreateRevision < b.CreateRevision }
	case pb.RangeRequest_MOD:
		less = func(a, b *mvccpb.KeyValue) bool { return a.ModRevision < b.ModRevision }
	case pb.RangeRequest_VALUE:
		less = func(a, b *mvccpb.KeyValue) bool { return bytes.Compare(a.Value, b.Value) < 0 }
	default:
		return
	}
	if order == pb.RangeRequest_DESCEND {
		asc := less
		less = func(a, b *mvccpb.KeyValue) bool { return asc(b, a) }
	}
	// Stable so that ties keep key order, as etcd's results are deterministic too.
	sort.SliceStable(kvs, func(i, j int) bool { return less(kvs[i], kvs[j]) })
}

// Range serves req from committed state, like etcd's Range: range_end "\x00" means every
// key >= key, a range_end <= key selects nothing; revision <= 0 reads the current
// revision, a revision above it fails with ErrFutureRev and one below the compaction
// point with ErrCompacted; limit/more, count (always the number of live keys in the
// range), keys_only, count_only, sort and the min/max mod/create revision filters behave
// as in etcd. The header carries the current revision only. Safe for concurrent use with
// everything, including Apply and physical compaction: a read at a revision at or above
// the compaction point always sees a complete state.
func (s *Store) Range(ctx context.Context, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if req == nil {
		return nil, ErrInvalid
	}
	if err := validateRange("range", req, Limits{}); err != nil {
		return nil, err
	}
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.h == nil {
		return nil, ErrClosed
	}
	cur := s.rev.Load()
	rev := req.Revision
	if rev > cur {
		return nil, ErrFutureRev
	}
	if rev <= 0 {
		rev = cur
	}
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: cur}}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	lower, upper, ok := rangeBounds(sc.bounds[:0], req.Key, req.RangeEnd)
	if ok && cap(lower) > cap(sc.bounds) {
		sc.bounds = lower[:0]
	}
	if !ok {
		if rev < s.compacted.Load() {
			return nil, ErrCompacted
		}
		return resp, nil
	}
	it, err := s.h.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, storageErr("range", err)
	}
	defer it.Close()
	// Checked after the iterator pinned its view: physical compaction for a revision
	// above rev cannot have started before the compaction revision was published.
	if rev < s.compacted.Load() {
		return nil, ErrCompacted
	}
	vs := versionScan{seek: sc.seek[:0]}
	res, err := rangeRead(ctx, it, req, lower, upper, rev, &vs)
	if cap(vs.seek) > cap(sc.seek) {
		sc.seek = vs.seek[:0]
	}
	if err != nil {
		return nil, err
	}
	resp.Kvs, resp.Count, resp.More = res.kvs, res.count, res.more
	return resp, nil
}
