package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/resilience"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

// fastBackoff keeps resubscribing quick in tests.
func fastBackoff() resilience.Policy {
	return resilience.Policy{InitialInterval: time.Millisecond, MaxInterval: 10 * time.Millisecond}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// writeHistory writes n revisions at a steady pace — mostly under /a/,
// some under /b/, deletes and multi-key transactions — then "/a/end".
func writeHistory(store *fakeStore, n int) {
	for i := range n {
		switch {
		case i%5 == 0:
			store.put(fmt.Sprintf("/b/k%d", i%3), fmt.Sprint("v", i))
		case i%7 == 3:
			store.del(fmt.Sprintf("/a/k%d", (i-3)%10))
		case i%11 == 1:
			store.txn(op{key: fmt.Sprintf("/a/k%d", i%10), val: fmt.Sprint("t", i)},
				op{key: "/b/x", val: fmt.Sprint("t", i)}, op{key: "/a/x", val: fmt.Sprint("t", i)})
		default:
			store.put(fmt.Sprintf("/a/k%d", i%10), fmt.Sprint("v", i))
		}
		time.Sleep(time.Millisecond)
	}
	store.put("/a/end", "")
}

// recorder is a Handler that records what it is given and checks the
// ordering contract.
type recorder struct {
	t      *testing.T
	cancel context.CancelFunc // called when "/a/end" arrives

	mu        sync.Mutex
	lines     []string
	bookmarks []int64
	last      int64
}

func (r *recorder) handle(_ context.Context, b resilience.Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b.Revision <= r.last {
		r.t.Errorf("revision %d delivered after %d", b.Revision, r.last)
	}
	r.last = b.Revision
	if b.Bookmark {
		r.bookmarks = append(r.bookmarks, b.Revision)
		return nil
	}
	r.lines = append(r.lines, eventLines(b.Revision, b.Events)...)
	for _, ev := range b.Events {
		if string(ev.GetKv().GetKey()) == "/a/end" && r.cancel != nil {
			r.cancel()
		}
	}
	return nil
}

func (r *recorder) snapshot() (lines []string, bookmarks []int64, last int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.lines), slices.Clone(r.bookmarks), r.last
}

func TestSubscribeResumesExactlyOnce(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		setup func(a, b *fakeBus)
		check func(t *testing.T, a, b *fakeBus, st *resilience.SubscriberStats)
	}{{
		name: "replica killed mid-stream resumes on the other",
		setup: func(a, b *fakeBus) {
			a.setHook(func(call, sent int, _ *watchbusv1.SubscribeResponse) action {
				if sent == 15 {
					return actKill
				}
				return actSend
			})
		},
		check: func(t *testing.T, a, b *fakeBus, st *resilience.SubscriberStats) {
			if n := len(a.requests()); n != 1 {
				t.Errorf("killed replica got %d subscriptions, want 1", n)
			}
			reqs := b.requests()
			if len(reqs) == 0 || reqs[0].GetStartRevision() <= 1 {
				t.Fatalf("second replica's subscriptions %v: want a resume from a revision > 1", reqs)
			}
		},
	}, {
		name: "duplicates replayed after a reconnect are dropped",
		setup: func(a, b *fakeBus) {
			a.setHook(func(call, sent int, _ *watchbusv1.SubscribeResponse) action {
				if sent == 15 {
					return actUnavailable
				}
				return actSend
			})
			b.replayBack = 6
		},
		check: func(t *testing.T, a, b *fakeBus, st *resilience.SubscriberStats) {
			if st.Duplicates.Load() == 0 {
				t.Error("no duplicate dropped")
			}
			if len(b.requests()) == 0 {
				t.Error("Unavailable did not move the subscription to the other replica")
			}
		},
	}, {
		name: "slow-consumer cut resumes on the same replica",
		setup: func(a, b *fakeBus) {
			a.setHook(func(call, sent int, _ *watchbusv1.SubscribeResponse) action {
				if call == 1 && sent == 10 {
					return actCut
				}
				return actSend
			})
		},
		check: func(t *testing.T, a, b *fakeBus, st *resilience.SubscriberStats) {
			if got := st.SlowConsumerCuts.Load(); got != 1 {
				t.Errorf("SlowConsumerCuts = %d, want 1", got)
			}
			if got := len(a.requests()); got != 2 {
				t.Errorf("replica a got %d subscriptions, want 2", got)
			}
			if reqs := a.requests(); len(reqs) == 2 && reqs[1].GetStartRevision() <= 1 {
				t.Errorf("resumed from %d", reqs[1].GetStartRevision())
			}
		},
	}, {
		name: "sequence gap resubscribes",
		setup: func(a, b *fakeBus) {
			a.setHook(func(call, sent int, _ *watchbusv1.SubscribeResponse) action {
				if call == 1 && sent == 10 {
					return actGap
				}
				return actSend
			})
		},
		check: func(t *testing.T, a, b *fakeBus, st *resilience.SubscriberStats) {
			if got := st.SequenceGaps.Load(); got != 1 {
				t.Errorf("SequenceGaps = %d, want 1", got)
			}
			if got := st.Resumes.Load(); got != 1 {
				t.Errorf("Resumes = %d, want 1", got)
			}
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := newFakeStore()
			a, b := newFakeBus(t, store), newFakeBus(t, store)
			tt.setup(a, b)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			rec := &recorder{t: t, cancel: cancel}
			stats := new(resilience.SubscriberStats)
			go writeHistory(store, 60)
			err := resilience.Subscribe(ctx, resilience.SubscriberConfig{
				Endpoints:     []string{a.URL, b.URL},
				Prefixes:      [][]byte{[]byte("/a/")},
				StartRevision: 1,
				Backoff:       fastBackoff(),
				Logger:        testLogger(t),
				Stats:         stats,
			}, rec.handle)
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Subscribe = %v, want context.Canceled after /a/end", err)
			}
			got, _, _ := rec.snapshot()
			if want := store.historyLines("/a/", 1); !slices.Equal(got, want) {
				t.Fatalf("delivered != history\n got: %q\nwant: %q", got, want)
			}
			tt.check(t, a, b, stats)
		})
	}
}

