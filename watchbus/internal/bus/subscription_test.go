package bus

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

// fakeSource is a ChainFire whose upstream watch the test feeds.
type fakeSource struct {
	rev      int64
	upstream chan chainfire.WatchResponse
}

func (f *fakeSource) Get(context.Context, string, ...chainfire.OpOption) (*pb.RangeResponse, error) {
	return &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: f.rev}}, nil
}

func (f *fakeSource) Watch(ctx context.Context, _ string, _ ...chainfire.OpOption) <-chan chainfire.WatchResponse {
	out := make(chan chainfire.WatchResponse)
	go func() {
		defer close(out)
		select {
		case out <- chainfire.WatchResponse{Created: true, Header: &pb.ResponseHeader{Revision: f.rev}}:
		case <-ctx.Done():
			return
		}
		for {
			select {
			case r := <-f.upstream:
				select {
				case out <- r:
				case <-ctx.Done():
					return
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

func startBus(t *testing.T, cfg Config) (*Bus, *fakeSource) {
	t.Helper()
	src := &fakeSource{rev: 1, upstream: make(chan chainfire.WatchResponse)}
	cfg.Source = src
	b, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for b.Ready() != nil {
		time.Sleep(5 * time.Millisecond)
	}
	return b, src
}

func put(src *fakeSource, rev int64, keys ...string) {
	var evs []*mvccpb.Event
	for _, k := range keys {
		evs = append(evs, ev(k, rev))
	}
	src.upstream <- chainfire.WatchResponse{Header: &pb.ResponseHeader{Revision: rev}, Events: evs}
}

// collector records what a subscriber receives.
type collector struct {
	mu   sync.Mutex
	msgs []*watchbusv1.SubscribeResponse
}

func (c *collector) send(m *watchbusv1.SubscribeResponse) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m) // decoded (wire) only where a test reads events: it is slow under -race
	return nil
}

func (c *collector) events() (revs []int64, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.msgs {
		if m.Sequence != uint64(i+1) {
			return nil, false
		}
		if !m.Bookmark {
			revs = append(revs, m.Revision)
		}
	}
	return revs, true
}

// TestSlowSubscriberCut: a subscriber that stops reading is cut with a resume revision
// while the others receive every revision, in order, with gapless sequence numbers, and
// the upstream is never held up.
func TestSlowSubscriberCut(t *testing.T) {
	t.Parallel()
	b, src := startBus(t, Config{SubscriberQueue: 8, SlowConsumerTimeout: 200 * time.Millisecond, CutGrace: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := &watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte("/a/")}, StartRevision: 2}

	const fast = 20
	cols := make([]*collector, fast)
	ended := make([]error, fast) // a fast subscriber must not end before cancel
	var wg sync.WaitGroup
	for i := range cols {
		cols[i] = &collector{}
		wg.Go(func() { ended[i] = b.Subscribe(ctx, req, Stream{Send: cols[i].send}) })
	}
	unblock := make(chan struct{})
	slowErr := make(chan error, 1)
	var once sync.Once
	go func() {
		slowErr <- b.Subscribe(ctx, req, Stream{
			Send: func(m *watchbusv1.SubscribeResponse) error {
				if m.Revision < 5 {
					return nil
				}
				<-unblock // stops reading at revision 5
				return errors.New("aborted")
			},
			Abort: func() { once.Do(func() { close(unblock) }) },
		})
	}()
	const last = 300
	start := time.Now()
	for r := int64(2); r <= last; r++ {
		put(src, r, "/a/k", "/b/other")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("upstream held up for %s", d)
	}
	select {
	case err := <-slowErr:
		var se *SlowConsumerError
		if !errors.As(err, &se) || se.Resume != 5 {
			t.Fatalf("slow subscriber ended with %v, want SlowConsumerError resume 5", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("slow subscriber not cut")
	}
	deadline := time.Now().Add(5 * time.Second)
	for i, c := range cols {
		for {
			revs, ok := c.events()
			if !ok {
				t.Fatalf("subscriber %d: sequence gap", i)
			}
			if len(revs) == last-1 {
				for j, r := range revs {
					if r != int64(j+2) {
						t.Fatalf("subscriber %d: revision %d at %d", i, r, j)
					}
				}
				break
			}
			if time.Now().After(deadline) {
				cancel()
				wg.Wait()
				t.Fatalf("subscriber %d got %d revisions, want %d; it ended with %v", i, len(revs), last-1, ended[i])
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	cancel()
	wg.Wait()
}

// TestSubscribeFromNowAndBookmarks: start 0 begins with a bookmark at the head; an idle
// subscriber gets bookmarks; events of other prefixes only advance the bookmark; txn
// events arrive in one message; prev_kv only when asked.
// TestStalledSendCut: a subscriber whose send blocks (its HTTP/2 window is full) is cut
// after SlowConsumerTimeout even though few revisions arrive, so its lag never reaches
// the queue bound; the resume revision is the one whose send blocked.
func TestStalledSendCut(t *testing.T) {
	t.Parallel()
	b, src := startBus(t, Config{SubscriberQueue: 1 << 20, SlowConsumerTimeout: 300 * time.Millisecond, CutGrace: 100 * time.Millisecond})
	unblock := make(chan struct{})
	var once sync.Once
	errc := make(chan error, 1)
	go func() {
		errc <- b.Subscribe(t.Context(), &watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte("/a/")}, StartRevision: 2}, Stream{
			Send: func(m *watchbusv1.SubscribeResponse) error {
				if m.Revision < 3 {
					return nil
				}
				<-unblock
				return errors.New("write deadline exceeded")
			},
			Abort: func() { once.Do(func() { close(unblock) }) },
		})
	}()
	start := time.Now()
	for r := int64(2); r <= 4; r++ {
		put(src, r, "/a/k")
	}
	select {
	case err := <-errc:
		var se *SlowConsumerError
		if !errors.As(err, &se) || se.Resume != 3 || se.Reason != "stalled_send" {
			t.Fatalf("ended with %v, want SlowConsumerError stalled_send resume 3", err)
		}
		if d := time.Since(start); d < 300*time.Millisecond {
			t.Fatalf("cut after %s, before the timeout", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stalled subscriber not cut")
	}
}

func TestSubscribeFromNowAndBookmarks(t *testing.T) {
	t.Parallel()
	b, src := startBus(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := &collector{}
	req := &watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte("/a/")}}
	req.BookmarkInterval = durationpbNew(100 * time.Millisecond)
	go func() { _ = b.Subscribe(ctx, req, Stream{Send: c.send}) }()
	waitFor(t, func() bool { c.mu.Lock(); defer c.mu.Unlock(); return len(c.msgs) >= 1 })
	pe := ev("/a/1", 2)
	pe.PrevKv = &mvccpb.KeyValue{Key: []byte("/a/1"), Value: []byte("old")}
	src.upstream <- chainfire.WatchResponse{Header: &pb.ResponseHeader{Revision: 2}, Events: []*mvccpb.Event{pe, ev("/a/2", 2), ev("/b/x", 2)}}
	put(src, 3, "/b/y")
	waitFor(t, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, m := range c.msgs {
			if m.Bookmark && m.Revision == 3 {
				return true
			}
		}
		return false
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	if m := c.msgs[0]; !m.Bookmark || m.Revision != 1 || m.Sequence != 1 {
		t.Fatalf("first message %v, want bookmark at 1", m)
	}
	m := wire(c.msgs[1])
	if m.Revision != 2 || len(m.Events) != 2 || m.Events[0].PrevKv != nil {
		t.Fatalf("txn message %v, want both /a/ events of revision 2 without prev_kv", m)
	}
}

func waitFor(t *testing.T, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
