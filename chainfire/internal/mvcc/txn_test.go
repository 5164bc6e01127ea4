package mvcc

import (
	"errors"
	"testing"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

func cmp(key string, target pb.Compare_CompareTarget, result pb.Compare_CompareResult, v any) *pb.Compare {
	c := &pb.Compare{Key: []byte(key), Target: target, Result: result}
	switch target {
	case pb.Compare_VALUE:
		c.TargetUnion = &pb.Compare_Value{Value: []byte(v.(string))}
	case pb.Compare_VERSION:
		c.TargetUnion = &pb.Compare_Version{Version: int64(v.(int))}
	case pb.Compare_CREATE:
		c.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: int64(v.(int))}
	case pb.Compare_MOD:
		c.TargetUnion = &pb.Compare_ModRevision{ModRevision: int64(v.(int))}
	case pb.Compare_LEASE:
		c.TargetUnion = &pb.Compare_Lease{Lease: int64(v.(int))}
	}
	return c
}

func TestTxnCompares(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.mustApply(grantCmd(5, 10))
	s.put("k", "m")                                                                     // rev 2: create 2
	s.mustApply(putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("m"), Lease: 5})) // rev 3: version 2, lease 5
	s.put("r1", "b")                                                                    // rev 4
	s.put("r2", "c")                                                                    // rev 5
	V, VER, C, M, L := pb.Compare_VALUE, pb.Compare_VERSION, pb.Compare_CREATE, pb.Compare_MOD, pb.Compare_LEASE
	EQ, NE, GT, LT := pb.Compare_EQUAL, pb.Compare_NOT_EQUAL, pb.Compare_GREATER, pb.Compare_LESS
	tests := []struct {
		name string
		c    *pb.Compare
		want bool
	}{
		{"value eq", cmp("k", V, EQ, "m"), true},
		{"value ne", cmp("k", V, NE, "m"), false},
		{"value gt", cmp("k", V, GT, "a"), true},
		{"value lt", cmp("k", V, LT, "a"), false},
		{"value missing key", cmp("nope", V, NE, "x"), false},
		{"version eq", cmp("k", VER, EQ, 2), true},
		{"version gt", cmp("k", VER, GT, 2), false},
		{"version lt", cmp("k", VER, LT, 3), true},
		{"version missing = 0", cmp("nope", VER, EQ, 0), true},
		{"create eq", cmp("k", C, EQ, 2), true},
		{"create ne", cmp("k", C, NE, 2), false},
		{"create missing = 0", cmp("nope", C, EQ, 0), true},
		{"mod eq", cmp("k", M, EQ, 3), true},
		{"mod lt", cmp("k", M, LT, 3), false},
		{"mod gt", cmp("k", M, GT, 2), true},
		{"lease eq", cmp("k", L, EQ, 5), true},
		{"lease ne", cmp("k", L, NE, 0), true},
		{"lease missing", cmp("nope", L, EQ, 0), true},
		{"range all match", func() *pb.Compare { c := cmp("r", V, GT, "a"); c.RangeEnd = []byte("s"); return c }(), true},
		{"range one fails", func() *pb.Compare { c := cmp("r", V, EQ, "b"); c.RangeEnd = []byte("s"); return c }(), false},
		{"range mod", func() *pb.Compare { c := cmp("r", M, GT, 3); c.RangeEnd = []byte{0}; return c }(), true},
		{"range empty version", func() *pb.Compare { c := cmp("x", VER, EQ, 0); c.RangeEnd = []byte("y"); return c }(), true},
		{"range empty value", func() *pb.Compare { c := cmp("x", V, EQ, ""); c.RangeEnd = []byte("y"); return c }(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.mustApply(txnCmd(&pb.TxnRequest{
				Compare: []*pb.Compare{tt.c},
				Success: []*pb.RequestOp{opRange("k", "")},
				Failure: []*pb.RequestOp{opRange("r1", "")},
			})).GetTxn()
			if r.Succeeded != tt.want {
				t.Fatalf("succeeded %v, want %v", r.Succeeded, tt.want)
			}
			wantKey := "r1"
			if tt.want {
				wantKey = "k"
			}
			if got := kvKeys(r.Responses[0].GetResponseRange().Kvs); !sameStrings(got, []string{wantKey}) {
				t.Fatalf("branch read %q", got)
			}
			if cur, _ := s.Revision(); cur != 5 || r.Header.Revision != 5 {
				t.Fatalf("read-only txn moved revision to %d (header %d)", cur, r.Header.Revision)
			}
		})
	}
}