func TestSubscribeCompactedSurfacesRelist(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	for i := range 20 {
		store.put(fmt.Sprint("/a/k", i), "v")
	}
	store.compactTo(12)
	a, b := newFakeBus(t, store), newFakeBus(t, store)
	rec := &recorder{t: t}
	err := resilience.Subscribe(t.Context(), resilience.SubscriberConfig{
		Endpoints: []string{a.URL, b.URL}, Prefixes: [][]byte{[]byte("/a/")}, StartRevision: 5,
		Backoff: fastBackoff(), Logger: testLogger(t),
	}, rec.handle)
	var cerr *resilience.CompactedError
	if !errors.Is(err, resilience.ErrCompacted) || !errors.As(err, &cerr) {
		t.Fatalf("Subscribe = %v, want a CompactedError", err)
	}
	want := resilience.CompactedError{ResumeRevision: 5, CompactRevision: 12, CurrentRevision: store.current()}
	if cerr.ResumeRevision != want.ResumeRevision || cerr.CompactRevision != want.CompactRevision ||
		cerr.CurrentRevision != want.CurrentRevision {
		t.Errorf("CompactedError = %+v, want %+v", *cerr, want)
	}
	if connect.CodeOf(err) != connect.CodeOutOfRange {
		t.Errorf("code = %v, want the server's OutOfRange in the chain", connect.CodeOf(err))
	}
	if lines, bms, _ := rec.snapshot(); len(lines)+len(bms) != 0 {
		t.Errorf("delivered %q %v before the relist error", lines, bms)
	}
}

