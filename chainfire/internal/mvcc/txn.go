package mvcc

import (
	"bytes"
	"fmt"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

// txn applies a Txn like etcd: every compare (of the top-level txn and of all nested
// txns on the chosen path) is evaluated first against the state before the txn; then
// the chosen ops are checked (leases exist, ignore_* keys exist, range revisions are
// readable) so that a failing txn stores nothing; then the ops run in order at one
// revision, reads seeing the txn's earlier writes. The revision rises only if something
// changed. All headers of the response tree share one ResponseHeader.
func (a *applier) txn(t *pb.TxnRequest) (*pb.TxnResponse, error) {
	path, err := a.comparePath(t, nil)
	if err != nil {
		return nil, err
	}
	idx := 0
	if err := a.checkTxn(t, path, &idx); err != nil {
		return nil, err
	}
	x := txnExec{rev: a.rev + 1, hdr: &pb.ResponseHeader{}}
	a.sub = 0
	idx = 0
	resp, err := a.execTxn(t, path, &idx, &x)
	if err != nil {
		// Pre-checks make op failures impossible; an error here is a storage failure
		// and the whole Apply batch is dropped.
		return nil, storageErr("txn", err)
	}
	if x.changed {
		a.rev = x.rev
	}
	x.hdr.Revision = a.rev
	return resp, nil
}

type txnExec struct {
	rev     int64
	changed bool
	hdr     *pb.ResponseHeader
}

// comparePath evaluates the compares of t and, recursively, of the nested txns in the
// branch taken, in pre-order: the path etcd's compareToPath computes.
func (a *applier) comparePath(t *pb.TxnRequest, path []bool) ([]bool, error) {
	ok := true
	for _, c := range t.Compare {
		r, err := a.compare(c)
		if err != nil {
			return nil, err
		}
		if !r {
			ok = false
			break
		}
	}
	path = append(path, ok)
	ops := t.Failure
	if ok {
		ops = t.Success
	}
	for _, op := range ops {
		if nt := op.GetRequestTxn(); nt != nil {
			var err error
			if path, err = a.comparePath(nt, path); err != nil {
				return nil, err
			}
		}
	}
	return path, nil
}

// compare evaluates one compare against the current state, like etcd's applyCompare: a
// range compare holds when it holds for every key in the range; with no key, a VALUE
// compare fails and the others compare against zero.
func (a *applier) compare(c *pb.Compare) (bool, error) {
	if len(c.RangeEnd) == 0 {
		cur := a.latest(c.Key)
		if cur == nil {
			return c.Target != pb.Compare_VALUE && compareKV(c, record{}, 0), nil
		}
		rec := record{create: cur.create, version: cur.version, lease: cur.lease}
		if c.Target == pb.Compare_VALUE {
			v, err := a.value(c.Key, cur.mod)
			if err != nil {
				return false, err
			}
			rec.value = v
		}
		return compareKV(c, rec, cur.mod), nil
	}
	it, err := a.iter()
	if err != nil {
		return false, err
	}
	lower, upper, ok := rangeBounds(nil, c.Key, c.RangeEnd)
	any := false
	if ok {
		a.vs.start(it, lower, upper, a.rev)
		for a.vs.next() {
			rec, err := decodeRecord(a.vs.value)
			if err != nil {
				return false, storageErr("compare", err)
			}
			if rec.tombstone {
				continue
			}
			any = true
			if !compareKV(c, rec, a.vs.modRev) {
				return false, nil
			}
		}
		if a.vs.err != nil {
			return false, a.vs.err
		}
	}
	if !any {
		return c.Target != pb.Compare_VALUE && compareKV(c, record{}, 0), nil
	}
	return true, nil
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func compareKV(c *pb.Compare, rec record, mod int64) bool {
	var r int
	switch c.Target {
	case pb.Compare_VALUE:
		r = bytes.Compare(rec.value, c.GetValue())
	case pb.Compare_CREATE:
		r = cmpInt(rec.create, c.GetCreateRevision())
	case pb.Compare_MOD:
		r = cmpInt(mod, c.GetModRevision())
	case pb.Compare_VERSION:
		r = cmpInt(rec.version, c.GetVersion())
	case pb.Compare_LEASE:
		r = cmpInt(rec.lease, c.GetLease())
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return r == 0
	case pb.Compare_NOT_EQUAL:
		return r != 0
	case pb.Compare_GREATER:
		return r > 0
	case pb.Compare_LESS:
		return r < 0
	}
	return false
}

// checkTxn verifies, against the state before the txn, everything that could make an op
// on the chosen path fail, so that a failing txn fails before its first write.
func (a *applier) checkTxn(t *pb.TxnRequest, path []bool, idx *int) error {
	ops := t.Failure
	if path[*idx] {
		ops = t.Success
	}
	*idx++
	for _, op := range ops {
		switch r := op.Request.(type) {
		case *pb.RequestOp_RequestPut:
			p := r.RequestPut
			if p.Lease != 0 {
				if _, ok := a.leases[p.Lease]; !ok {
					return fmt.Errorf("%w: txn put.lease %d", ErrLeaseNotFound, p.Lease)
				}
			}
			if p.IgnoreValue || p.IgnoreLease {
				if a.latest(p.Key) == nil {
					return fmt.Errorf("%w: txn put.key %q", ErrKeyNotFound, p.Key)
				}
			}
		case *pb.RequestOp_RequestRange:
			if rev := r.RequestRange.Revision; rev > 0 {
				if rev > a.rev {
					return ErrFutureRev
				}
				if rev < a.compacted {
					return ErrCompacted
				}
			}
		case *pb.RequestOp_RequestTxn:
			if err := a.checkTxn(r.RequestTxn, path, idx); err != nil {
				return err
			}
		}
	}
	return nil
}

func (a *applier) execTxn(t *pb.TxnRequest, path []bool, idx *int, x *txnExec) (*pb.TxnResponse, error) {
	ok := path[*idx]
	*idx++
	ops := t.Failure
	if ok {
		ops = t.Success
	}
	resp := &pb.TxnResponse{Header: x.hdr, Succeeded: ok, Responses: make([]*pb.ResponseOp, len(ops))}
	for i, op := range ops {
		switch r := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr, err := a.txnRange(r.RequestRange, x)
			if err != nil {
				return nil, err
			}
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestPut:
			pr, err := a.put(r.RequestPut, x.rev)
			if err != nil {
				return nil, err
			}
			x.changed = true
			pr.Header = x.hdr
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}}
		case *pb.RequestOp_RequestDeleteRange:
			dr, err := a.deleteRange(r.RequestDeleteRange, x.rev)
			if err != nil {
				return nil, err
			}
			if dr.Deleted > 0 {
				x.changed = true
			}
			dr.Header = x.hdr
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}}
		case *pb.RequestOp_RequestTxn:
			tr, err := a.execTxn(r.RequestTxn, path, idx, x)
			if err != nil {
				return nil, err
			}
			resp.Responses[i] = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: tr}}
		}
	}
	return resp, nil
}

// txnRange serves a Range inside a txn. Revision 0 reads at the txn's own revision, so
// the txn's earlier writes are visible.
func (a *applier) txnRange(r *pb.RangeRequest, x *txnExec) (*pb.RangeResponse, error) {
	it, err := a.iter()
	if err != nil {
		return nil, err
	}
	rev := r.Revision
	if rev <= 0 {
		rev = x.rev
	}
	resp := &pb.RangeResponse{Header: x.hdr}
	lower, upper, ok := rangeBounds(nil, r.Key, r.RangeEnd)
	if !ok {
		return resp, nil
	}
	res, err := rangeRead(bgCtx, it, r, lower, upper, rev, &a.vs)
	if err != nil {
		return nil, err
	}
	resp.Kvs, resp.Count, resp.More = res.kvs, res.count, res.more
	return resp, nil
}