func TestTxnWritesAndNesting(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.put("a", "1") // 2
	s.put("b", "1") // 3

	// One revision for all ops; reads see earlier writes; nested txn decided up front.
	r := s.mustApply(txnCmd(&pb.TxnRequest{
		Compare: []*pb.Compare{cmp("a", pb.Compare_VALUE, pb.Compare_EQUAL, "1")},
		Success: []*pb.RequestOp{
			opPut("a", "2"),
			opRange("a", ""),
			opDel("b", ""),
			opRange("b", ""),
			opTxn(&pb.TxnRequest{
				// Evaluated before the txn's writes: a is still "1".
				Compare: []*pb.Compare{cmp("a", pb.Compare_VALUE, pb.Compare_EQUAL, "1")},
				Success: []*pb.RequestOp{opPut("c", "nested-then")},
				Failure: []*pb.RequestOp{opPut("c", "nested-else")},
			}),
			opRange("c", ""),
		},
	})).GetTxn()
	if !r.Succeeded || r.Header.Revision != 4 {
		t.Fatalf("txn: succeeded %v revision %d", r.Succeeded, r.Header.Revision)
	}
	if kv := r.Responses[1].GetResponseRange().Kvs; len(kv) != 1 || string(kv[0].Value) != "2" || kv[0].ModRevision != 4 {
		t.Errorf("read own put: %v", kv)
	}
	if n := r.Responses[2].GetResponseDeleteRange().Deleted; n != 1 {
		t.Errorf("deleted %d", n)
	}
	if kv := r.Responses[3].GetResponseRange().Kvs; len(kv) != 0 {
		t.Errorf("read own delete: %v", kv)
	}
	nested := r.Responses[4].GetResponseTxn()
	if nested == nil || !nested.Succeeded {
		t.Errorf("nested txn %v", nested)
	}
	if kv := r.Responses[5].GetResponseRange().Kvs; len(kv) != 1 || string(kv[0].Value) != "nested-then" {
		t.Errorf("nested write %v", kv)
	}
	for key, want := range map[string]int64{"a": 4, "c": 4} {
		if kv := s.get(key, 0); kv == nil || kv.ModRevision != want {
			t.Errorf("%s = %v, want mod %d", key, kv, want)
		}
	}

	// A txn whose only write deletes nothing does not raise the revision.
	r = s.mustApply(txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("zzz", "")}})).GetTxn()
	if cur, _ := s.Revision(); cur != 4 || r.Header.Revision != 4 {
		t.Errorf("no-op txn: revision %d header %d", cur, r.Header.Revision)
	}

	// A failing op (unknown lease) fails the whole txn before anything is written.
	_, err := s.apply(txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{
		opPut("d", "1"),
		{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("e"), Lease: 42}}},
	}}))
	if !errors.Is(err, ErrLeaseNotFound) {
		t.Fatalf("err %v, want ErrLeaseNotFound", err)
	}
	if kv := s.get("d", 0); kv != nil {
		t.Errorf("failed txn stored d: %v", kv)
	}
	// A range at a compacted or future revision fails the txn too.
	_, err = s.apply(txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("d", "1"),
		{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), Revision: 99}}}}}))
	if !errors.Is(err, ErrFutureRev) {
		t.Fatalf("err %v, want ErrFutureRev", err)
	}
	if cur, _ := s.Revision(); cur != 4 {
		t.Errorf("failed txns raised revision to %d", cur)
	}

	// Duplicate keys are rejected at apply time as well.
	_, err = s.apply(txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("d", "1"), opPut("d", "2")}}))
	if !errors.Is(err, ErrDuplicateKey) {
		t.Fatalf("err %v, want ErrDuplicateKey", err)
	}
}

func TestTxnSeveralEntriesOneBatch(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	// Entries of one Apply see each other's writes.
	res := s.Apply([]Entry{
		{Index: 1, Term: 1, Cmd: putCmd("a", "1")},
		{Index: 2, Term: 1, Cmd: txnCmd(&pb.TxnRequest{
			Compare: []*pb.Compare{cmp("a", pb.Compare_VALUE, pb.Compare_EQUAL, "1")},
			Success: []*pb.RequestOp{opPut("b", "seen")},
		})},
		{Index: 3, Term: 2, Cmd: putCmd("a", "2")},
		{Index: 4, Term: 2, Cmd: delCmd("a", "", true)},
	})
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("entry %d: %v", i, r.Err)
		}
	}
	if !res[1].Result.GetTxn().Succeeded {
		t.Error("txn did not see the put of the same batch")
	}
	if p := res[3].Result.GetDeleteRange().PrevKvs; len(p) != 1 || string(p[0].Value) != "2" || p[0].Version != 2 {
		t.Errorf("prev kvs %v", p)
	}
	if cur, _ := s.Revision(); cur != 5 || s.AppliedIndex() != 4 || s.AppliedTerm() != 2 {
		t.Errorf("revision %d applied %d term %d", cur, s.AppliedIndex(), s.AppliedTerm())
	}
}
