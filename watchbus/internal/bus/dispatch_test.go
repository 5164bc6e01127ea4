package bus

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

func woken(wk *Waiter) bool {
	select {
	case <-wk.C:
		return true
	default:
		return false
	}
}

func bs(ps ...string) [][]byte {
	var out [][]byte
	for _, p := range ps {
		out = append(out, []byte(p))
	}
	return NormalizePrefixes(out)
}

// TestWindowDispatch: after a change the window wakes the waiters with an event under
// their prefixes, and only them; Position tells a caught-up waiter that was not woken
// that it has seen everything up to the change, and a waiter with unread revisions
// concerning it that it has not; a Reset wakes everyone and is never skipped.
func TestWindowDispatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name         string
		prefixes     []string // waiter's; the window's head is 10
		cursor       int64    // waiter's cursor when the change happens
		change       func(w *Window)
		wantWoken    bool
		wantPosition int64 // Position(cursor) after the change
	}{
		{name: "matching event wakes", prefixes: []string{"/a/"}, cursor: 10, change: func(w *Window) { w.Append(11, []*mvccpb.Event{ev("/a/1", 11)}) }, wantWoken: true, wantPosition: 10},
		{name: "other prefix: not woken, position moves", prefixes: []string{"/a/"}, cursor: 10, change: func(w *Window) { w.Append(11, []*mvccpb.Event{ev("/b/1", 11)}) }, wantPosition: 11},
		{name: "key shorter than the prefix", prefixes: []string{"/a/long/"}, cursor: 10, change: func(w *Window) { w.Append(11, []*mvccpb.Event{ev("/a/", 11)}) }, wantPosition: 11},
		{name: "nested prefix matches", prefixes: []string{"/a/", "/b/c/"}, cursor: 10, change: func(w *Window) { w.Append(11, []*mvccpb.Event{ev("/b/c/d", 11)}) }, wantWoken: true, wantPosition: 10},
		{name: "one matching event of a txn wakes", prefixes: []string{"/a/"}, cursor: 10, change: func(w *Window) { w.Append(11, []*mvccpb.Event{ev("/b/1", 11), ev("/a/1", 11)}) }, wantWoken: true, wantPosition: 10},
		{name: "progress: not woken, position moves", prefixes: []string{"/a/"}, cursor: 10, change: func(w *Window) { w.Advance(14) }, wantPosition: 14},
		{name: "reset wakes", prefixes: []string{"/a/"}, cursor: 10, change: func(w *Window) { w.Reset(20, 15) }, wantWoken: true, wantPosition: 10},
		{name: "refused append: nothing", prefixes: []string{"/a/"}, cursor: 10, change: func(w *Window) { w.Append(10, []*mvccpb.Event{ev("/a/1", 10)}) }, wantPosition: 10},
		{name: "no prefixes: every change wakes", cursor: 10, change: func(w *Window) { w.Advance(12) }, wantWoken: true, wantPosition: 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := NewWindow(WindowConfig{MaxEvents: 100}, 10)
			var ps [][]byte
			if tc.prefixes != nil {
				ps = bs(tc.prefixes...)
			}
			var cursor atomic.Int64
			cursor.Store(tc.cursor)
			wk := NewWaiter(ps, &cursor)
			w.AddWaiter(wk)
			tc.change(w)
			if got := woken(wk); got != tc.wantWoken {
				t.Fatalf("woken = %v, want %v", got, tc.wantWoken)
			}
			if got := w.Position(wk, tc.cursor); got != tc.wantPosition {
				t.Fatalf("position = %d, want %d", got, tc.wantPosition)
			}
		})
	}
	t.Run("unread matching revision holds the position", func(t *testing.T) {
		w := NewWindow(WindowConfig{MaxEvents: 100}, 10)
		var cursor atomic.Int64
		cursor.Store(10)
		wk := NewWaiter(bs("/a/"), &cursor)
		w.AddWaiter(wk)
		w.Append(11, []*mvccpb.Event{ev("/a/1", 11)})
		w.Append(12, []*mvccpb.Event{ev("/b/1", 12)})
		w.Advance(13)
		if got := w.Position(wk, 10); got != 10 {
			t.Fatalf("position before reading 11 = %d, want 10", got)
		}
		if got := w.Position(wk, 11); got != 13 {
			t.Fatalf("position after reading 11 = %d, want 13", got)
		}
	})
	// A reader parked for long (its own cursor far behind, the revisions since had
	// nothing for it) that a revision finally concerns resumes from where it had got,
	// not from its stale cursor (which the window may have evicted meanwhile).
	t.Run("idle reader woken resumes from its position", func(t *testing.T) {
		w := NewWindow(WindowConfig{MaxEvents: 5}, 10)
		var cursor atomic.Int64
		cursor.Store(10)
		wk := NewWaiter(bs("/a/"), &cursor)
		w.AddWaiter(wk)
		for r := int64(11); r <= 30; r++ {
			w.Append(r, []*mvccpb.Event{ev("/b/x", r)})
		}
		w.Append(31, []*mvccpb.Event{ev("/a/1", 31)})
		w.Append(32, []*mvccpb.Event{ev("/a/2", 32)}) // a second one before the reader runs
		if !woken(wk) {
			t.Fatal("not woken")
		}
		pos := w.Position(wk, cursor.Load())
		if pos != 30 {
			t.Fatalf("position %d, want 30 (everything before the first /a/ revision)", pos)
		}
		if r := w.Read(pos, 10); r.Evicted || len(r.Entries) != 2 || r.Entries[0].Revision != 31 {
			t.Fatalf("read from the position: %+v", r)
		}
	})
	t.Run("a waiter joining later", func(t *testing.T) {
		w := NewWindow(WindowConfig{MaxEvents: 100}, 10)
		w.Append(11, []*mvccpb.Event{ev("/a/1", 11)}) // before any /a/ waiter exists
		w.Append(12, []*mvccpb.Event{ev("/b/1", 12)})
		var cursor atomic.Int64
		cursor.Store(10)
		wk := NewWaiter(bs("/a/"), &cursor)
		w.AddWaiter(wk)
		if got := w.Position(wk, 10); got != 10 {
			t.Fatalf("position of a new waiter behind an undelivered revision = %d, want 10", got)
		}
		w.Append(13, []*mvccpb.Event{ev("/b/2", 13)})
		if got := w.Position(wk, 12); got != 13 {
			t.Fatalf("position after it read 12 = %d, want 13", got)
		}
	})
	t.Run("registry", func(t *testing.T) {
		w := NewWindow(WindowConfig{MaxEvents: 100}, 10)
		var c1, c2, c3, c4 atomic.Int64
		a1, a2, b, all := NewWaiter(bs("/a/"), &c1), NewWaiter(bs("/a/"), &c2), NewWaiter(bs("/b/", "/a/x/"), &c3), NewWaiter(nil, &c4)
		for _, wk := range []*Waiter{a1, a2, b, all, a1} { // a1 twice: still once
			w.AddWaiter(wk)
		}
		w.RemoveWaiter(a2)
		w.RemoveWaiter(a2)
		if n := w.Waiters(); n != 3 {
			t.Fatalf("%d waiters, want 3", n)
		}
		w.Append(11, []*mvccpb.Event{ev("/a/x/1", 11)})
		for name, tc := range map[string]struct {
			wk   *Waiter
			want bool
		}{"a1": {a1, true}, "a2 (removed)": {a2, false}, "b": {b, true}, "all": {all, true}} {
			if got := woken(tc.wk); got != tc.want {
				t.Fatalf("%s woken = %v", name, got)
			}
		}
		w.RemoveWaiter(a1)
		w.RemoveWaiter(b)
		w.Append(12, []*mvccpb.Event{ev("/a/x/1", 12)})
		if woken(a1) || woken(b) || w.Position(a1, 12) != 12 {
			t.Fatal("removed waiters still dispatched to")
		}
		if len(w.index) != 0 || len(w.lengths) != 0 || len(w.sortedLengths) != 0 || len(w.groups) != 0 {
			t.Fatalf("index not emptied: %v %v %v", w.index, w.lengths, w.sortedLengths)
		}
	})
}

