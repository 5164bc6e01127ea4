// Informer: list + watch into a local cache.
//
// An [Informer] keeps an in-memory copy of everything under one key prefix
// and tells handlers what changed, the way Kubernetes informers do:
//
//  1. List: read the prefix with a [Lister] (a ChainFire range read) at
//     some revision R, replace the cache with it and call the handlers for
//     the differences with the previous cache (all adds the first time).
//  2. Watch: follow the changes from R+1 with a [Watcher] — WatchBus
//     through [WatchBusWatcher] (a [Subscribe] under the hood), or ChainFire
//     directly through the adapters in package
//     plasmacloud.dev/pkg/resilience/chainfiresource — applying each
//     revision to the cache and calling the handlers.
//  3. Relist: when the watch reports [ErrCompacted] (events were lost to
//     compaction), go back to 1. The diff makes the handlers see exactly the
//     adds, updates and deletes that turn the old cache into the source's
//     current range: nothing is reset silently and nothing is reported
//     twice. A positive ResyncPeriod relists the same way periodically.
//
// Handlers run one at a time on the goroutine of [Informer.Run], in revision
// order. When a handler runs, the cache already holds the whole revision
// (or the whole relist) that caused the call, so a handler may read the
// informer; it must not block for long, since the watch waits for it.

package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"plasmacloud.dev/proto/mvccpb"
)

// ErrInformerRunning is returned by a second concurrent [Informer.Run].
var ErrInformerRunning = errors.New("resilience: informer already running")

// errResync ends a watch when ResyncPeriod comes around.
var errResync = errors.New("resilience: informer resync")

// Lister reads the state the informer caches: every key-value under prefix
// at one revision, and that revision. *chainfire.Client is adapted by
// chainfiresource.Lister. Implementations must be safe for concurrent use.
type Lister interface {
	List(ctx context.Context, prefix []byte) (kvs []*mvccpb.KeyValue, revision int64, err error)
}

// ListerFunc adapts a function to [Lister].
type ListerFunc func(ctx context.Context, prefix []byte) ([]*mvccpb.KeyValue, int64, error)

// List calls f.
func (f ListerFunc) List(ctx context.Context, prefix []byte) ([]*mvccpb.KeyValue, int64, error) {
	return f(ctx, prefix)
}

// Watcher follows the changes under prefix from startRevision on, calling h
// as [Subscribe] does (sequentially, one revision per Batch, in order, each
// revision once, bookmarks allowed), until ctx ends (returning ctx.Err()),
// h fails (returning its error), the history is compacted (an error
// wrapping [ErrCompacted], preferably a [*CompactedError]) or a failure it
// cannot survive.
type Watcher interface {
	Watch(ctx context.Context, prefix []byte, startRevision int64, h Handler) error
}

// WatcherFunc adapts a function to [Watcher].
type WatcherFunc func(ctx context.Context, prefix []byte, startRevision int64, h Handler) error

// Watch calls f.
func (f WatcherFunc) Watch(ctx context.Context, prefix []byte, startRevision int64, h Handler) error {
	return f(ctx, prefix, startRevision, h)
}

// WatchBusWatcher returns a [Watcher] that follows changes through WatchBus:
// each Watch is a [Subscribe] with cfg, its Prefixes and StartRevision
// replaced by the Watch's arguments.
func WatchBusWatcher(cfg SubscriberConfig) Watcher {
	return WatcherFunc(func(ctx context.Context, prefix []byte, startRevision int64, h Handler) error {
		c := cfg
		c.Prefixes = [][]byte{prefix}
		c.StartRevision = startRevision
		return Subscribe(ctx, c, h)
	})
}

// InformerHandlers are the callbacks of an [Informer]; nil ones are skipped.
// key is the ChainFire key. They are called sequentially, never
// concurrently, on the goroutine of [Informer.Run].
type InformerHandlers[T any] struct {
	// OnAdd: key appeared (or is seen for the first time, by the first
	// list).
	OnAdd func(key string, obj T)
	// OnUpdate: key's value changed from old to new.
	OnUpdate func(key string, old, new T)
	// OnDelete: key is gone; last is the value the cache held.
	OnDelete func(key string, last T)
}

