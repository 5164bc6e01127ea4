package mvcc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

func TestMaintenanceAndClose(t *testing.T) {
	t.Parallel()
	s := openTest(t, func(o *Options) { o.Sync = true })
	for i := 0; i < 200; i++ {
		s.put(fmt.Sprintf("k%03d", i%20), fmt.Sprint(i))
	}
	if s.DBSize() <= 0 {
		t.Errorf("DBSize() = %d", s.DBSize())
	}
	s.mustApply(compactCmd(150))
	if err := s.WaitCompaction(context.Background(), 150); err != nil {
		t.Fatal(err)
	}
	h1, _, _, _ := s.HashKV(0)
	if err := s.Defragment(context.Background()); err != nil {
		t.Fatal(err)
	}
	if h2, _, _, _ := s.HashKV(0); h1 != h2 {
		t.Errorf("HashKV changed by Defragment")
	}
	w, err := s.Watch([]byte("k"), nil, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, ok := <-w.C(); ok {
		t.Error("watcher open after Close")
	}
	w.Cancel()
	checks := map[string]error{}
	_, checks["Range"] = s.Range(context.Background(), &pb.RangeRequest{Key: []byte("k")})
	_, _, _, checks["HashKV"] = s.HashKV(0)
	_, checks["Members"] = s.Members()
	_, checks["Snapshot"] = s.Snapshot()
	_, checks["Watch"] = s.Watch([]byte("k"), nil, 0, false)
	checks["Apply"] = s.Apply([]Entry{{Index: 1000, Cmd: putCmd("x", "y")}})[0].Err
	checks["WaitCompaction"] = s.WaitCompaction(context.Background(), 1000)
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close: %v", name, err)
		}
	}
}

func TestOpenRefusesMissingDatabase(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir)
	s.put("a", "1")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "db-0")); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("Open succeeded with the database named by CURRENT missing")
	}
}

func TestTxnOverlappingDeletes(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		s.put(k, k)
	}
	w, err := s.Watch([]byte("a"), []byte("z"), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	r := s.mustApply(txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c"), opDel("b", "e")}})).GetTxn()
	if d1, d2 := r.Responses[0].GetResponseDeleteRange().Deleted, r.Responses[1].GetResponseDeleteRange().Deleted; d1 != 2 || d2 != 2 {
		t.Errorf("deleted %d and %d, want 2 and 2", d1, d2)
	}
	got := collect(t, w, 6)
	want := fmt.Sprint([]evSig{
		{typ: 1, key: "a", prev: "a@2", mod: 6}, {typ: 1, key: "b", prev: "b@3", mod: 6},
		{typ: 1, key: "c", prev: "c@4", mod: 6}, {typ: 1, key: "d", prev: "d@5", mod: 6},
	})
	if fmt.Sprint(got) != want {
		t.Errorf("events %v, want %v", got, want)
	}
}