// TestDispatchAcrossPrefixes: with subscribers on two prefixes, a busy prefix leaves
// the other's subscriber parked (TestWindowDispatch), yet its resume point follows the
// head (its bookmarks carry it) and it is never taken for a slow consumer, while both
// receive exactly their own revisions, in order, with gapless sequence numbers.
func TestDispatchAcrossPrefixes(t *testing.T) {
	t.Parallel()
	b, src := startBus(t, Config{SubscriberQueue: 4, SlowConsumerTimeout: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := func(prefix string, c *collector, errc chan<- error) {
		req := &watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte(prefix)}, StartRevision: 2,
			BookmarkInterval: durationpbNew(100 * time.Millisecond)}
		errc <- b.Subscribe(ctx, req, Stream{Send: c.send})
	}
	var a, bb collector
	errc := make(chan error, 2)
	go sub("/a/", &a, errc)
	go sub("/b/", &bb, errc)
	waitFor(t, func() bool { return b.Window().Waiters() == 2 })
	const last = 200
	for r := int64(2); r <= last; r++ {
		if r%50 == 0 {
			put(src, r, "/a/k")
		} else {
			put(src, r, "/b/k")
		}
	}
	waitFor(t, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		n := len(a.msgs)
		return n > 0 && a.msgs[n-1].Bookmark && a.msgs[n-1].Revision == last
	})
	waitFor(t, func() bool { revs, _ := bb.events(); return len(revs) == last-1-last/50 })
	for name, c := range map[string]*collector{"/a/": &a, "/b/": &bb} {
		revs, ok := c.events()
		if !ok {
			t.Fatalf("%s: sequence gap", name)
		}
		for i, r := range revs {
			if (r%50 == 0) != (name == "/a/") || (i > 0 && r <= revs[i-1]) {
				t.Fatalf("%s: revisions %v", name, revs)
			}
		}
	}
	select {
	case err := <-errc:
		t.Fatalf("a subscriber ended: %v", err)
	default:
	}
	if n := testutilCount(b.metrics.SlowConsumerCuts); n != 0 {
		t.Fatalf("%v slow-consumer cuts", n)
	}
}

