// Package bus is WatchBus's core: one upstream ChainFire watch over the whole keyspace
// feeding a revision-indexed in-memory [Window], and the subscriptions that read it by
// cursor — replay, live delivery, history from ChainFire, snapshots, bookmarks and the
// slow-consumer policy.
//
// # Ownership and concurrency
//
// A [Bus] is built with [New] and runs its upstream loop in [Bus.Run], which owns the
// window's write side until its context ends. Any number of goroutines call
// [Bus.Subscribe] concurrently, one per stream; each subscription reads the window
// under a read lock, copies entry pointers and sends outside it, so the upstream never
// waits for a subscriber and subscribers never wait for each other. Between reads a
// live subscription parks on its [Waiter]; the upstream loop wakes only the ones a
// revision concerns (per-prefix dispatch), after appending it. A sweeper in Run
// measures every subscription's lag and cuts the ones that stay at the queue bound.
//
// # Cost per delivered event
//
// The hot path is one wake-up, one window read, a message built around the revision's
// shared encoding (encodings) and one Send; runs of messages are sent with the
// transport's flush held (Stream.Hold). See docs/watchbus/performance.md, run 3.
package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// Source is the part of the ChainFire client the bus uses; *chainfire.Client satisfies
// it. Watch must resume by itself after stream errors (as chainfire's does) and signal a
// compacted resume point with a Relist response.
type Source interface {
	Get(ctx context.Context, key string, opts ...chainfire.OpOption) (*pb.RangeResponse, error)
	Watch(ctx context.Context, key string, opts ...chainfire.OpOption) <-chan chainfire.WatchResponse
}

var _ Source = (*chainfire.Client)(nil)

// Config tunes a Bus. Zero values take the documented defaults.
type Config struct {
	// Source is the upstream ChainFire (required).
	Source Source
	// WindowEvents and WindowAge bound the window (defaults 100,000 events, 10 min).
	WindowEvents int
	WindowAge    time.Duration
	// SubscriberQueue is how many revisions a subscriber may lag behind the head before
	// it counts as slow (default 1024).
	SubscriberQueue int
	// SlowConsumerTimeout is how long a subscriber may stay at the queue bound, or have
	// one send blocked (it stopped reading and the HTTP/2 window and socket buffers are
	// full), before it is cut with ResourceExhausted (default 10 s).
	SlowConsumerTimeout time.Duration
	// CutGrace is how long a cut subscriber's blocked send may take before its stream is
	// aborted (default 2 s).
	CutGrace time.Duration
	// SnapshotBatch bounds the key-values of one snapshot message (default 500) and
	// SnapshotBytes its size (default 1 MiB).
	SnapshotBatch int
	SnapshotBytes int
	// Metrics, when set, receives the bus's measurements.
	Metrics *Metrics
	// Logger (nil discards).
	Logger *slog.Logger
	// Drain is closed when the server begins shutting down: streams end with Unavailable
	// and a Resume detail.
	Drain <-chan struct{}
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultWindowEvents        = 100_000
	DefaultWindowAge           = 10 * time.Minute
	DefaultSubscriberQueue     = 1024
	DefaultSlowConsumerTimeout = 10 * time.Second
	DefaultBookmarkInterval    = 5 * time.Second
	MinBookmarkInterval        = 100 * time.Millisecond
	MaxBookmarkInterval        = time.Hour
)

// Errors of the bus; the server maps them to Connect codes at the edge.
var (
	// ErrNotReady: the upstream watch is not established yet.
	ErrNotReady = errors.New("watchbus: not ready: upstream ChainFire watch not established")
	// ErrInvalid wraps request validation failures (InvalidArgument).
	ErrInvalid = errors.New("watchbus: invalid request")
)

// CompactedError is returned by Subscribe when the start revision is below ChainFire's
// compaction point: the subscriber must relist.
type CompactedError struct {
	CompactRevision, CurrentRevision int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("watchbus: revision compacted (compact revision %d, current revision %d); relist",
		e.CompactRevision, e.CurrentRevision)
}

// SlowConsumerError is returned by Subscribe when the subscriber was cut for not
// reading fast enough, or when its cursor fell off the window. Resubscribing from
// Resume loses nothing.
type SlowConsumerError struct {
	Resume int64
	Reason string
}

func (e *SlowConsumerError) Error() string {
	return fmt.Sprintf("watchbus: slow consumer cut (%s); resume from revision %d", e.Reason, e.Resume)
}

// UnavailableError is returned when the replica is draining or lost ChainFire in the
// middle of serving history: resubscribe elsewhere from Resume.
type UnavailableError struct {
	Resume int64
	Reason string
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("watchbus: unavailable (%s); resume from revision %d", e.Reason, e.Resume)
}

