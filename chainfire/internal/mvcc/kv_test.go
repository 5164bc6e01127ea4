package mvcc

import (
	"context"
	"errors"
	"fmt"
	"testing"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

func TestPutVersionsAndRevisions(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	if cur, comp := s.Revision(); cur != 1 || comp != 0 {
		t.Fatalf("empty store Revision() = %d, %d; want 1, 0", cur, comp)
	}
	steps := []struct {
		op                   func() int64
		key                  string
		wantRev              int64
		create, mod, version int64
		value                string
	}{
		{func() int64 { return s.put("a", "1") }, "a", 2, 2, 2, 1, "1"},
		{func() int64 { return s.put("a", "2") }, "a", 3, 2, 3, 2, "2"},
		{func() int64 { return s.put("b", "x") }, "b", 4, 4, 4, 1, "x"},
		{func() int64 { return s.put("a", "3") }, "a", 5, 2, 5, 3, "3"},
		{func() int64 {
			return s.mustApply(delCmd("a", "", false)).GetDeleteRange().Header.Revision
		}, "a", 6, 0, 0, 0, ""},
		{func() int64 { return s.put("a", "new") }, "a", 7, 7, 7, 1, "new"},
		{func() int64 { return s.put("nul\x00key", "z") }, "nul\x00key", 8, 8, 8, 1, "z"},
	}
	for i, st := range steps {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if got := st.op(); got != st.wantRev {
				t.Fatalf("header revision %d, want %d", got, st.wantRev)
			}
			kv := s.get(st.key, 0)
			if st.version == 0 {
				if kv != nil {
					t.Fatalf("key %q still present: %v", st.key, kv)
				}
				return
			}
			if kv == nil || kv.CreateRevision != st.create || kv.ModRevision != st.mod || kv.Version != st.version || string(kv.Value) != st.value {
				t.Fatalf("got %v, want create %d mod %d version %d value %q", kv, st.create, st.mod, st.version, st.value)
			}
		})
	}
	// History: each revision shows the version of its time.
	for rev, want := range map[int64]string{2: "1", 3: "2", 4: "2", 5: "3", 6: "", 7: "new"} {
		kv := s.get("a", rev)
		if (kv == nil && want != "") || (kv != nil && string(kv.Value) != want) {
			t.Errorf("a@%d = %v, want %q", rev, kv, want)
		}
	}
	// "nul" must not be confused with "nul\x00key".
	if kv := s.get("nul", 0); kv != nil {
		t.Errorf("get nul = %v", kv)
	}
	if got := s.rangeKeys(&pb.RangeRequest{Key: []byte("nul"), RangeEnd: []byte("nul\x01")}); !sameStrings(got, []string{"nul\x00key"}) {
		t.Errorf("range nul..nul\\x01 = %q", got)
	}
}

