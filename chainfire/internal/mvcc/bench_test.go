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

// BenchmarkApplyPutSingle applies one put per Apply call (raft under light load).
func BenchmarkApplyPutSingle(b *testing.B) {
	s := openTest(b)
	val := make([]byte, 256)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.idx++
		key := []byte(fmt.Sprintf("/registry/pods/default/pod-%08d", i%100000))
		res := s.Apply([]Entry{{Index: s.idx, Term: 1, Cmd: putReq(&pb.PutRequest{Key: key, Value: val})}})
		if res[0].Err != nil {
			b.Fatal(res[0].Err)
		}
	}
}

// BenchmarkApplyTxnCAS applies batches of 64 Kubernetes-style updates: txn(mod ==
// known) then put, else range. Commands are built once per key and reused.
func BenchmarkApplyTxnCAS(b *testing.B) {
	const keys = 10000
	s := benchStore(b, keys)
	val := make([]byte, 256)
	cmds := make([]*peerv1.Command, keys)
	mods := make([]*pb.Compare_ModRevision, keys)
	for i := range cmds {
		key := []byte(fmt.Sprintf("/registry/pods/default/pod-%08d", i))
		mods[i] = &pb.Compare_ModRevision{ModRevision: s.get(string(key), 0).ModRevision}
		cmds[i] = txnCmd(&pb.TxnRequest{
			Compare: []*pb.Compare{{Key: key, Target: pb.Compare_MOD, Result: pb.Compare_EQUAL, TargetUnion: mods[i]}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: key, Value: val}}}},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: key}}}},
		})
	}
	batch := make([]Entry, 64)
	b.ReportAllocs()
	b.ResetTimer()
	k := 0
	for i := 0; i < b.N; i++ {
		for j := range batch {
			s.idx++
			batch[j] = Entry{Index: s.idx, Term: 1, Cmd: cmds[(k+j)%keys]}
		}
		res := s.Apply(batch)
		for j, r := range res {
			t := r.Result.GetTxn()
			if r.Err != nil || !t.Succeeded {
				b.Fatalf("txn %d: %v %v", j, r.Err, t)
			}
			mods[(k+j)%keys].ModRevision = t.Header.Revision
		}
		k += 64
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/txn")
}
