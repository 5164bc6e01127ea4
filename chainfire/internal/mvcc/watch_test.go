package mvcc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

// evSig is a comparable summary of an event.
type evSig struct {
	typ              mvccpb.Event_EventType
	key, value, prev string
	mod, ver         int64
}

func sig(ev *mvccpb.Event) evSig {
	s := evSig{typ: ev.Type, key: string(ev.Kv.Key), value: string(ev.Kv.Value), mod: ev.Kv.ModRevision, ver: ev.Kv.Version}
	if ev.PrevKv != nil {
		s.prev = fmt.Sprintf("%s@%d", ev.PrevKv.Value, ev.PrevKv.ModRevision)
	}
	return s
}

// collect reads w until it has seen an event at revision until (or times out), checking
// that batches are well formed: ascending, revisions never split across batches.
func collect(t *testing.T, w *Watcher, until int64) []evSig {
	t.Helper()
	out, err := collectErr(w, until)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func collectErr(w *Watcher, until int64) ([]evSig, error) {
	var out []evSig
	last := int64(0)
	timeout := time.After(10 * time.Second)
	for last < until {
		select {
		case b, ok := <-w.C():
			if !ok {
				return out, fmt.Errorf("watch closed at %d", last)
			}
			if b.CompactRevision != 0 {
				return out, fmt.Errorf("unexpected compaction batch %d", b.CompactRevision)
			}
			if len(b.Events) == 0 || b.Revision != b.Events[len(b.Events)-1].Kv.ModRevision {
				return out, fmt.Errorf("malformed batch %+v", b)
			}
			if b.Events[0].Kv.ModRevision <= last {
				return out, fmt.Errorf("batch starts at %d after %d: split or reordered", b.Events[0].Kv.ModRevision, last)
			}
			for _, ev := range b.Events {
				if ev.Kv.ModRevision < last {
					return out, fmt.Errorf("events out of order")
				}
				last = ev.Kv.ModRevision
				out = append(out, sig(ev))
			}
		case <-timeout:
			return out, fmt.Errorf("timed out at revision %d, waiting for %d", last, until)
		}
	}
	return out, nil
}

func TestWatchReplayThenLive(t *testing.T) {
	t.Parallel()
	s := openTest(t)
	s.put("a/1", "x")                                                                                                    // 2
	s.put("b", "ignored")                                                                                                // 3
	s.put("a/2", "y")                                                                                                    // 4
	s.put("a/1", "x2")                                                                                                   // 5
	s.mustApply(delCmd("a/", "a0", false))                                                                               // 6: deletes a/1, a/2
	s.mustApply(txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a/3", "t"), opPut("b", "t"), opPut("a/0", "t")}})) // 7

	w, err := s.Watch([]byte("a/"), []byte("a0"), 3, true)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	single, err := s.Watch([]byte("a/1"), nil, 2, false)
	if err != nil {
		t.Fatal(err)
	}
	defer single.Cancel()
	s.put("a/1", "live") // 8
	s.put("c", "other")  // 9
	s.put("a/2", "end")  // 10

	P, D := mvccpb.Event_PUT, mvccpb.Event_DELETE
	want := []evSig{
		{typ: P, key: "a/2", value: "y", mod: 4, ver: 1},
		{typ: P, key: "a/1", value: "x2", mod: 5, ver: 2, prev: "x@2"},
		{typ: D, key: "a/1", mod: 6, prev: "x2@5"},
		{typ: D, key: "a/2", mod: 6, prev: "y@4"},
		{typ: P, key: "a/3", value: "t", mod: 7, ver: 1},
		{typ: P, key: "a/0", value: "t", mod: 7, ver: 1},
		{typ: P, key: "a/1", value: "live", mod: 8, ver: 1},
		{typ: P, key: "a/2", value: "end", mod: 10, ver: 1},
	}
	if got := collect(t, w, 10); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("range watch:\n got %v\nwant %v", got, want)
	}
	wantSingle := []evSig{
		{typ: P, key: "a/1", value: "x", mod: 2, ver: 1},
		{typ: P, key: "a/1", value: "x2", mod: 5, ver: 2},
		{typ: D, key: "a/1", mod: 6},
		{typ: P, key: "a/1", value: "live", mod: 8, ver: 1},
	}
	if got := collect(t, single, 8); fmt.Sprint(got) != fmt.Sprint(wantSingle) {
		t.Errorf("key watch:\n got %v\nwant %v", got, wantSingle)
	}
	// Live-only watch with prev_kv: the event comes from Apply, not history.
	live, err := s.Watch([]byte("a/"), []byte("a0"), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	s.mustApply(delCmd("a/3", "", false)) // 11
	if got := collect(t, live, 11); fmt.Sprint(got) != fmt.Sprint([]evSig{{typ: D, key: "a/3", mod: 11, prev: "t@7"}}) {
		t.Errorf("live delete event %v", got)
	}
	live.Cancel()
	live.Cancel()
	if _, ok := <-live.C(); ok {
		t.Error("channel open after Cancel")
	}
}

// TestWatchSlowConsumer: a watcher with a tiny buffer that does not read while many
// revisions are applied falls behind without blocking Apply, then receives exactly the
// same events, in the same order, as a watcher that kept up.
func TestWatchSlowConsumer(t *testing.T) {
	t.Parallel()
	s := openTest(t, func(o *Options) { o.WatchBuffer = 2 })
	fast, err := s.Watch([]byte{0}, []byte{0}, 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer fast.Cancel()
	slow, err := s.Watch([]byte("k"), []byte("l"), 0, true)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Cancel()

	var fastGot []evSig
	var fastErr error
	var wg sync.WaitGroup
	wg.Add(1)
	const total = 3000
	finalCh := make(chan int64, 1)
	go func() {
		defer wg.Done()
		if fastGot, fastErr = collectErr(fast, total+1); fastErr != nil {
			return
		}
		if final := <-finalCh; fastGot[len(fastGot)-1].mod < final {
			var more []evSig
			more, fastErr = collectErr(fast, final)
			fastGot = append(fastGot, more...)
		}
	}()
	rng := rand.New(rand.NewPCG(3, 4))
	start := time.Now()
	for s.rev.Load() < total+1 {
		var entries []Entry
		for n := 1 + rng.IntN(20); n > 0; n-- {
			s.idx++
			var cmd = putCmd(fmt.Sprintf("k%02d", rng.IntN(40)), fmt.Sprint(s.idx))
			switch rng.IntN(10) {
			case 0:
				cmd = delCmd(fmt.Sprintf("k%d", rng.IntN(4)), fmt.Sprintf("k%d", 1+rng.IntN(4)), false)
			case 1:
				i := rng.IntN(39)
				cmd = txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut(fmt.Sprintf("k%02d", i), "t"), opPut(fmt.Sprintf("k%02d", i+1), "t"), opPut("other", "t")}})
			}
			entries = append(entries, Entry{Index: s.idx, Term: 1, Cmd: cmd})
		}
		s.Apply(entries)
		if cur := s.rev.Load(); cur > total+1 {
			break
		}
	}
	// Make sure the last revision is a "k" event so both watchers end at it.
	final := s.put("k00", "final")
	finalCh <- final
	applyTime := time.Since(start)
	slowGot := collect(t, slow, final)
	wg.Wait()
	if fastErr != nil {
		t.Fatal(fastErr)
	}
	var fastK []evSig
	for _, e := range fastGot {
		if e.key[0] == 'k' {
			fastK = append(fastK, e)
		}
	}
	if len(slowGot) < total/2 || fmt.Sprint(slowGot) != fmt.Sprint(fastK) {
		t.Fatalf("slow watcher got %d events, fast %d (k only); sequences differ", len(slowGot), len(fastK))
	}
	t.Logf("%d events; apply of %d revisions took %v while the slow watcher did not read", len(slowGot), final, applyTime)
}