// Bus is one replica's upstream watch, window and subscriptions. Create it with New and
// run it with Run.
type Bus struct {
	cfg     Config
	log     *slog.Logger
	metrics *Metrics

	window atomic.Pointer[Window] // set once the upstream starts
	ready  atomic.Bool            // upstream watch created

	subsMu sync.Mutex
	subs   map[*subscription]struct{}

	// upstream health, for readiness and metrics
	lastProbeOK  atomic.Int64 // unix nanos of the last successful ChainFire probe
	chainfireRev atomic.Int64 // ChainFire's revision at the last probe
	lagMu        sync.Mutex
	lagProbes    []probe // ChainFire revisions not yet reached by the window, oldest first
}

type probe struct {
	rev int64
	at  time.Time
}

// New validates cfg and returns a bus; nothing runs until Run.
func New(cfg Config) (*Bus, error) {
	if cfg.Source == nil {
		return nil, errors.New("watchbus: Config.Source is required")
	}
	if cfg.WindowEvents <= 0 {
		cfg.WindowEvents = DefaultWindowEvents
	}
	if cfg.WindowAge == 0 {
		cfg.WindowAge = DefaultWindowAge
	}
	if cfg.SubscriberQueue <= 0 {
		cfg.SubscriberQueue = DefaultSubscriberQueue
	}
	if cfg.SlowConsumerTimeout <= 0 {
		cfg.SlowConsumerTimeout = DefaultSlowConsumerTimeout
	}
	if cfg.CutGrace <= 0 {
		cfg.CutGrace = 2 * time.Second
	}
	if cfg.SnapshotBatch <= 0 {
		cfg.SnapshotBatch = 500
	}
	if cfg.SnapshotBytes <= 0 {
		cfg.SnapshotBytes = 1 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := cfg.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	return &Bus{cfg: cfg, log: log, metrics: m, subs: make(map[*subscription]struct{})}, nil
}

// Window returns the window, nil before the upstream has started.
func (b *Bus) Window() *Window { return b.window.Load() }

// Ready returns nil when the bus can serve subscriptions: the upstream watch is
// established and ChainFire answered a probe within the last 5 seconds.
func (b *Bus) Ready() error {
	if !b.ready.Load() {
		return ErrNotReady
	}
	last := b.lastProbeOK.Load()
	if last == 0 || b.cfg.Now().Sub(time.Unix(0, last)) > 5*time.Second {
		return errors.New("watchbus: ChainFire unreachable (no successful probe in 5s); serving the window only")
	}
	return nil
}

// Run runs the upstream watch and the sweeper until ctx ends. It retries reaching
// ChainFire forever; it returns ctx's error.
func (b *Bus) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	rev, err := b.currentRevision(ctx)
	if err != nil {
		return err
	}
	w := NewWindow(WindowConfig{MaxEvents: b.cfg.WindowEvents, MaxAge: b.cfg.WindowAge, Now: b.cfg.Now}, rev)
	b.window.Store(w)
	wg.Go(func() { b.sweep(ctx, w) })
	wg.Go(func() { b.probeLoop(ctx, w) })
	wg.Go(func() { b.wakeOnDrain(ctx) })
	b.upstream(ctx, w)
	return ctx.Err()
}

// wakeOnDrain stops every subscription when the drain begins: it sets their stop flag,
// which they check before every send and after every wake-up, and wakes them.
func (b *Bus) wakeOnDrain(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-b.cfg.Drain:
	}
	b.subsMu.Lock()
	defer b.subsMu.Unlock()
	for s := range b.subs {
		s.halt()
	}
}

// currentRevision reads ChainFire's revision, retrying with backoff until ctx ends.
func (b *Bus) currentRevision(ctx context.Context) (int64, error) {
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := b.cfg.Source.Get(rctx, "\x00", chainfire.WithCountOnly())
		cancel()
		if err == nil {
			b.lastProbeOK.Store(b.cfg.Now().UnixNano())
			return resp.GetHeader().GetRevision(), nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		b.log.Warn("reading ChainFire's revision failed; retrying", "err", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(delay):
		}
	}
}

