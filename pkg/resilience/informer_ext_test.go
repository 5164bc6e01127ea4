package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/proto/mvccpb"
)

// handlerLog records an informer's handler calls as lines.
type handlerLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *handlerLog) add(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *handlerLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

// take returns and forgets the lines recorded so far.
func (l *handlerLog) take() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.lines
	l.lines = nil
	return out
}

func (l *handlerLog) handlers() resilience.InformerHandlers[string] {
	return resilience.InformerHandlers[string]{
		OnAdd:    func(k, v string) { l.add("add %s=%s", k, v) },
		OnUpdate: func(k, o, n string) { l.add("update %s=%s->%s", k, o, n) },
		OnDelete: func(k, v string) { l.add("delete %s=%s", k, v) },
	}
}

var errBadValue = errors.New("bad value")

func decodeString(kv *mvccpb.KeyValue) (string, error) {
	if string(kv.GetValue()) == "bad" {
		return "", errBadValue
	}
	return string(kv.GetValue()), nil
}

// cacheLines renders the informer's cache and the store's range alike.
func cacheLines(inf *resilience.Informer[string]) []string {
	var out []string
	keys, vals := inf.Keys(), inf.List()
	for i := range keys {
		out = append(out, keys[i]+"="+vals[i])
	}
	return out
}

func storeLines(t *testing.T, s *fakeStore, prefix string) []string {
	kvs, _, _ := s.List(t.Context(), []byte(prefix))
	var out []string
	for _, kv := range kvs {
		if v := string(kv.Value); v != "bad" {
			out = append(out, string(kv.Key)+"="+v)
		}
	}
	return out
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// startInformer runs inf until the test ends and checks how Run ended.
func startInformer(t *testing.T, inf *resilience.Informer[string]) {
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- inf.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run = %v, want context.Canceled", err)
		}
	})
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	defer scancel()
	if err := inf.WaitForSync(sctx); err != nil {
		t.Fatalf("WaitForSync: %v", err)
	}
}

func TestInformerListAndWatch(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	store.put("/a/k1", "v1")
	store.put("/a/k2", "v2")
	store.put("/a/k3", "v3")
	store.put("/b/x", "other")
	a, b := newFakeBus(t, store), newFakeBus(t, store)
	var log handlerLog
	inf, err := resilience.NewInformer(resilience.InformerConfig[string]{
		Lister: store,
		Watcher: resilience.WatchBusWatcher(resilience.SubscriberConfig{
			Endpoints: []string{a.URL, b.URL}, Backoff: fastBackoff(), Logger: testLogger(t),
		}),
		Prefix:   []byte("/a/"),
		Decode:   decodeString,
		Handlers: log.handlers(),
		Logger:   testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	if inf.HasSynced() {
		t.Fatal("synced before Run")
	}
	startInformer(t, inf)
	if got, want := log.take(), []string{"add /a/k1=v1", "add /a/k2=v2", "add /a/k3=v3"}; !slices.Equal(got, want) {
		t.Errorf("after the list: %q, want %q", got, want)
	}

	// Concurrent readers while the informer applies changes.
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = inf.Get("/a/k1")
				_ = inf.List()
				_ = inf.Revision()
			}
		})
	}

	store.put("/a/k1", "v1b")
	store.del("/a/k2")
	store.put("/a/k4", "v4")
	store.txn(op{key: "/a/k5", val: "v5"}, op{key: "/a/k3", del: true}, op{key: "/b/y", val: "other"})
	store.put("/a/k4", "bad") // undecodable: treated as absent
	store.put("/b/z", "other")
	cur := store.current()
	waitFor(t, "the informer to reach the store's revision", func() bool { return inf.Revision() == cur && log.len() == 6 })
	close(stop)
	readers.Wait()

	want := []string{"update /a/k1=v1->v1b", "delete /a/k2=v2", "add /a/k4=v4", "add /a/k5=v5", "delete /a/k3=v3", "delete /a/k4=v4"}
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("handler calls\n got %q\nwant %q", got, want)
	}
	if got, want := cacheLines(inf), storeLines(t, store, "/a/"); !slices.Equal(got, want) {
		t.Errorf("cache %q, store %q", got, want)
	}
	if v, ok := inf.Get("/a/k1"); !ok || v != "v1b" {
		t.Errorf("Get(/a/k1) = %q, %v", v, ok)
	}
	if _, ok := inf.Get("/b/x"); ok || inf.Len() != 2 {
		t.Errorf("cache holds %q: want only /a/ keys", inf.Keys())
	}
}