func TestSubscribeBookmarksAdvanceResumePoint(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	store.put("/a/first", "x") // revision 2
	for i := range 10 {
		store.put(fmt.Sprint("/b/k", i), "v") // not under /a/
	}
	cur := store.current()
	a, b := newFakeBus(t, store), newFakeBus(t, store)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	killed := make(chan struct{})
	done := make(chan error, 1)
	var once sync.Once
	go func() {
		done <- resilience.Subscribe(ctx, resilience.SubscriberConfig{
			Endpoints: []string{a.URL, b.URL}, Prefixes: [][]byte{[]byte("/a/")}, StartRevision: 1,
			Backoff: fastBackoff(), Logger: testLogger(t),
		}, func(_ context.Context, bt resilience.Batch) error {
			if bt.Bookmark && bt.Revision == cur {
				once.Do(func() { a.kill(); close(killed) })
			}
			return nil
		})
	}()
	select {
	case <-killed:
	case err := <-done:
		t.Fatalf("Subscribe ended early: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for len(b.requests()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	reqs := b.requests()
	if len(reqs) == 0 {
		t.Fatal("no resubscription on the second replica")
	}
	if got := reqs[0].GetStartRevision(); got != cur+1 {
		t.Errorf("resumed from %d, want %d (bookmark %d + 1)", got, cur+1, cur)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe = %v", err)
	}
}

func TestSubscribeFromNowStartsWithBookmark(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	store.put("/a/old", "x")
	a := newFakeBus(t, store)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var got []resilience.Batch
	err := resilience.Subscribe(ctx, resilience.SubscriberConfig{
		Endpoints: []string{a.URL}, Prefixes: [][]byte{[]byte("/a/")}, Backoff: fastBackoff(),
	}, func(_ context.Context, b resilience.Batch) error {
		got = append(got, b)
		if len(got) == 1 {
			store.put("/a/new", "y")
		}
		if !b.Bookmark {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe = %v", err)
	}
	if len(got) < 2 || !got[0].Bookmark || got[0].Revision != 2 || got[len(got)-1].Revision != 3 ||
		string(got[len(got)-1].Events[0].GetKv().GetKey()) != "/a/new" {
		t.Errorf("deliveries %+v: want a bookmark at 2, then /a/new at 3", got)
	}
}

func TestSubscribeEnds(t *testing.T) {
	t.Parallel()
	errStop := errors.New("stop")
	tests := []struct {
		name    string
		cfg     func(url string) resilience.SubscriberConfig
		handler resilience.Handler
		want    func(error) bool
	}{{
		name: "handler error returned unchanged",
		cfg: func(url string) resilience.SubscriberConfig {
			return resilience.SubscriberConfig{Endpoints: []string{url}, Prefixes: [][]byte{[]byte("/a/")}, StartRevision: 1}
		},
		handler: func(context.Context, resilience.Batch) error { return errStop },
		want:    func(err error) bool { return err == errStop },
	}, {
		name: "no prefixes",
		cfg: func(url string) resilience.SubscriberConfig {
			return resilience.SubscriberConfig{Endpoints: []string{url}}
		},
		want: func(err error) bool { return errors.Is(err, resilience.ErrBadSubscription) },
	}, {
		name: "empty prefix",
		cfg: func(url string) resilience.SubscriberConfig {
			return resilience.SubscriberConfig{Endpoints: []string{url}, Prefixes: [][]byte{nil}}
		},
		want: func(err error) bool { return errors.Is(err, resilience.ErrBadSubscription) },
	}, {
		name: "bad endpoint",
		cfg: func(string) resilience.SubscriberConfig {
			return resilience.SubscriberConfig{Endpoints: []string{"ftp://x"}, Prefixes: [][]byte{[]byte("/a/")}}
		},
		want: func(err error) bool { return errors.Is(err, resilience.ErrBadEndpoint) },
	}, {
		name: "every replica down past MaxAttempts",
		cfg: func(url string) resilience.SubscriberConfig {
			p := fastBackoff()
			p.MaxAttempts = 3
			return resilience.SubscriberConfig{Endpoints: []string{"http://127.0.0.1:1", url}, Prefixes: [][]byte{[]byte("/a/")}, Backoff: p}
		},
		want: func(err error) bool {
			return errors.Is(err, resilience.ErrGaveUp) && connect.CodeOf(err) == connect.CodeUnavailable
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := newFakeStore()
			store.put("/a/k", "v")
			bus := newFakeBus(t, store)
			bus.setDown(tt.name == "every replica down past MaxAttempts")
			h := tt.handler
			if h == nil {
				h = func(context.Context, resilience.Batch) error { return nil }
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			if err := resilience.Subscribe(ctx, tt.cfg(bus.URL), h); !tt.want(err) {
				t.Errorf("Subscribe = %v", err)
			}
		})
	}
}
