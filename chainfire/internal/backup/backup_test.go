package backup

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

func put(t *testing.T, s *mvcc.Store, index uint64, key string) {
	t.Helper()
	res := s.Apply([]mvcc.Entry{{Index: index, Term: 1, Cmd: &peerv1.Command{Op: &peerv1.Command_Put{Put: &pb.PutRequest{Key: []byte(key), Value: []byte("v")}}}}})
	if res[0].Err != nil {
		t.Fatal(res[0].Err)
	}
}

func TestWriteRestorePrune(t *testing.T) {
	s, err := mvcc.Open(t.TempDir(), mvcc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	dir := t.TempDir()
	var paths []string
	for i := range 4 {
		put(t, s, uint64(i+1), fmt.Sprintf("k%d", i))
		p, err := Write(s, dir, time.Unix(int64(1000+i), 0))
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	if err := Prune(dir, 2); err != nil {
		t.Fatal(err)
	}
	files, _ := List(dir)
	if len(files) != 2 || files[0] != paths[3] || files[1] != paths[2] {
		t.Fatalf("after prune: %v (wrote %v)", files, paths)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, ".tmp-*")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
	// The newest file restores to the store's state.
	r, err := mvcc.Open(t.TempDir(), mvcc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f, _ := os.Open(files[0])
	defer f.Close()
	if err := r.Restore(f); err != nil {
		t.Fatal(err)
	}
	got, err := r.Range(context.Background(), &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l")})
	if err != nil || got.Count != 4 {
		t.Fatalf("restored %v keys, %v", got.GetCount(), err)
	}
}

func TestRunWritesOnSchedule(t *testing.T) {
	s, err := mvcc.Open(t.TempDir(), mvcc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	put(t, s, 1, "a")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, s, Config{Dir: dir, Interval: 20 * time.Millisecond, Retain: 3}); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		files, _ := List(dir)
		if len(files) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("files: %v", files)
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	cancel()
	<-done
	if files, _ := List(dir); len(files) > 3 {
		t.Fatalf("retention not applied: %d files", len(files))
	}
}