// InformerConfig configures [NewInformer]. Lister, Watcher and Prefix are
// required; Decode is required unless T is *mvccpb.KeyValue.
type InformerConfig[T any] struct {
	// Lister reads the prefix (initially and on every relist).
	Lister Lister
	// Watcher follows the changes after a list.
	Watcher Watcher
	// Prefix is the key prefix cached (non-empty).
	Prefix []byte
	// Decode turns a key-value into the cached object. A key whose value
	// fails to decode is logged and treated as absent (deleted from the
	// cache if it was there). nil is allowed only when T is
	// *mvccpb.KeyValue: the key-value itself is cached.
	Decode func(kv *mvccpb.KeyValue) (T, error)
	// Handlers are called for every change of the cache.
	Handlers InformerHandlers[T]
	// ResyncPeriod, when positive, relists this often while watching and
	// reconciles the cache with the list (only differences reach the
	// handlers): a safety net against bugs anywhere upstream, at the cost
	// of one range read of the prefix per period.
	ResyncPeriod time.Duration
	// Backoff paces retrying a failed list, and restarting after a watch
	// that failed with a retryable error. Zero: resilience's defaults.
	Backoff Policy
	// Logger receives relists and decode failures; nil discards them.
	Logger *slog.Logger
}

// Informer is a local cache of one key prefix kept current by list + watch;
// see the overview at the top of informer.go. Its read methods (Get, List,
// Keys, Len, Revision, HasSynced, Relists) are safe for concurrent use with
// each other and with Run; every read sees the cache at one revision.
type Informer[T any] struct {
	cfg InformerConfig[T]
	log *slog.Logger

	running atomic.Bool
	synced  chan struct{} // closed once the first list reached the handlers
	once    sync.Once
	relists atomic.Int64

	mu    sync.RWMutex
	items map[string]cached[T]
	rev   int64
}

// cached is one cache entry.
type cached[T any] struct {
	obj    T
	modRev int64
}

// change is one handler call to make.
type change[T any] struct {
	key      string
	old, new T
	had, has bool
}

