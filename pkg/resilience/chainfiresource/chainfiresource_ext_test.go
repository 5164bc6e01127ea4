package chainfiresource_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/pkg/resilience/chainfiresource"
	"plasmacloud.dev/proto/mvccpb"
)

// pausingWatcher wraps a Watcher so a test can cut its first watch — as a
// long disconnection would — and later let it resume from the revision
// after the last one delivered, exactly as a reconnecting watch does.
type pausingWatcher struct {
	inner  resilience.Watcher
	pause  chan struct{} // closed by the test: cut the watch
	paused chan struct{} // closed by the watcher once cut
	resume chan struct{} // closed by the test: resume
	once   sync.Once
}

func (p *pausingWatcher) Watch(ctx context.Context, prefix []byte, start int64, h resilience.Handler) error {
	first := false
	p.once.Do(func() { first = true })
	if !first {
		return p.inner.Watch(ctx, prefix, start, h)
	}
	next := start
	track := func(ctx context.Context, b resilience.Batch) error {
		if err := h(ctx, b); err != nil {
			return err
		}
		next = b.Revision + 1
		return nil
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.pause:
			cancel()
		case <-wctx.Done():
		}
	}()
	err := p.inner.Watch(wctx, prefix, start, track)
	if ctx.Err() != nil || !errors.Is(err, context.Canceled) {
		return err
	}
	close(p.paused)
	select {
	case <-p.resume:
	case <-ctx.Done():
		return ctx.Err()
	}
	return p.inner.Watch(ctx, prefix, next, track)
}

// TestInformerOverChainFire runs an informer on a real ChainFire member
// through the adapters: list (paged), watch, then a disconnection during
// which the prefix changes and the history is compacted, so resuming fails
// with a compaction and the informer relists.
func TestInformerOverChainFire(t *testing.T) {
	t.Parallel()
	cluster := chainfiretest.Start(t, 1, chainfiretest.Options{})
	c, err := chainfire.New(chainfire.Config{Endpoints: cluster.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	put := func(k, v string) int64 {
		t.Helper()
		r, err := c.Put(ctx, k, v)
		if err != nil {
			t.Fatal(err)
		}
		return r.GetHeader().GetRevision()
	}
	del := func(k string) {
		t.Helper()
		if _, err := c.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 5; i++ {
		put(fmt.Sprintf("/a/k%d", i), fmt.Sprint("v", i))
	}
	put("/b/x", "other")

	var mu sync.Mutex
	var calls []string
	record := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, fmt.Sprintf(format, args...))
	}
	take := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			if len(calls) >= n || time.Now().After(deadline) {
				out := calls
				calls = nil
				mu.Unlock()
				return out
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}
	pw := &pausingWatcher{
		inner: chainfiresource.Watcher{Client: c},
		pause: make(chan struct{}), paused: make(chan struct{}), resume: make(chan struct{}),
	}
	log := slog.New(slog.NewTextHandler(t.Output(), nil))
	inf, err := resilience.NewInformer(resilience.InformerConfig[string]{
		Lister:  chainfiresource.Lister{Client: c, PageSize: 2},
		Watcher: pw,
		Prefix:  []byte("/a/"),
		Decode:  func(kv *mvccpb.KeyValue) (string, error) { return string(kv.GetValue()), nil },
		Handlers: resilience.InformerHandlers[string]{
			OnAdd:    func(k, v string) { record("add %s=%s", k, v) },
			OnUpdate: func(k, o, n string) { record("update %s=%s->%s", k, o, n) },
			OnDelete: func(k, v string) { record("delete %s=%s", k, v) },
		},
		Backoff: resilience.Policy{InitialInterval: time.Millisecond, MaxInterval: 10 * time.Millisecond},
		Logger:  log,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- inf.Run(ctx) }()
	if err := inf.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	check := func(what string, got, want []string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Errorf("%s\n got %q\nwant %q", what, got, want)
		}
	}
	check("initial list", take(5), []string{"add /a/k1=v1", "add /a/k2=v2", "add /a/k3=v3", "add /a/k4=v4", "add /a/k5=v5"})
	put("/a/k5", "v5b")
	check("watched update", take(1), []string{"update /a/k5=v5->v5b"})

	close(pw.pause)
	<-pw.paused
	put("/a/k1", "v1b")
	del("/a/k2")
	put("/a/k6", "v6")
	put("/a/k7", "v7")
	del("/a/k7")
	rev := put("/b/y", "other")
	if _, err := c.Compact(ctx, rev, chainfire.WithPhysical()); err != nil {
		t.Fatal(err)
	}
	close(pw.resume)
	check("relist diff", take(3), []string{"update /a/k1=v1->v1b", "delete /a/k2=v2", "add /a/k6=v6"})
	if got := inf.Relists(); got != 1 {
		t.Errorf("Relists = %d, want 1", got)
	}
	resp, err := c.Get(ctx, "/a/", chainfire.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var source []string
	for _, kv := range resp.GetKvs() {
		source = append(source, string(kv.GetKey())+"="+string(kv.GetValue()))
	}
	var cache []string
	for i, k := range inf.Keys() {
		cache = append(cache, k+"="+inf.List()[i])
	}
	check("cache vs ChainFire range", cache, source)
	if inf.Revision() < rev {
		t.Errorf("Revision = %d, want >= %d", inf.Revision(), rev)
	}

	put("/a/k8", "v8")
	check("watch after relist", take(1), []string{"add /a/k8=v8"})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run = %v", err)
	}
}