func TestPutPrevKVIgnoreFlags(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.mustApply(grantCmd(7, 60))
	s.mustApply(putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v1"), Lease: 7}))
	r := s.mustApply(putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v2"), PrevKv: true, IgnoreLease: true})).GetPut()
	if r.PrevKv == nil || string(r.PrevKv.Value) != "v1" || r.PrevKv.Lease != 7 {
		t.Fatalf("prev kv %v", r.PrevKv)
	}
	if kv := s.get("k", 0); kv.Lease != 7 || string(kv.Value) != "v2" {
		t.Fatalf("ignore_lease: %v", kv)
	}
	s.mustApply(putReq(&pb.PutRequest{Key: []byte("k"), IgnoreValue: true}))
	if kv := s.get("k", 0); kv.Lease != 0 || string(kv.Value) != "v2" || kv.Version != 3 {
		t.Fatalf("ignore_value: %v", kv)
	}
	cur, _ := s.Revision()
	for _, p := range []*pb.PutRequest{
		{Key: []byte("missing"), IgnoreValue: true},
		{Key: []byte("missing"), IgnoreLease: true},
	} {
		if _, err := s.apply(putReq(p)); !errors.Is(err, ErrKeyNotFound) {
			t.Errorf("%v: err %v, want ErrKeyNotFound", p, err)
		}
	}
	if _, err := s.apply(putReq(&pb.PutRequest{Key: []byte("x"), Lease: 99})); !errors.Is(err, ErrLeaseNotFound) {
		t.Errorf("unknown lease: %v", err)
	}
	if now, _ := s.Revision(); now != cur {
		t.Errorf("failed commands raised revision %d -> %d", cur, now)
	}
}

func TestRange(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	// Revisions: a=2, b=3, c=4, d=5, a(again)=6, e=7, "\x00x"=8, b deleted at 9.
	for _, kv := range [][2]string{{"a", "3"}, {"b", "1"}, {"c", "2"}, {"d", "0"}, {"a", "9"}, {"e", "5"}, {"\x00x", "n"}} {
		s.put(kv[0], kv[1])
	}
	s.mustApply(delCmd("b", "", false))
	s.mustApply(compactCmd(3))
	ctx := context.Background()
	tests := []struct {
		name      string
		req       *pb.RangeRequest
		keys      []string
		count     int64
		more      bool
		err       error
		valueless bool
	}{
		{name: "single", req: &pb.RangeRequest{Key: []byte("a")}, keys: []string{"a"}, count: 1},
		{name: "single missing", req: &pb.RangeRequest{Key: []byte("zz")}, keys: []string{}, count: 0},
		{name: "single deleted", req: &pb.RangeRequest{Key: []byte("b")}, keys: []string{}, count: 0},
		{name: "prefix", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("c")}, keys: []string{"a"}, count: 1},
		{name: "all from key", req: &pb.RangeRequest{Key: []byte("c"), RangeEnd: []byte{0}}, keys: []string{"c", "d", "e"}, count: 3},
		{name: "all keys", req: &pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}, keys: []string{"\x00x", "a", "c", "d", "e"}, count: 5},
		{name: "end before key", req: &pb.RangeRequest{Key: []byte("d"), RangeEnd: []byte("b")}, err: ErrInvalid},
		{name: "limit", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, Limit: 2}, keys: []string{"a", "c"}, count: 4, more: true},
		{name: "limit exact", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, Limit: 4}, keys: []string{"a", "c", "d", "e"}, count: 4},
		{name: "count only", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, CountOnly: true}, keys: []string{}, count: 4},
		{name: "keys only", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte("d"), KeysOnly: true}, keys: []string{"a", "c"}, count: 2, valueless: true},
		{name: "sort value asc", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_VALUE}, keys: []string{"d", "c", "e", "a"}, count: 4},
		{name: "sort value desc limit", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_VALUE, SortOrder: pb.RangeRequest_DESCEND, Limit: 2}, keys: []string{"a", "e"}, count: 4, more: true},
		{name: "sort key desc", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, SortOrder: pb.RangeRequest_DESCEND}, keys: []string{"e", "d", "c", "a"}, count: 4},
		{name: "sort mod desc", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_MOD, SortOrder: pb.RangeRequest_DESCEND}, keys: []string{"e", "a", "d", "c"}, count: 4},
		{name: "sort create asc", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_CREATE, SortOrder: pb.RangeRequest_ASCEND}, keys: []string{"a", "c", "d", "e"}, count: 4},
		{name: "sort version desc", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_VERSION, SortOrder: pb.RangeRequest_DESCEND}, keys: []string{"a", "c", "d", "e"}, count: 4},
		{name: "sort value keys only", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, SortTarget: pb.RangeRequest_VALUE, KeysOnly: true}, keys: []string{"d", "c", "e", "a"}, count: 4, valueless: true},
		{name: "min mod", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, MinModRevision: 5}, keys: []string{"a", "d", "e"}, count: 4},
		{name: "max mod", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, MaxModRevision: 5}, keys: []string{"c", "d"}, count: 4},
		{name: "min create limit", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, MinCreateRevision: 4, Limit: 1}, keys: []string{"c"}, count: 4, more: true},
		{name: "max create", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, MaxCreateRevision: 4}, keys: []string{"a", "c"}, count: 4},
		{name: "at revision", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, Revision: 5}, keys: []string{"a", "b", "c", "d"}, count: 4},
		{name: "at compact revision", req: &pb.RangeRequest{Key: []byte("a"), RangeEnd: []byte{0}, Revision: 3}, keys: []string{"a", "b"}, count: 2},
		{name: "compacted", req: &pb.RangeRequest{Key: []byte("a"), Revision: 2}, err: ErrCompacted},
		{name: "future", req: &pb.RangeRequest{Key: []byte("a"), Revision: 10}, err: ErrFutureRev},
		{name: "empty key", req: &pb.RangeRequest{}, err: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := s.Range(ctx, tt.req)
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := kvKeys(r.Kvs); !sameStrings(got, tt.keys) {
				t.Errorf("keys %q, want %q", got, tt.keys)
			}
			if r.Count != tt.count || r.More != tt.more {
				t.Errorf("count %d more %v, want %d %v", r.Count, r.More, tt.count, tt.more)
			}
			if r.Header.Revision != 9 {
				t.Errorf("header revision %d, want 9", r.Header.Revision)
			}
			for _, kv := range r.Kvs {
				if tt.valueless != (len(kv.Value) == 0) {
					t.Errorf("%q value %q (keys_only=%v)", kv.Key, kv.Value, tt.valueless)
				}
			}
		})
	}
}

func TestDeleteRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		key, end string
		deleted  int64
		prev     []string
		left     []string
	}{
		{"single", "b", "", 1, []string{"b"}, []string{"a", "c", "ca", "d"}},
		{"missing", "x", "", 0, nil, []string{"a", "b", "c", "ca", "d"}},
		{"prefix", "c", "d", 2, []string{"c", "ca"}, []string{"a", "b", "d"}},
		{"from key", "c", "\x00", 3, []string{"c", "ca", "d"}, []string{"a", "b"}},
		{"empty range", "c", "c", 0, nil, []string{"a", "b", "c", "ca", "d"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := openTest(t)
			for _, k := range []string{"a", "b", "c", "ca", "d"} {
				s.put(k, "v-"+k)
			}
			before, _ := s.Revision()
			r := s.mustApply(delCmd(tt.key, tt.end, true)).GetDeleteRange()
			want := before
			if tt.deleted > 0 {
				want++
			}
			if after, _ := s.Revision(); after != want || r.Header.Revision != want {
				t.Errorf("revision %d (header %d), want %d", after, r.Header.Revision, want)
			}
			if r.Deleted != tt.deleted {
				t.Errorf("deleted %d, want %d", r.Deleted, tt.deleted)
			}
			if got := kvKeys(r.PrevKvs); !sameStrings(got, append([]string{}, tt.prev...)) {
				t.Errorf("prev kvs %q, want %q", got, tt.prev)
			}
			for _, kv := range r.PrevKvs {
				if string(kv.Value) != "v-"+string(kv.Key) {
					t.Errorf("prev kv %v", kv)
				}
			}
			if got := s.rangeKeys(&pb.RangeRequest{Key: []byte{0}, RangeEnd: []byte{0}}); !sameStrings(got, tt.left) {
				t.Errorf("left %q, want %q", got, tt.left)
			}
		})
	}
}

func TestCompactCommandErrors(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.put("a", "1")
	s.put("a", "2")
	tests := []struct {
		rev int64
		err error
	}{
		{4, ErrFutureRev},
		{2, nil},
		{2, ErrCompacted},
		{1, ErrCompacted},
		{3, nil},
	}
	for _, tt := range tests {
		_, err := s.apply(compactCmd(tt.rev))
		if !errors.Is(err, tt.err) && !(tt.err == nil && err == nil) {
			t.Errorf("compact %d: err %v, want %v", tt.rev, err, tt.err)
		}
	}
	if cur, comp := s.Revision(); cur != 3 || comp != 3 {
		t.Errorf("Revision() = %d, %d; want 3, 3", cur, comp)
	}
}