// NewInformer validates cfg and returns an informer with an empty cache.
// Nothing happens until [Informer.Run].
func NewInformer[T any](cfg InformerConfig[T]) (*Informer[T], error) {
	if cfg.Lister == nil || cfg.Watcher == nil {
		return nil, fmt.Errorf("%w: informer needs a Lister and a Watcher", ErrBadSubscription)
	}
	if len(cfg.Prefix) == 0 {
		return nil, fmt.Errorf("%w: informer needs a prefix", ErrBadSubscription)
	}
	if cfg.Decode == nil {
		var zero T
		if _, ok := any(zero).(*mvccpb.KeyValue); !ok {
			return nil, fmt.Errorf("%w: informer needs Decode unless T is *mvccpb.KeyValue", ErrBadSubscription)
		}
		cfg.Decode = func(kv *mvccpb.KeyValue) (T, error) { return any(kv).(T), nil }
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Informer[T]{
		cfg:    cfg,
		log:    log.With("informer_prefix", string(cfg.Prefix)),
		synced: make(chan struct{}),
		items:  make(map[string]cached[T]),
	}, nil
}

// Run lists, watches and relists until ctx ends (returning ctx.Err()), or a
// list or watch fails with an error that retrying cannot fix (returned).
// Retryable failures ([IsRetryable]) are retried with cfg.Backoff;
// compaction relists. Handlers run on Run's goroutine. Run may be called
// again after it returned; the cache carries over and the next list is
// diffed against it.
func (inf *Informer[T]) Run(ctx context.Context) error {
	if !inf.running.CompareAndSwap(false, true) {
		return ErrInformerRunning
	}
	defer inf.running.Store(false)
	p := inf.cfg.Backoff.withDefaults()
	bo := p.NewBackOff() // between watches that failed in a row
	for {
		var kvs []*mvccpb.KeyValue
		var rev int64
		err := Retry(ctx, p, func(ctx context.Context) error {
			var err error
			kvs, rev, err = inf.cfg.Lister.List(ctx, inf.cfg.Prefix)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("resilience: informer list %q: %w", inf.cfg.Prefix, err)
		}
		inf.replace(kvs, rev)
		inf.once.Do(func() { close(inf.synced) })

		wctx, cancel := ctx, context.CancelFunc(func() {})
		if inf.cfg.ResyncPeriod > 0 {
			wctx, cancel = context.WithTimeoutCause(ctx, inf.cfg.ResyncPeriod, errResync)
		}
		err = inf.cfg.Watcher.Watch(wctx, inf.cfg.Prefix, inf.Revision()+1, inf.apply)
		resync := errors.Is(context.Cause(wctx), errResync)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case resync:
			bo.Reset()
			inf.log.Debug("resilience: informer resync", "revision", inf.Revision())
		case errors.Is(err, ErrCompacted):
			bo.Reset()
			inf.relists.Add(1)
			inf.log.Info("resilience: informer relisting after compaction", "revision", inf.Revision(), "error", err)
		case err != nil && p.IsRetry(err):
			inf.log.Warn("resilience: informer watch failed, relisting", "revision", inf.Revision(), "error", err)
			if err := sleepCtx(ctx, bo.NextBackOff()); err != nil {
				return err
			}
			continue
		default:
			return fmt.Errorf("resilience: informer watch %q: %w", inf.cfg.Prefix, err)
		}
	}
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// decode runs cfg.Decode, logging a failure.
func (inf *Informer[T]) decode(kv *mvccpb.KeyValue) (T, bool) {
	obj, err := inf.cfg.Decode(kv)
	if err != nil {
		inf.log.Warn("resilience: informer cannot decode value, treating key as absent",
			"key", string(kv.GetKey()), "mod_revision", kv.GetModRevision(), "error", err)
		return obj, false
	}
	return obj, true
}

// replace installs a full list as the cache and calls the handlers for the
// differences with the previous cache, in key order.
func (inf *Informer[T]) replace(kvs []*mvccpb.KeyValue, rev int64) {
	items := make(map[string]cached[T], len(kvs))
	for _, kv := range kvs {
		if obj, ok := inf.decode(kv); ok {
			items[string(kv.GetKey())] = cached[T]{obj: obj, modRev: kv.GetModRevision()}
		}
	}
	inf.mu.Lock()
	old := inf.items
	inf.items, inf.rev = items, rev
	inf.mu.Unlock()

	keys := make([]string, 0, len(items)+len(old))
	for k := range items {
		keys = append(keys, k)
	}
	for k := range old {
		if _, ok := items[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	changes := make([]change[T], 0, len(keys))
	for _, k := range keys {
		o, had := old[k]
		n, has := items[k]
		if had && has && o.modRev == n.modRev {
			continue
		}
		changes = append(changes, change[T]{key: k, old: o.obj, new: n.obj, had: had, has: has})
	}
	inf.notify(changes)
}

// apply is the watch handler: it applies one revision to the cache, then
// calls the handlers.
func (inf *Informer[T]) apply(_ context.Context, b Batch) error {
	inf.mu.Lock()
	if b.Revision <= inf.rev {
		inf.mu.Unlock()
		return nil // already in the cache (a watcher should not do this)
	}
	changes := make([]change[T], 0, len(b.Events))
	for _, ev := range b.Events {
		kv := ev.GetKv()
		key := string(kv.GetKey())
		o, had := inf.items[key]
		c := change[T]{key: key, old: o.obj, had: had}
		if ev.GetType() == mvccpb.Event_PUT {
			if obj, ok := inf.decode(kv); ok {
				c.new, c.has = obj, true
				inf.items[key] = cached[T]{obj: obj, modRev: kv.GetModRevision()}
			}
		}
		if !c.has {
			delete(inf.items, key)
		}
		if c.had || c.has {
			changes = append(changes, c)
		}
	}
	inf.rev = b.Revision
	inf.mu.Unlock()
	inf.notify(changes)
	return nil
}

// notify calls the handlers for changes, in order.
func (inf *Informer[T]) notify(changes []change[T]) {
	h := inf.cfg.Handlers
	for _, c := range changes {
		switch {
		case c.has && !c.had:
			if h.OnAdd != nil {
				h.OnAdd(c.key, c.new)
			}
		case c.has:
			if h.OnUpdate != nil {
				h.OnUpdate(c.key, c.old, c.new)
			}
		default:
			if h.OnDelete != nil {
				h.OnDelete(c.key, c.old)
			}
		}
	}
}

// HasSynced reports whether the first list has been loaded and its OnAdd
// calls made.
func (inf *Informer[T]) HasSynced() bool {
	select {
	case <-inf.synced:
		return true
	default:
		return false
	}
}

// WaitForSync blocks until [Informer.HasSynced] or ctx ends (returning
// ctx.Err()).
func (inf *Informer[T]) WaitForSync(ctx context.Context) error {
	select {
	case <-inf.synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Get returns the cached object of key.
func (inf *Informer[T]) Get(key string) (T, bool) {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	c, ok := inf.items[key]
	return c.obj, ok
}

// List returns the cached objects in key order. The slice is the caller's;
// the objects are shared with the cache and must not be modified.
func (inf *Informer[T]) List() []T {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	keys := inf.keysLocked()
	out := make([]T, len(keys))
	for i, k := range keys {
		out[i] = inf.items[k].obj
	}
	return out
}

// Keys returns the cached keys in order.
func (inf *Informer[T]) Keys() []string {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	return inf.keysLocked()
}

func (inf *Informer[T]) keysLocked() []string {
	keys := make([]string, 0, len(inf.items))
	for k := range inf.items {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// Len returns the number of cached keys.
func (inf *Informer[T]) Len() int {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	return len(inf.items)
}

// Revision returns the revision the cache reflects: the last list's, or the
// last revision or bookmark the watch delivered (0 before the first list).
func (inf *Informer[T]) Revision() int64 {
	inf.mu.RLock()
	defer inf.mu.RUnlock()
	return inf.rev
}

// Relists returns how many times the informer relisted because of
// compaction.
func (inf *Informer[T]) Relists() int64 { return inf.relists.Load() }