// holdRecorder is a Stream that records messages and the transport's hold state at
// each send, as the server's flush gate would see it.
type holdRecorder struct {
	mu      sync.Mutex
	held    bool
	msgs    []*watchbusv1.SubscribeResponse
	heldAt  []bool // hold state when msgs[i] was sent
	flushes int    // sends that flushed (not held)
}

func (h *holdRecorder) stream() Stream {
	return Stream{
		Send: func(m *watchbusv1.SubscribeResponse) error {
			h.mu.Lock()
			defer h.mu.Unlock()
			h.msgs = append(h.msgs, m)
			h.heldAt = append(h.heldAt, h.held)
			if !h.held {
				h.flushes++
			}
			return nil
		},
		Hold: func(on bool) { h.mu.Lock(); h.held = on; h.mu.Unlock() },
	}
}

// TestBatchedDelivery: a subscriber replaying many revisions from the window gets them
// in runs sent with the transport held and flushed once per run; sequence numbers stay
// gapless, every revision's matching events (a transaction) stay in one message, the
// last message of a run is never held (nothing is left unflushed), and the hold is off
// when the stream ends.
func TestBatchedDelivery(t *testing.T) {
	t.Parallel()
	b, src := startBus(t, Config{})
	const last = 600 // > 2 × readBatch
	for r := int64(2); r <= last; r++ {
		src.upstream <- chainfire.WatchResponse{Header: &pb.ResponseHeader{Revision: r},
			Events: []*mvccpb.Event{ev("/a/x", r), ev("/b/y", r), ev("/a/z", r)}}
	}
	waitFor(t, func() bool { return b.Window().Head() == last })
	ctx, cancel := context.WithCancel(context.Background())
	var h holdRecorder
	done := make(chan error, 1)
	go func() {
		done <- b.Subscribe(ctx, &watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte("/a/")}, StartRevision: 2}, h.stream())
	}()
	waitFor(t, func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.msgs) == last-1 })
	cancel()
	<-done
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.held {
		t.Fatal("hold still on after the stream ended")
	}
	for i, m := range h.msgs {
		m = wire(m)
		if m.Sequence != uint64(i+1) || m.Revision != int64(i+2) {
			t.Fatalf("message %d: sequence %d revision %d", i, m.Sequence, m.Revision)
		}
		if len(m.Events) != 2 || string(m.Events[0].Kv.Key) != "/a/x" || string(m.Events[1].Kv.Key) != "/a/z" {
			t.Fatalf("message %d: events %v, want the revision's two /a/ events together", i, m.Events)
		}
	}
	if h.heldAt[len(h.heldAt)-1] {
		t.Fatal("last message sent held (never flushed)")
	}
	// 599 revisions read 256 at a time: at most a few flushes, far fewer than messages.
	if h.flushes > 8 {
		t.Fatalf("%d flushes for %d messages: not batched", h.flushes, len(h.msgs))
	}
}

// TestBatchedDeliveryError: a send failing inside a run ends the subscription with
// that error, and the cursor (resume point) stays at the last revision sent.
func TestBatchedDeliveryError(t *testing.T) {
	t.Parallel()
	b, src := startBus(t, Config{})
	for r := int64(2); r <= 20; r++ {
		put(src, r, "/a/k")
	}
	waitFor(t, func() bool { return b.Window().Head() == 20 })
	boom := errors.New("boom")
	var sent []int64
	err := b.Subscribe(t.Context(), &watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte("/a/")}, StartRevision: 2}, Stream{
		Send: func(m *watchbusv1.SubscribeResponse) error {
			if m.Revision == 10 {
				return boom
			}
			sent = append(sent, m.Revision)
			return nil
		},
		Hold: func(bool) {},
	})
	if !errors.Is(err, boom) || len(sent) != 8 || sent[7] != 9 {
		t.Fatalf("err %v after %v, want boom after 2..9", err, sent)
	}
}