func TestInformerRelistAfterCompaction(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	for i := 1; i <= 5; i++ {
		store.put(fmt.Sprintf("/a/k%d", i), fmt.Sprint("v", i))
	}
	a, b := newFakeBus(t, store), newFakeBus(t, store)
	var log handlerLog
	inf, err := resilience.NewInformer(resilience.InformerConfig[string]{
		Lister: store,
		Watcher: resilience.WatchBusWatcher(resilience.SubscriberConfig{
			Endpoints: []string{a.URL, b.URL}, Backoff: fastBackoff(), Logger: testLogger(t),
		}),
		Prefix:   []byte("/a/"),
		Decode:   decodeString,
		Handlers: log.handlers(),
		Backoff:  fastBackoff(),
		Logger:   testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	startInformer(t, inf)
	log.take()
	store.put("/a/k5", "v5b")
	waitFor(t, "the first event", func() bool { return log.len() == 1 })
	if got := log.take(); !slices.Equal(got, []string{"update /a/k5=v5->v5b"}) {
		t.Fatalf("handler calls %q", got)
	}

	// Every replica goes away; meanwhile the prefix changes and the
	// history is compacted past the informer's resume point.
	a.setDown(true)
	b.setDown(true)
	time.Sleep(50 * time.Millisecond) // streams notice at their next bookmark
	store.put("/a/k1", "v1b")
	store.del("/a/k2")
	store.put("/a/k6", "v6")
	store.put("/a/k7", "v7")
	store.del("/a/k7") // came and went while disconnected: never seen
	store.put("/a/k4", "bad")
	store.compactTo(store.current())
	a.setDown(false)
	b.setDown(false)

	want := []string{"update /a/k1=v1->v1b", "delete /a/k2=v2", "delete /a/k4=v4", "add /a/k6=v6"}
	waitFor(t, "a relist", func() bool { return inf.Relists() == 1 && log.len() >= len(want) })
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("handler calls after relist\n got %q\nwant %q", got, want)
	}
	if got, want := cacheLines(inf), storeLines(t, store, "/a/"); !slices.Equal(got, want) {
		t.Errorf("cache %q, store %q", got, want)
	}

	// And it keeps watching after the relist.
	store.put("/a/k8", "v8")
	waitFor(t, "an event after the relist", func() bool { return log.len() >= 1 })
	if got := log.take(); !slices.Equal(got, []string{"add /a/k8=v8"}) {
		t.Errorf("handler calls %q", got)
	}
}

func TestInformerResync(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	store.put("/a/k1", "v1")
	var log handlerLog
	// A watcher that never reports anything: only resync can notice changes.
	silent := resilience.WatcherFunc(func(ctx context.Context, _ []byte, _ int64, _ resilience.Handler) error {
		<-ctx.Done()
		return ctx.Err()
	})
	inf, err := resilience.NewInformer(resilience.InformerConfig[string]{
		Lister: store, Watcher: silent, Prefix: []byte("/a/"), Decode: decodeString,
		Handlers: log.handlers(), ResyncPeriod: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	startInformer(t, inf)
	store.put("/a/k1", "v1b")
	store.put("/a/k2", "v2")
	want := []string{"add /a/k1=v1", "update /a/k1=v1->v1b", "add /a/k2=v2"}
	waitFor(t, "a resync", func() bool { return log.len() >= len(want) })
	if got := log.take(); !slices.Equal(got, want) {
		t.Errorf("handler calls %q, want %q", got, want)
	}
}

func TestNewInformerValidates(t *testing.T) {
	t.Parallel()
	store := newFakeStore()
	w := resilience.WatchBusWatcher(resilience.SubscriberConfig{Endpoints: []string{"http://127.0.0.1:1"}})
	tests := []struct {
		name string
		cfg  resilience.InformerConfig[string]
	}{
		{"no lister", resilience.InformerConfig[string]{Watcher: w, Prefix: []byte("/a/"), Decode: decodeString}},
		{"no watcher", resilience.InformerConfig[string]{Lister: store, Prefix: []byte("/a/"), Decode: decodeString}},
		{"no prefix", resilience.InformerConfig[string]{Lister: store, Watcher: w, Decode: decodeString}},
		{"no decode", resilience.InformerConfig[string]{Lister: store, Watcher: w, Prefix: []byte("/a/")}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := resilience.NewInformer(tt.cfg); !errors.Is(err, resilience.ErrBadSubscription) {
				t.Errorf("NewInformer = %v, want ErrBadSubscription", err)
			}
		})
	}
	// T = *mvccpb.KeyValue needs no Decode.
	if _, err := resilience.NewInformer(resilience.InformerConfig[*mvccpb.KeyValue]{
		Lister: store, Watcher: w, Prefix: []byte("/a/"),
	}); err != nil {
		t.Errorf("NewInformer[*mvccpb.KeyValue] without Decode: %v", err)
	}
}
