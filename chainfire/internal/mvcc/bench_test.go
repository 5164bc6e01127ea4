package mvcc

import (
	"context"
	"fmt"
	"testing"

	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// benchEntries builds n batches of 64 puts of 256-byte values over keySpace keys.
func benchEntries(n, keySpace int) [][]Entry {
	val := make([]byte, 256)
	out := make([][]Entry, n)
	idx := uint64(0)
	k := 0
	for i := range out {
		batch := make([]Entry, 64)
		for j := range batch {
			idx++
			key := []byte(fmt.Sprintf("/registry/pods/default/pod-%08d", k%keySpace))
			k++
			batch[j] = Entry{Index: idx, Term: 1, Cmd: &peerv1.Command{Op: &peerv1.Command_Put{Put: &pb.PutRequest{Key: key, Value: val}}}}
		}
		out[i] = batch
	}
	return out
}

func benchApplyPut(b *testing.B, watch bool) {
	s := openTest(b, func(o *Options) { o.CacheBytes, o.MemTableBytes = 64<<20, 64<<20 })
	if watch {
		w, err := s.Watch([]byte("/registry/"), []byte("/registry0"), 0, false)
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for range w.C() {
			}
		}()
		defer w.Cancel()
	}
	batches := benchEntries(b.N, 100000)
	b.ReportAllocs()
	b.SetBytes(64 * 256)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		res := s.Apply(batches[i])
		if res[0].Err != nil {
			b.Fatal(res[0].Err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/put")
}

// BenchmarkApplyPut applies batches of 64 puts (256-byte values, 100k distinct keys).
func BenchmarkApplyPut(b *testing.B) { benchApplyPut(b, false) }

// BenchmarkApplyPutWatched is BenchmarkApplyPut with one watcher on the whole prefix.
func BenchmarkApplyPutWatched(b *testing.B) { benchApplyPut(b, true) }

func benchStore(b *testing.B, keys int) *tstore {
	s := openTest(b, func(o *Options) { o.CacheBytes, o.MemTableBytes = 64<<20, 16<<20 })
	for _, batch := range benchEntries((keys+63)/64, keys) {
		s.Apply(batch)
	}
	s.idx = s.AppliedIndex()
	return s
}

// BenchmarkRangeSingleKey reads one key of 10k (each written once), in parallel.
func BenchmarkRangeSingleKey(b *testing.B) {
	s := benchStore(b, 10000)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb_ *testing.PB) {
		i := 0
		for pb_.Next() {
			key := []byte(fmt.Sprintf("/registry/pods/default/pod-%08d", (i*7919)%10000))
			i++
			r, err := s.Range(ctx, &pb.RangeRequest{Key: key})
			if err != nil || len(r.Kvs) != 1 {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRangePrefix100 reads 100 consecutive keys with a limit.
func BenchmarkRangePrefix100(b *testing.B) {
	s := benchStore(b, 10000)
	ctx := context.Background()
	req := &pb.RangeRequest{Key: []byte("/registry/pods/default/pod-00001000"), RangeEnd: []byte("/registry/pods/default/pod-00001100")}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r, err := s.Range(ctx, req)
		if err != nil || len(r.Kvs) != 100 {
			b.Fatal(err, len(r.Kvs))
		}
	}
}
