package mvcc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

func TestRestartPersistence(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openAt(t, dir)
	s.mustApply(grantCmd(9, 100))
	for i := 0; i < 20; i++ {
		s.put(fmt.Sprintf("k%d", i%4), fmt.Sprint(i))
	}
	s.mustApply(putReq(&pb.PutRequest{Key: []byte("leased"), Lease: 9}))
	s.mustApply(compactCmd(10))
	cur, comp := s.Revision()
	idx, term := s.AppliedIndex(), s.AppliedTerm()
	hash, _, _, err := s.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s2 := openAt(t, dir)
	if c, k := s2.Revision(); c != cur || k != comp || s2.AppliedIndex() != idx || s2.AppliedTerm() != term {
		t.Fatalf("after reopen: rev %d/%d compacted %d/%d applied %d/%d term %d/%d", c, cur, k, comp, s2.AppliedIndex(), idx, s2.AppliedTerm(), term)
	}
	if h, _, _, _ := s2.HashKV(0); h != hash {
		t.Errorf("HashKV %08x after reopen, want %08x", h, hash)
	}
	// Replaying already applied entries is a no-op; the new tail is applied.
	res := s2.Apply([]Entry{
		{Index: idx - 1, Term: term, Cmd: putCmd("replayed", "x")},
		{Index: idx, Term: term, Cmd: putCmd("replayed", "y")},
		{Index: idx + 1, Term: term + 1, Cmd: putCmd("new", "z")},
	})
	if res[0] != (ApplyResult{}) || res[1] != (ApplyResult{}) || res[2].Err != nil || res[2].Result.GetPut().Header.Revision != cur+1 {
		t.Fatalf("replay results %+v", res)
	}
	if kv := s2.get("replayed", 0); kv != nil {
		t.Errorf("replayed entry applied: %v", kv)
	}
	if s2.AppliedIndex() != idx+1 || s2.AppliedTerm() != term+1 {
		t.Errorf("applied %d term %d", s2.AppliedIndex(), s2.AppliedTerm())
	}
	// The lease table survives too.
	if _, err := s2.apply(putReq(&pb.PutRequest{Key: []byte("x"), Lease: 9})); err != nil {
		t.Errorf("lease lost on reopen: %v", err)
	}
}

func TestSnapshotRestore(t *testing.T) {
	t.Parallel()
	src := openTest(t)
	src.mustApply(grantCmd(1, 10))
	for i := 0; i < 200; i++ {
		src.put(fmt.Sprintf("key/%03d", i%50), fmt.Sprint(i))
	}
	src.mustApply(putReq(&pb.PutRequest{Key: []byte("key/leased"), Lease: 1}))
	src.mustApply(delCmd("key/01", "key/02", false))
	src.mustApply(compactCmd(100))

	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if cur, _ := src.Revision(); snap.Revision() != cur || snap.AppliedIndex() != src.AppliedIndex() {
		t.Errorf("snapshot at revision %d index %d, store at %d, %d", snap.Revision(), snap.AppliedIndex(), cur, src.AppliedIndex())
	}
	// Later writes are not in the snapshot.
	src.put("after", "snapshot")
	var buf bytes.Buffer
	n, err := snap.WriteTo(&buf)
	snap.Release()
	if err != nil || n != int64(buf.Len()) {
		t.Fatalf("WriteTo: %d, %v (buffer %d)", n, err, buf.Len())
	}
	wantHash, _, _, err := src.HashKV(src.rev.Load() - 1)
	if err != nil {
		t.Fatal(err)
	}

	dst := openTest(t)
	dst.put("old", "state")
	wOld, err := dst.Watch([]byte("key/"), []byte("key0"), 0, false) // needs revision 3: compacted in the snapshot
	if err != nil {
		t.Fatal(err)
	}
	defer wOld.Cancel()
	w, err := dst.Watch([]byte("key/"), []byte("key0"), 150, false) // a future revision here, history after restore
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	if err := dst.Restore(bytes.NewReader(buf.Bytes())); err != nil {
		t.Fatal(err)
	}
	gotHash, _, _, err := dst.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	if gotHash != wantHash {
		t.Errorf("HashKV %08x after restore, want %08x", gotHash, wantHash)
	}
	wantRev, _ := src.Revision()
	if c, k := dst.Revision(); c != wantRev-1 || k != 100 || dst.AppliedIndex() != src.AppliedIndex()-1 {
		t.Errorf("restored rev %d compacted %d applied %d", c, k, dst.AppliedIndex())
	}
	if kv := dst.get("old", 0); kv != nil {
		t.Errorf("old state survived restore: %v", kv)
	}
	if ks, _ := dst.LeaseKeys(1); len(ks) != 1 {
		t.Errorf("lease keys %q", ks)
	}
	// Watchers continue against the new state: from history, then live.
	if b := <-wOld.C(); b.CompactRevision != 100 {
		t.Errorf("watcher behind the restored compaction: %+v", b)
	}
	if _, ok := <-wOld.C(); ok {
		t.Error("compacted watcher not closed")
	}
	dst.idx = dst.AppliedIndex()
	rev := dst.put("key/live", "x")
	var got []int64
	for len(got) == 0 || got[len(got)-1] != rev {
		b := <-w.C()
		for _, ev := range b.Events {
			got = append(got, ev.Kv.ModRevision)
		}
	}
	// Revisions 150..202 are one put each, 203 deletes key/010..key/019, then the live put.
	var want []int64
	for r := int64(150); r <= 202; r++ {
		want = append(want, r)
	}
	for i := 0; i < 10; i++ {
		want = append(want, 203)
	}
	want = append(want, rev)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("watch after restore: revisions\n got %v\nwant %v", got, want)
	}
	// The restored store survives a reopen.
	dir := dst.dir
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	re := openAt(t, dir)
	if h, _, _, _ := re.HashKV(rev - 1); h != wantHash {
		t.Errorf("HashKV after reopen of restored store %08x, want %08x", h, wantHash)
	}
}

func TestRestoreRejectsCorruptSnapshot(t *testing.T) {
	t.Parallel()
	src := openTest(t)
	for i := 0; i < 30; i++ {
		src.put(fmt.Sprintf("k%d", i), "v")
	}
	snap, err := src.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	var good bytes.Buffer
	if _, err := snap.WriteTo(&good); err != nil {
		t.Fatal(err)
	}
	g := good.Bytes()
	flip := func(i int) []byte {
		b := bytes.Clone(g)
		b[i] ^= 0x40
		return b
	}
	tests := []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"bad magic", flip(0)},
		{"bad version", flip(11)},
		{"flipped data", flip(len(g) / 2)},
		{"flipped checksum", flip(len(g) - 1)},
		{"truncated", g[:len(g)-5]},
		{"truncated in records", g[:len(g)/2]},
	}
	dst := openTest(t)
	dst.put("mine", "1")
	want, _, _, _ := dst.HashKV(0)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := dst.Restore(bytes.NewReader(tt.data))
			if !errors.Is(err, ErrBadSnapshot) {
				t.Fatalf("err %v, want ErrBadSnapshot", err)
			}
			if h, _, _, _ := dst.HashKV(0); h != want {
				t.Fatal("state changed by a rejected restore")
			}
			if kv := dst.get("mine", 0); kv == nil {
				t.Fatal("old state lost")
			}
		})
	}
	// Still writable afterwards.
	dst.put("mine", "2")
	if r, err := dst.Range(context.Background(), &pb.RangeRequest{Key: []byte("mine")}); err != nil || string(r.Kvs[0].Value) != "2" {
		t.Fatalf("after rejected restores: %v %v", r, err)
	}
}
