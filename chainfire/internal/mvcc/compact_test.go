package mvcc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/cockroachdb/pebble/v2"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

// rawVersions counts the stored versions of key and its by-revision entries above the
// compaction point.
func rawVersions(t *testing.T, s *Store, key string) (versions, revEntries int) {
	t.Helper()
	err := s.reader(func(db *pebble.DB) error {
		p := appendKeyPrefix(nil, []byte(key))
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixSuccessor(append([]byte(nil), p...))})
		if err != nil {
			return err
		}
		for ok := it.First(); ok; ok = it.Next() {
			versions++
		}
		it.Close()
		it, err = db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxRev), UpperBound: prefixEnd([]byte(pfxRev))})
		if err != nil {
			return err
		}
		_, compacted := s.Revision()
		for ok := it.First(); ok; ok = it.Next() {
			cr, err := newChunkReader(it.Key(), it.Value())
			if err != nil {
				return err
			}
			for {
				rev, k, more, err := cr.next()
				if err != nil {
					return err
				}
				if !more {
					break
				}
				if string(k) == key && rev > compacted {
					revEntries++
				}
			}
		}
		return it.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	return
}

func TestCompaction(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.cp.maxDeletes, s.cp.maxScan = 7, 23  // many small batches
	s.put("keep", "1")                     // 2
	s.put("keep", "2")                     // 3
	s.put("gone", "1")                     // 4
	s.mustApply(delCmd("gone", "", false)) // 5
	s.put("keep", "3")                     // 6
	s.put("late", "1")                     // 7
	s.put("keep", "4")                     // 8
	for i := 0; i < 50; i++ {
		s.put(fmt.Sprintf("bulk%02d", i%10), fmt.Sprint(i)) // 9..58
	}
	h0, _, _, err := s.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	s.mustApply(compactCmd(6))
	hNow, _, comp, err := s.HashKV(0)
	if err != nil || comp != 6 {
		t.Fatal(err, comp)
	}
	if err := s.WaitCompaction(context.Background(), 6); err != nil {
		t.Fatal(err)
	}
	hDone, _, _, err := s.HashKV(0)
	if err != nil {
		t.Fatal(err)
	}
	if hNow != hDone {
		t.Errorf("HashKV changed with physical compaction: %08x vs %08x", hNow, hDone)
	}
	if h0 == hDone {
		t.Errorf("HashKV did not change with compaction")
	}
	tests := []struct {
		key               string
		versions, revRefs int
	}{
		{"keep", 2, 1}, // revision 6 (newest <= 6) and 8; only 8 above the compaction point in r/
		{"gone", 0, 0}, // deleted at 5 <= 6: everything removed
		{"late", 1, 1},
		{"bulk00", 5, 5},
	}
	for _, tt := range tests {
		v, r := rawVersions(t, s.Store, tt.key)
		if v != tt.versions || r != tt.revRefs {
			t.Errorf("%s: %d versions, %d rev entries; want %d, %d", tt.key, v, r, tt.versions, tt.revRefs)
		}
	}
	// Index chunks before the one holding revision 7 are gone.
	err = s.reader(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxRev), UpperBound: prefixEnd([]byte(pfxRev))})
		if err != nil {
			return err
		}
		defer it.Close()
		if !it.First() {
			return errors.New("no index chunks left")
		}
		if cr, _ := newChunkReader(it.Key(), it.Value()); cr.rev != 7 {
			return fmt.Errorf("first index chunk starts at %d, want 7", cr.rev)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if kv := s.get("keep", 6); kv == nil || string(kv.Value) != "3" || kv.Version != 3 {
		t.Errorf("keep@6 = %v", kv)
	}
	if kv := s.get("keep", 7); kv == nil || string(kv.Value) != "3" {
		t.Errorf("keep@7 = %v", kv)
	}
	if kv := s.get("gone", 6); kv != nil {
		t.Errorf("gone@6 = %v", kv)
	}
	if _, err := s.Range(context.Background(), &pb.RangeRequest{Key: []byte("keep"), Revision: 5}); !errors.Is(err, ErrCompacted) {
		t.Errorf("range @5: %v", err)
	}
	if _, _, _, err := s.HashKV(5); !errors.Is(err, ErrCompacted) {
		t.Errorf("HashKV(5): %v", err)
	}
}

// TestCompactionConcurrentRange checks that readers at revisions at or above the
// compaction point see exactly the pre-compaction answers while physical compaction
// runs in small batches.
func TestCompactionConcurrentRange(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.cp.maxDeletes, s.cp.maxScan = 16, 64
	rng := rand.New(rand.NewPCG(1, 2))
	const keys = 60
	for i := 0; i < 600; i++ {
		k := fmt.Sprintf("k%03d", rng.IntN(keys))
		if rng.IntN(5) == 0 {
			s.mustApply(delCmd(k, "", false))
		} else {
			s.put(k, fmt.Sprint(i))
		}
	}
	cur, _ := s.Revision()
	compactAt := cur / 2
	all := func(rev int64) *pb.RangeRequest {
		return &pb.RangeRequest{Key: []byte("k"), RangeEnd: []byte("l"), Revision: rev}
	}
	expect := map[int64][]*mvccpb.KeyValue{}
	for rev := compactAt; rev <= cur; rev++ {
		r, err := s.Range(context.Background(), all(rev))
		if err != nil {
			t.Fatal(err)
		}
		expect[rev] = r.Kvs
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for g := 0; g < 3; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 9))
			for ctx.Err() == nil {
				rev := compactAt + rng.Int64N(cur-compactAt+1)
				r, err := s.Range(ctx, all(rev))
				if err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				if got, want := len(r.Kvs), len(expect[rev]); got != want {
					errs <- fmt.Errorf("rev %d: %d keys, want %d", rev, got, want)
					return
				}
				for i, kv := range r.Kvs {
					w := expect[rev][i]
					if string(kv.Key) != string(w.Key) || kv.ModRevision != w.ModRevision || string(kv.Value) != string(w.Value) || kv.Version != w.Version {
						errs <- fmt.Errorf("rev %d: %v, want %v", rev, kv, w)
						return
					}
				}
			}
		}(uint64(g))
	}
	s.mustApply(compactCmd(compactAt))
	if err := s.WaitCompaction(context.Background(), compactAt); err != nil {
		t.Fatal(err)
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