// upstream feeds the window from one whole-keyspace watch, re-established after a
// Relist (window reset) or a server cancel; the chainfire client itself resumes across
// endpoints after stream errors, so those are invisible here.
func (b *Bus) upstream(ctx context.Context, w *Window) {
	for ctx.Err() == nil {
		from := w.Head() + 1
		b.log.Info("upstream watch starting", "start_revision", from)
		wctx, cancel := context.WithCancel(ctx)
		ch := b.cfg.Source.Watch(wctx, "", chainfire.WithPrefix(), chainfire.WithRev(from),
			chainfire.WithPrevKV(), chainfire.WithProgressNotify(), chainfire.WithCreatedNotify())
		relist, err := b.consume(ctx, w, ch)
		cancel()
		for range ch { // drain until the watcher goroutine closes it
		}
		if ctx.Err() != nil {
			return
		}
		b.ready.Store(false)
		b.metrics.UpstreamRestarts.Inc()
		if relist != 0 {
			rev, rerr := b.currentRevision(ctx)
			if rerr != nil {
				return
			}
			b.log.Error("upstream resume point compacted in ChainFire; window reset, subscribers behind it are told to relist",
				"compact_revision", relist, "head", w.Head(), "current_revision", rev)
			b.metrics.WindowResets.Inc()
			w.Reset(rev, relist)
			continue
		}
		b.log.Warn("upstream watch ended; restarting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// consume applies watch responses to the window until the channel closes. It returns
// the compaction revision of a Relist, or the error that ended the watch.
func (b *Bus) consume(ctx context.Context, w *Window, ch <-chan chainfire.WatchResponse) (relist int64, err error) {
	expire := time.NewTicker(time.Second)
	defer expire.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-expire.C:
			w.Expire()
			b.observeWindow(w)
		case r, ok := <-ch:
			if !ok {
				return 0, errors.New("upstream watch channel closed")
			}
			switch {
			case r.Relist:
				return r.CompactRevision, r.Err
			case r.Err != nil:
				return 0, r.Err
			case r.Created:
				b.ready.Store(true)
				b.log.Info("upstream watch established", "revision", r.Revision())
			case len(r.Events) == 0:
				w.Advance(r.Revision())
			default:
				b.apply(w, r)
			}
			b.reachProbes(w.Head())
		}
	}
}

// apply splits a response into revisions (a response may carry several; one revision's
// events always come together) and appends them.
func (b *Bus) apply(w *Window, r chainfire.WatchResponse) {
	evs := r.Events
	for len(evs) > 0 {
		rev := evs[0].GetKv().GetModRevision()
		n := 1
		for n < len(evs) && evs[n].GetKv().GetModRevision() == rev {
			n++
		}
		if w.Append(rev, evs[:n:n]) {
			b.metrics.EventsIn.Add(float64(n))
			b.metrics.RevisionsIn.Inc()
		}
		evs = evs[n:]
	}
	b.metrics.Head.Set(float64(w.Head()))
}

func (b *Bus) observeWindow(w *Window) {
	revs, events := w.Len()
	floor, head := w.Bounds()
	b.metrics.WindowRevisions.Set(float64(revs))
	b.metrics.WindowEvents.Set(float64(events))
	b.metrics.Floor.Set(float64(floor))
	b.metrics.Head.Set(float64(head))
}

// probeLoop reads ChainFire's revision every second: readiness, and the upstream's lag
// behind ChainFire in revisions and seconds.
func (b *Bus) probeLoop(ctx context.Context, w *Window) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := b.cfg.Source.Get(pctx, "\x00", chainfire.WithCountOnly())
		cancel()
		if err != nil {
			continue
		}
		now := b.cfg.Now()
		b.lastProbeOK.Store(now.UnixNano())
		rev := resp.GetHeader().GetRevision()
		b.chainfireRev.Store(rev)
		head := w.Head()
		b.lagMu.Lock()
		if rev > head && (len(b.lagProbes) == 0 || b.lagProbes[len(b.lagProbes)-1].rev < rev) {
			b.lagProbes = append(b.lagProbes, probe{rev: rev, at: now})
		}
		b.lagMu.Unlock()
		b.reachProbes(head)
		b.metrics.UpstreamLagRevisions.Set(float64(max(0, rev-head)))
		b.metrics.UpstreamLagSeconds.Set(b.lagSeconds(now))
	}
}

// reachProbes forgets probes the window has reached.
func (b *Bus) reachProbes(head int64) {
	b.lagMu.Lock()
	defer b.lagMu.Unlock()
	i := 0
	for i < len(b.lagProbes) && b.lagProbes[i].rev <= head {
		i++
	}
	b.lagProbes = b.lagProbes[i:]
}

// lagSeconds is how long ago ChainFire was first seen at a revision the window has not
// reached yet (0 when caught up).
func (b *Bus) lagSeconds(now time.Time) float64 {
	b.lagMu.Lock()
	defer b.lagMu.Unlock()
	if len(b.lagProbes) == 0 {
		return 0
	}
	return now.Sub(b.lagProbes[0].at).Seconds()
}
