package mvcc

import (
	"context"
	"testing"

	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

// tstore wraps a Store with a raft index counter and one-command helpers.
type tstore struct {
	*Store
	t   testing.TB
	idx uint64
	dir string
}

func openTest(t testing.TB, opts ...func(*Options)) *tstore {
	t.Helper()
	dir := t.TempDir()
	return openAt(t, dir, opts...)
}

func openAt(t testing.TB, dir string, opts ...func(*Options)) *tstore {
	t.Helper()
	o := Options{CacheBytes: 8 << 20, MemTableBytes: 4 << 20}
	for _, f := range opts {
		f(&o)
	}
	s, err := Open(dir, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	ts := &tstore{Store: s, t: t, idx: s.AppliedIndex(), dir: dir}
	t.Cleanup(func() { s.Close() })
	return ts
}

// apply applies one command as the next raft entry.
func (ts *tstore) apply(cmd *peerv1.Command) (*peerv1.Result, error) {
	ts.t.Helper()
	ts.idx++
	res := ts.Apply([]Entry{{Index: ts.idx, Term: 1, Cmd: cmd}})
	return res[0].Result, res[0].Err
}

func (ts *tstore) mustApply(cmd *peerv1.Command) *peerv1.Result {
	ts.t.Helper()
	r, err := ts.apply(cmd)
	if err != nil {
		ts.t.Fatalf("apply %v: %v", cmd, err)
	}
	return r
}

func putCmd(key, val string) *peerv1.Command {
	return &peerv1.Command{Op: &peerv1.Command_Put{Put: &pb.PutRequest{Key: []byte(key), Value: []byte(val)}}}
}

func putReq(p *pb.PutRequest) *peerv1.Command {
	return &peerv1.Command{Op: &peerv1.Command_Put{Put: p}}
}

func delCmd(key, end string, prev bool) *peerv1.Command {
	d := &pb.DeleteRangeRequest{Key: []byte(key), PrevKv: prev}
	if end != "" {
		d.RangeEnd = []byte(end)
	}
	return &peerv1.Command{Op: &peerv1.Command_DeleteRange{DeleteRange: d}}
}

func txnCmd(t *pb.TxnRequest) *peerv1.Command {
	return &peerv1.Command{Op: &peerv1.Command_Txn{Txn: t}}
}

func compactCmd(rev int64) *peerv1.Command {
	return &peerv1.Command{Op: &peerv1.Command_Compact{Compact: &pb.CompactionRequest{Revision: rev}}}
}

func grantCmd(id, ttl int64) *peerv1.Command {
	return &peerv1.Command{Op: &peerv1.Command_LeaseGrant{LeaseGrant: &pb.LeaseGrantRequest{ID: id, TTL: ttl}}}
}

func revokeCmd(id int64) *peerv1.Command {
	return &peerv1.Command{Op: &peerv1.Command_LeaseRevoke{LeaseRevoke: &pb.LeaseRevokeRequest{ID: id}}}
}

func (ts *tstore) put(key, val string) int64 {
	ts.t.Helper()
	return ts.mustApply(putCmd(key, val)).GetPut().Header.Revision
}

func (ts *tstore) get(key string, rev int64) *mvccpb.KeyValue {
	ts.t.Helper()
	r, err := ts.Range(context.Background(), &pb.RangeRequest{Key: []byte(key), Revision: rev})
	if err != nil {
		ts.t.Fatalf("range %q@%d: %v", key, rev, err)
	}
	if len(r.Kvs) == 0 {
		return nil
	}
	return r.Kvs[0]
}

func (ts *tstore) rangeKeys(req *pb.RangeRequest) []string {
	ts.t.Helper()
	r, err := ts.Range(context.Background(), req)
	if err != nil {
		ts.t.Fatalf("range: %v", err)
	}
	return kvKeys(r.Kvs)
}

func kvKeys(kvs []*mvccpb.KeyValue) []string {
	out := []string{}
	for _, kv := range kvs {
		out = append(out, string(kv.Key))
	}
	return out
}

func opPut(key, val string) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: []byte(val)}}}
}

func opDel(key, end string) *pb.RequestOp {
	d := &pb.DeleteRangeRequest{Key: []byte(key)}
	if end != "" {
		d.RangeEnd = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: d}}
}

func opRange(key, end string) *pb.RequestOp {
	r := &pb.RangeRequest{Key: []byte(key)}
	if end != "" {
		r.RangeEnd = []byte(end)
	}
	return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: r}}
}

func opTxn(t *pb.TxnRequest) *pb.RequestOp {
	return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