// TestEncodings: a message built from an entry's cached encoding decodes to exactly the
// filtered events (prefix subsets, prev_kv stripped unless asked for), subscribers with
// the same view share one encoding, and entries beyond the newest encodedEntries fall
// back to per-subscriber messages.
func TestEncodings(t *testing.T) {
	t.Parallel()
	withPrev := func(e *mvccpb.Event) *mvccpb.Event {
		e.PrevKv = &mvccpb.KeyValue{Key: e.Kv.Key, Value: []byte("old")}
		return e
	}
	events := []*mvccpb.Event{withPrev(ev("/a/1", 5)), ev("/b/1", 5), withPrev(ev("/a/2", 5)), ev("/c/1", 5)}
	tests := []struct {
		name     string
		prefixes []string
		prevKV   bool
		want     []string // keys
	}{
		{name: "all events", prefixes: []string{"/"}, want: []string{"/a/1", "/b/1", "/a/2", "/c/1"}},
		{name: "all events with prev_kv", prefixes: []string{"/"}, prevKV: true, want: []string{"/a/1", "/b/1", "/a/2", "/c/1"}},
		{name: "subset", prefixes: []string{"/a/"}, want: []string{"/a/1", "/a/2"}},
		{name: "subset with prev_kv", prefixes: []string{"/a/"}, prevKV: true, want: []string{"/a/1", "/a/2"}},
		{name: "two prefixes", prefixes: []string{"/c/", "/b/"}, want: []string{"/b/1", "/c/1"}},
		{name: "nothing", prefixes: []string{"/d/"}},
	}
	w := NewWindow(WindowConfig{MaxEvents: 1 << 20}, 4)
	w.Append(5, events)
	e := w.Read(4, 1).Entries[0]
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ps [][]byte
			for _, p := range tc.prefixes {
				ps = append(ps, []byte(p))
			}
			r := &Request{Prefixes: NormalizePrefixes(ps), PrevKV: tc.prevKV}
			m, n := message(r, &e)
			if len(tc.want) == 0 {
				if m != nil || n != 0 {
					t.Fatalf("message %v (%d events) for no matching event", m, n)
				}
				return
			}
			got := wire(m)
			want := &watchbusv1.SubscribeResponse{Revision: 5, Events: filter(r, events)}
			if n != len(tc.want) || !proto.Equal(got, want) {
				t.Fatalf("message %v (%d events), want %v", got, n, want)
			}
			for i, ev := range got.Events {
				if string(ev.Kv.Key) != tc.want[i] || (ev.PrevKv != nil) != (tc.prevKV && ev.Kv.Key[1] == 'a') {
					t.Fatalf("event %d: %v", i, ev)
				}
			}
			// A second subscriber with the same view gets the same bytes.
			m2, _ := message(&Request{Prefixes: r.Prefixes, PrevKV: tc.prevKV}, &e)
			u1, u2 := m.ProtoReflect().GetUnknown(), m2.ProtoReflect().GetUnknown()
			if len(u1) == 0 || &u1[0] != &u2[0] {
				t.Fatal("same view encoded twice")
			}
		})
	}
	t.Run("large views are not cached", func(t *testing.T) {
		big := ev("/a/big", 3)
		big.Kv.Value = make([]byte, maxEncodedBytes)
		w := NewWindow(WindowConfig{MaxEvents: 10}, 2)
		w.Append(3, []*mvccpb.Event{big})
		e := w.Read(2, 1).Entries[0]
		r := &Request{Prefixes: [][]byte{[]byte("/a/")}}
		m1, _ := message(r, &e)
		m2, _ := message(r, &e)
		u1, u2 := m1.ProtoReflect().GetUnknown(), m2.ProtoReflect().GetUnknown()
		if &u1[0] == &u2[0] || e.enc.all[0].Load() != nil {
			t.Fatal("a view over maxEncodedBytes was cached")
		}
		if got := wire(m1); len(got.Events) != 1 || len(got.Events[0].Kv.Value) != maxEncodedBytes {
			t.Fatalf("large message decoded to %d events", len(got.Events))
		}
	})
	t.Run("old entries are not cached", func(t *testing.T) {
		for r := int64(6); r < 6+encodedEntries; r++ {
			w.Append(r, []*mvccpb.Event{ev("/a/x", r)})
		}
		old := w.Read(4, 1).Entries[0]
		if old.enc != nil {
			t.Fatal("encodings kept beyond the newest encodedEntries")
		}
		m, n := message(&Request{Prefixes: [][]byte{[]byte("/a/")}}, &old)
		if n != 2 || len(m.Events) != 2 || len(m.ProtoReflect().GetUnknown()) != 0 {
			t.Fatalf("uncached message %v (%d)", m, n)
		}
	})
}