func TestWatchCompaction(t *testing.T) {
	t.Parallel()
	s := openTest(t, func(o *Options) { o.WatchBuffer = 1 })
	for i := 0; i < 10; i++ {
		s.put("k", fmt.Sprint(i)) // 2..11
	}
	s.mustApply(compactCmd(5))
	tests := []struct {
		start int64
		err   bool
	}{{1, true}, {4, true}, {5, true}, {6, false}, {0, false}, {100, false}}
	for _, tt := range tests {
		w, err := s.Watch([]byte("k"), nil, tt.start, false)
		var ce *CompactedError
		if tt.err {
			if !errors.As(err, &ce) || ce.CompactRevision != 5 || !errors.Is(err, ErrCompacted) {
				t.Errorf("start %d: err %v, want CompactedError{5}", tt.start, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("start %d: %v", tt.start, err)
			continue
		}
		w.Cancel()
	}

	// A watcher that falls behind and is overtaken by a compaction gets CompactRevision.
	w, err := s.Watch([]byte("k"), nil, 0, false)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Cancel()
	s.put("k", "a") // 12: fills the buffer of 1
	s.put("k", "b") // 13: watcher becomes unsynced, needs 13
	s.put("k", "c") // 14
	s.mustApply(compactCmd(14))
	b := <-w.C()
	if b.Revision != 12 {
		t.Fatalf("first batch %+v", b)
	}
	select {
	case b = <-w.C():
	case <-time.After(5 * time.Second):
		t.Fatal("no compaction batch")
	}
	if b.CompactRevision != 14 || len(b.Events) != 0 {
		t.Fatalf("batch %+v, want CompactRevision 14", b)
	}
	if _, ok := <-w.C(); ok {
		t.Fatal("channel open after compaction batch")
	}
}

// TestWatchConcurrentRegistration registers watchers while Apply runs; each must see
// every revision of its key from its start on (exercises the switch between collected
// and uncollected Apply calls and the catch-up path).
func TestWatchConcurrentRegistration(t *testing.T) {
	t.Parallel()
	s := openTest(t, func(o *Options) { o.WatchBuffer = 3 })
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			s.idx++
			s.Apply([]Entry{{Index: s.idx, Term: 1, Cmd: putCmd("k", fmt.Sprint(i))}})
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for j := 0; j < 6; j++ {
				cur, _ := s.Revision()
				start := int64(0)
				if j%2 == 1 {
					start = max(2, cur-int64(100*g))
				}
				w, err := s.Watch([]byte("k"), nil, start, false)
				if err != nil {
					errs <- err
					return
				}
				got, err := collectErr(w, cur+200)
				w.Cancel()
				if err != nil {
					errs <- fmt.Errorf("watcher %d/%d from %d: %w", g, j, start, err)
					return
				}
				for i := 1; i < len(got); i++ {
					if got[i].mod != got[i-1].mod+1 {
						errs <- fmt.Errorf("watcher %d/%d from %d: gap %d -> %d", g, j, start, got[i-1].mod, got[i].mod)
						return
					}
				}
				if start > 0 && got[0].mod != start {
					errs <- fmt.Errorf("watcher %d/%d from %d begins at %d", g, j, start, got[0].mod)
				}
			}
		}(g)
	}
	wg.Wait()
	close(stop)
	<-done
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
