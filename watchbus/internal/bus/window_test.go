package bus

import (
	"testing"
	"time"

	"plasmacloud.dev/proto/mvccpb"
)

func ev(key string, rev int64) *mvccpb.Event {
	return &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: []byte("v"), ModRevision: rev}}
}

func TestWindow(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	tests := []struct {
		name      string
		maxEvents int
		maxAge    time.Duration
		appends   []int64 // revisions appended, one event each
		age       time.Duration
		cursor    int64
		wantRevs  []int64
		evicted   bool
		floor     int64
	}{
		{name: "replay from inside", maxEvents: 10, appends: []int64{11, 12, 13}, cursor: 11, wantRevs: []int64{12, 13}, floor: 10},
		{name: "cursor at floor", maxEvents: 10, appends: []int64{11, 12}, cursor: 10, wantRevs: []int64{11, 12}, floor: 10},
		{name: "count eviction", maxEvents: 2, appends: []int64{11, 12, 13, 14}, cursor: 12, wantRevs: []int64{13, 14}, floor: 12},
		{name: "evicted cursor", maxEvents: 2, appends: []int64{11, 12, 13, 14}, cursor: 11, evicted: true, floor: 12},
		{name: "age eviction keeps newest", maxEvents: 10, maxAge: time.Minute, appends: []int64{11, 12}, age: 2 * time.Minute, cursor: 11, wantRevs: []int64{12}, floor: 11},
		{name: "gaps in revisions", maxEvents: 10, appends: []int64{11, 15, 20}, cursor: 14, wantRevs: []int64{15, 20}, floor: 10},
		{name: "future cursor", maxEvents: 10, appends: []int64{11}, cursor: 30, floor: 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			now = time.Unix(1000, 0)
			w := NewWindow(WindowConfig{MaxEvents: tc.maxEvents, MaxAge: tc.maxAge, Now: clock}, 10)
			for _, r := range tc.appends {
				if !w.Append(r, []*mvccpb.Event{ev("/k", r)}) {
					t.Fatalf("append %d refused", r)
				}
			}
			now = now.Add(tc.age)
			w.Expire()
			res := w.Read(tc.cursor, 100)
			if res.Evicted != tc.evicted {
				t.Fatalf("evicted = %v, want %v", res.Evicted, tc.evicted)
			}
			var got []int64
			for _, e := range res.Entries {
				got = append(got, e.Revision)
			}
			if len(got) != len(tc.wantRevs) {
				t.Fatalf("revisions %v, want %v", got, tc.wantRevs)
			}
			for i := range got {
				if got[i] != tc.wantRevs[i] {
					t.Fatalf("revisions %v, want %v", got, tc.wantRevs)
				}
			}
			if f := w.Floor(); f != tc.floor {
				t.Fatalf("floor %d, want %d", f, tc.floor)
			}
			if lag := w.Lag(tc.cursor); !tc.evicted && lag != len(tc.wantRevs) {
				t.Fatalf("lag %d, want %d", lag, len(tc.wantRevs))
			}
		})
	}
}

func TestWindowResetAndNotify(t *testing.T) {
	t.Parallel()
	w := NewWindow(WindowConfig{MaxEvents: 10}, 10)
	res := w.Read(10, 10)
	if w.Append(10, nil) {
		t.Fatal("appended a revision <= head")
	}
	w.Append(11, []*mvccpb.Event{ev("/a", 11)})
	select {
	case <-res.Changed:
	default:
		t.Fatal("Changed not closed by Append")
	}
	w.Advance(15)
	if h := w.Head(); h != 15 {
		t.Fatalf("head %d after Advance", h)
	}
	w.Reset(40, 30)
	r := w.Read(20, 10)
	if !r.Evicted || !r.Compacted || r.CompactRevision != 30 {
		t.Fatalf("read below reset: %+v", r)
	}
	if r := w.Read(40, 10); r.Evicted || len(r.Entries) != 0 || r.Head != 40 {
		t.Fatalf("read at reset: %+v", r)
	}
}

// TestWindowConcurrent runs one writer and many readers under -race: readers see every
// revision once, in order, with no lock held while they "send".
func TestWindowConcurrent(t *testing.T) {
	t.Parallel()
	w := NewWindow(WindowConfig{MaxEvents: 1 << 20}, 0)
	const n = 2000
	done := make(chan []int64, 8)
	for range 8 {
		go func() {
			var got []int64
			cursor := int64(0)
			for cursor < n {
				r := w.Read(cursor, 64)
				for _, e := range r.Entries {
					got = append(got, e.Revision)
					cursor = e.Revision
				}
				if len(r.Entries) == 0 {
					<-r.Changed
				}
			}
			done <- got
		}()
	}
	for i := int64(1); i <= n; i++ {
		w.Append(i, []*mvccpb.Event{ev("/k", i)})
	}
	for range 8 {
		got := <-done
		if len(got) != n {
			t.Fatalf("reader got %d revisions, want %d", len(got), n)
		}
		for i, r := range got {
			if r != int64(i+1) {
				t.Fatalf("revision %d at %d", r, i)
			}
		}
	}
}
