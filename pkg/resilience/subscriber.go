// Subscriber: the client side of WatchBus.
//
// [Subscribe] follows a WatchBus subscription (watchbus.v1 Subscribe) across
// replicas and failures and hands the caller's [Handler] every revision under
// the subscribed prefixes exactly once, in revision order:
//
//   - it connects to one replica of [SubscriberConfig.Endpoints] and stays
//     there while the stream is healthy;
//   - when the stream breaks (replica killed or draining, transport error,
//     idle past IdleTimeout, slow-consumer cut) it waits with exponential
//     backoff and jitter ([SubscriberConfig.Backoff]) and subscribes again —
//     on the next replica unless the break was the consumer's own fault —
//     from the revision after the last one delivered; bookmarks advance that
//     point, so an idle subscriber resumes from a fresh revision;
//   - a revision at or below the last delivered one is dropped as a
//     duplicate (a replica replaying from a little earlier is harmless);
//   - message sequence numbers are checked: a gap inside one stream is an
//     upstream bug, counted in [SubscriberStats.SequenceGaps], logged as an
//     error, and repaired by resubscribing from the last delivered revision;
//   - OutOfRange with a Compacted detail (the history needed is gone) ends
//     Subscribe with a [*CompactedError] (errors.Is [ErrCompacted]): the
//     caller must relist. The subscription never jumps silently to "now".
//
// The design is a blocking call with a callback rather than a channel: the
// handler runs on the goroutine that reads the stream, so a slow handler
// slows the reading, WatchBus sees the backpressure and, past its deadline,
// cuts the stream with ResourceExhausted, after which Subscribe resumes
// without loss. There is no hidden buffer that could grow without bound and
// no goroutine that outlives the call.

package resilience

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
	"plasmacloud.dev/proto/watchbus/v1/watchbusv1connect"
)

// ErrCompacted is wrapped by [*CompactedError]: the revisions a subscription
// or watch needed have been compacted away, and the consumer must relist
// (read the current state, then follow changes from that read's revision+1).
var ErrCompacted = errors.New("resilience: required revision compacted; relist")

// ErrBadSubscription is wrapped by the error of a [SubscriberConfig] that
// fails validation.
var ErrBadSubscription = errors.New("resilience: bad subscription")

// errSequenceGap ends one stream whose sequence numbers skipped.
var errSequenceGap = errors.New("resilience: watchbus sequence gap")

// errIdle ends one stream that stayed silent past IdleTimeout.
var errIdle = errors.New("resilience: watchbus stream idle")

// errStreamEnded is a stream the server closed without an error (a
// subscription never ends on its own, so this is a replica going away).
var errStreamEnded = errors.New("resilience: watchbus stream ended by server")

// CompactedError is the error of a subscription or watch that cannot resume
// because the history it needs was compacted. errors.Is(err, ErrCompacted)
// holds for it; its fields say where to relist.
type CompactedError struct {
	// ResumeRevision is the revision the subscription asked to resume from.
	ResumeRevision int64
	// CompactRevision is the compaction point: the oldest revision still
	// available is CompactRevision+1 (0 when the server did not say).
	CompactRevision int64
	// CurrentRevision is the store's current revision when the error was
	// sent, a revision to relist at (0 when the server did not say).
	CurrentRevision int64
	// Err is the underlying error (the server's, or the watch's).
	Err error
}

// Error describes the compaction.
func (e *CompactedError) Error() string {
	return fmt.Sprintf("resilience: resume revision %d compacted (compact revision %d, current revision %d); relist: %v",
		e.ResumeRevision, e.CompactRevision, e.CurrentRevision, e.Err)
}

// Unwrap returns [ErrCompacted] and the underlying error.
func (e *CompactedError) Unwrap() []error { return []error{ErrCompacted, e.Err} }

// Batch is one delivery to a [Handler]: either the events of one revision
// (all the changes of one ChainFire transaction under the prefixes, in the
// transaction's order) or a bookmark.
type Batch struct {
	// Revision is the revision of the events, or for a bookmark the revision
	// up to which everything has been delivered.
	Revision int64
	// Events are the changes (PUT or DELETE, with PrevKv when asked for);
	// empty for a bookmark. The handler owns them: they are not reused.
	Events []*mvccpb.Event
	// Bookmark marks a delivery without events.
	Bookmark bool
}

// Handler receives the deliveries of [Subscribe] (and of a [Watcher]),
// sequentially, on the subscribing goroutine, in strictly increasing
// revision order. ctx is the caller's. A non-nil error ends the subscription
// and is returned as is. A handler that blocks holds back the stream; see
// the package overview in subscriber.go for what that does.
type Handler func(ctx context.Context, b Batch) error

// SubscriberStats counts what happened to a subscription. Pass one in
// [SubscriberConfig.Stats] to read (or export as metrics) the counters while
// Subscribe runs; the fields are updated atomically and safe to read
// concurrently. One value may be shared by several subscriptions.
type SubscriberStats struct {
	// Streams counts Subscribe calls made to replicas (first and resumed).
	Streams atomic.Int64
	// Resumes counts streams that broke and were resubscribed.
	Resumes atomic.Int64
	// Duplicates counts revisions dropped because they were already
	// delivered.
	Duplicates atomic.Int64
	// SequenceGaps counts streams whose sequence numbers skipped: each is a
	// bug upstream, repaired by resubscribing.
	SequenceGaps atomic.Int64
	// SlowConsumerCuts counts streams the server ended with
	// ResourceExhausted because the handler did not keep up.
	SlowConsumerCuts atomic.Int64
	// Delivered counts Batches (events and bookmarks) handed to the handler.
	Delivered atomic.Int64
}

// Defaults of [SubscriberConfig] fields left at zero.
const (
	// DefaultIdleFactor times the bookmark interval (the server's 5 s
	// default when BookmarkInterval is unset) is how long a stream may stay
	// silent before it is abandoned for another replica.
	DefaultIdleFactor = 3
	// serverBookmarkInterval is WatchBus's default bookmark interval.
	serverBookmarkInterval = 5 * time.Second
)

// SubscriberConfig says what [Subscribe] follows and how it connects. Only
// Endpoints and Prefixes are required. It is a plain value; Subscribe does
// not modify it or keep it past its return.
type SubscriberConfig struct {
	// Endpoints are the base URLs of the WatchBus replicas ("host:port"
	// means http). The first is used until it fails.
	Endpoints []string
	// HTTPClient, when set, carries every stream (it must speak HTTP/2 for
	// h2c targets; see [NewHTTPClient]). Otherwise Pool supplies one client
	// per replica; when both are nil Subscribe builds a private [Pool] with
	// default [TransportOptions] and closes it on return.
	HTTPClient *http.Client
	// Pool supplies pooled HTTP/2 clients per replica (ignored when
	// HTTPClient is set). It is shared, never closed by Subscribe.
	Pool *Pool
	// ClientOptions are passed to the generated Connect client: the
	// protocol (connect.WithGRPC()), and the bearer token, e.g.
	// connect.WithInterceptors(auth.BearerInterceptor(tokenSource)).
	ClientOptions []connect.ClientOption
	// Prefixes are the key prefixes to follow (at least one, each
	// non-empty).
	Prefixes [][]byte
	// StartRevision is the first revision to deliver; 0 means "from now"
	// (the replica's current revision + 1, announced by a first bookmark).
	StartRevision int64
	// PrevKV asks for the previous key-value of each event.
	PrevKV bool
	// BookmarkInterval is how often the server sends a bookmark to an idle
	// subscription; 0 leaves the server's default (5 s).
	BookmarkInterval time.Duration
	// IdleTimeout is how long a stream may deliver nothing, not even a
	// bookmark, before it is abandoned for another replica (a replica that
	// is alive but stuck). 0 means DefaultIdleFactor × the bookmark
	// interval; negative disables the check. Time spent in the handler does
	// not count.
	IdleTimeout time.Duration
	// Backoff paces resubscribing. Its intervals and jitter apply between
	// consecutive failures; a stream that delivered something resets it.
	// MaxAttempts and MaxElapsedTime, when set, bound consecutive failures
	// (Subscribe then returns an error wrapping [ErrGaveUp]); Retryable and
	// AttemptTimeout are ignored. Zero: 50 ms doubling to 2 s, forever.
	Backoff Policy
	// Logger receives resumes, cuts and gaps; nil discards them.
	Logger *slog.Logger
	// Stats, when set, is updated as the subscription runs.
	Stats *SubscriberStats
}

// Validate checks the config without contacting anyone. Its errors wrap
// [ErrBadSubscription] or [ErrBadEndpoint].
func (c SubscriberConfig) Validate() error {
	if len(c.Endpoints) == 0 {
		return fmt.Errorf("%w: no endpoints", ErrBadSubscription)
	}
	for _, e := range c.Endpoints {
		if _, err := NormalizeURL(e); err != nil {
			return err
		}
	}
	if len(c.Prefixes) == 0 {
		return fmt.Errorf("%w: no prefixes", ErrBadSubscription)
	}
	for i, p := range c.Prefixes {
		if len(p) == 0 {
			return fmt.Errorf("%w: prefix %d is empty", ErrBadSubscription, i)
		}
	}
	if c.StartRevision < 0 {
		return fmt.Errorf("%w: negative start revision %d", ErrBadSubscription, c.StartRevision)
	}
	if c.BookmarkInterval < 0 {
		return fmt.Errorf("%w: negative bookmark interval", ErrBadSubscription)
	}
	return nil
}

// Subscribe follows the subscription cfg describes and calls h for every
// revision under cfg.Prefixes from cfg.StartRevision on, and for bookmarks
// that advance the resume point, until one of these ends it:
//   - ctx ends: Subscribe returns ctx.Err();
//   - h returns an error: Subscribe returns it unchanged;
//   - the history to resume from is compacted: a [*CompactedError];
//   - a replica refuses the subscription itself (InvalidArgument,
//     Unauthenticated, PermissionDenied, Unimplemented, …): that error;
//   - cfg.Backoff's MaxAttempts or MaxElapsedTime runs out over consecutive
//     failures: an error wrapping [ErrGaveUp] and the last failure;
//   - cfg is invalid: an error wrapping [ErrBadSubscription].
//
// Everything else (Unavailable, ResourceExhausted, transport failures, a
// stream that ends or goes idle, a sequence gap) is survived as described
// in the overview at the top of subscriber.go. h is called on the calling
// goroutine, never concurrently with itself; no goroutine started by
// Subscribe outlives it.
func Subscribe(ctx context.Context, cfg SubscriberConfig, h Handler) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if h == nil {
		return fmt.Errorf("%w: nil handler", ErrBadSubscription)
	}
	s := newSubscription(cfg, h)
	defer s.close()
	return s.run(ctx)
}

// subscription is the state of one Subscribe call, owned by its goroutine.
type subscription struct {
	cfg     SubscriberConfig
	h       Handler
	log     *slog.Logger
	stats   *SubscriberStats
	eps     *Endpoints
	pool    *Pool
	ownPool bool
	clients map[string]watchbusv1connect.WatchBusServiceClient
	idle    time.Duration

	// next is the lowest revision not yet delivered (0 while following
	// "from now" before the first message): the revision to resume from
	// and the threshold below which revisions are duplicates.
	next int64
}

func newSubscription(cfg SubscriberConfig, h Handler) *subscription {
	eps, _ := NewEndpoints(cfg.Endpoints) // validated
	s := &subscription{
		cfg: cfg, h: h, eps: eps, next: cfg.StartRevision, log: cfg.Logger, stats: cfg.Stats,
		clients: make(map[string]watchbusv1connect.WatchBusServiceClient),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.stats == nil {
		s.stats = new(SubscriberStats)
	}
	if cfg.HTTPClient == nil {
		s.pool = cfg.Pool
		if s.pool == nil {
			s.pool, s.ownPool = NewPool(TransportOptions{}), true
		}
	}
	switch {
	case cfg.IdleTimeout > 0:
		s.idle = cfg.IdleTimeout
	case cfg.IdleTimeout == 0 && cfg.BookmarkInterval > 0:
		s.idle = DefaultIdleFactor * cfg.BookmarkInterval
	case cfg.IdleTimeout == 0:
		s.idle = DefaultIdleFactor * serverBookmarkInterval
	}
	return s
}

func (s *subscription) close() {
	if s.ownPool {
		s.pool.Close()
	}
}

// client returns the Connect client of one replica, built on first use.
func (s *subscription) client(ep string) watchbusv1connect.WatchBusServiceClient {
	if c, ok := s.clients[ep]; ok {
		return c
	}
	hc := s.cfg.HTTPClient
	if hc == nil {
		hc = s.pool.Client(ep)
	}
	c := watchbusv1connect.NewWatchBusServiceClient(hc, ep, s.cfg.ClientOptions...)
	s.clients[ep] = c
	return c
}

// handlerError carries a handler's error out of stream unchanged.
type handlerError struct{ err error }

func (e handlerError) Error() string { return e.err.Error() }

// run is the resubscribe loop.
func (s *subscription) run(ctx context.Context) error {
	p := s.cfg.Backoff.withDefaults()
	bo := p.NewBackOff()
	failures := 0
	var failingSince time.Time
	healthy := func() {
		bo.Reset()
		failures = 0
	}
	for {
		ep := s.eps.Pick()
		err := s.stream(ctx, ep, healthy)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var herr handlerError
		if errors.As(err, &herr) {
			return herr.err
		}
		var cerr *CompactedError
		if errors.As(err, &cerr) {
			s.log.Warn("resilience: watchbus history compacted, consumer must relist",
				"endpoint", ep, "resume_revision", cerr.ResumeRevision,
				"compact_revision", cerr.CompactRevision, "current_revision", cerr.CurrentRevision)
			return err
		}
		if isFinalSubscribeError(err) {
			return fmt.Errorf("resilience: watchbus subscribe on %s: %w", ep, err)
		}
		if failures == 0 {
			failingSince = time.Now()
		}
		failures++
		if p.MaxAttempts > 0 && failures >= p.MaxAttempts {
			return fmt.Errorf("%w after %d consecutive failures: %w", ErrGaveUp, failures, err)
		}
		wait := bo.NextBackOff()
		if p.MaxElapsedTime > 0 && time.Since(failingSince)+wait > p.MaxElapsedTime {
			return fmt.Errorf("%w after failing for %s: %w", ErrGaveUp, time.Since(failingSince).Round(time.Millisecond), err)
		}
		next := ep
		if blamesReplica(err) {
			next = s.eps.Failed(ep)
		}
		s.stats.Resumes.Add(1)
		s.log.Warn("resilience: watchbus stream broke, resuming",
			"endpoint", ep, "next_endpoint", next, "resume_revision", s.next, "retry_in", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// isFinalSubscribeError reports whether a replica refused the subscription
// itself, which resubscribing cannot fix.
func isFinalSubscribeError(err error) bool {
	if !connect.IsWireError(err) {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodePermissionDenied,
		connect.CodeUnauthenticated, connect.CodeUnimplemented, connect.CodeFailedPrecondition:
		return true
	}
	return false
}

// blamesReplica reports whether a stream's failure is the replica's (move
// to the next one) rather than the consumer's (a slow-consumer cut: stay).
func blamesReplica(err error) bool {
	return !(connect.IsWireError(err) && connect.CodeOf(err) == connect.CodeResourceExhausted)
}

// stream runs one Subscribe stream on ep until it fails or ctx ends. It
// returns a handlerError for a handler failure, a *CompactedError for a
// compaction, and otherwise the reason the stream broke.
func (s *subscription) stream(ctx context.Context, ep string, healthy func()) error {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	req := &watchbusv1.SubscribeRequest{Prefixes: s.cfg.Prefixes, StartRevision: s.next, PrevKv: s.cfg.PrevKV}
	if s.cfg.BookmarkInterval > 0 {
		req.BookmarkInterval = durationpb.New(s.cfg.BookmarkInterval)
	}
	s.stats.Streams.Add(1)
	st, err := s.client(ep).Subscribe(sctx, connect.NewRequest(req))
	if err != nil {
		return s.streamError(ctx, sctx, err)
	}
	defer st.Close()

	// The idle watchdog runs only while waiting for the server: it is
	// stopped while the handler works.
	var watchdog *time.Timer
	if s.idle > 0 {
		watchdog = time.AfterFunc(s.idle, func() { cancel(errIdle) })
		defer watchdog.Stop()
	}
	var seq uint64
	for st.Receive() {
		if watchdog != nil {
			watchdog.Stop()
		}
		msg := st.Msg()
		seq++
		if msg.GetSequence() != seq {
			s.stats.SequenceGaps.Add(1)
			s.log.Error("resilience: watchbus sequence gap (bug upstream), resubscribing",
				"endpoint", ep, "expected_sequence", seq, "got_sequence", msg.GetSequence(),
				"revision", msg.GetRevision(), "resume_revision", s.next)
			return fmt.Errorf("%w on %s: expected %d, got %d", errSequenceGap, ep, seq, msg.GetSequence())
		}
		if seq == 1 {
			healthy()
		}
		if err := s.handle(ctx, msg); err != nil {
			return err
		}
		if watchdog != nil {
			watchdog.Reset(s.idle)
		}
	}
	return s.streamError(ctx, sctx, st.Err())
}

// handle delivers one message if it is new.
func (s *subscription) handle(ctx context.Context, msg *watchbusv1.SubscribeResponse) error {
	rev := msg.GetRevision()
	if msg.GetSnapshot() || msg.GetSnapshotEnd() {
		// Never asked for; a replica that sends it anyway is ignored
		// rather than trusted with the state.
		return nil
	}
	b := Batch{Revision: rev, Events: msg.GetEvents()}
	if msg.GetBookmark() || len(b.Events) == 0 {
		if rev < s.next {
			return nil // nothing new: no need to wake the handler
		}
		b.Bookmark, b.Events = true, nil
	} else if rev < s.next {
		s.stats.Duplicates.Add(1)
		return nil
	}
	if err := s.h(ctx, b); err != nil {
		return handlerError{err}
	}
	s.next = rev + 1
	s.stats.Delivered.Add(1)
	return nil
}

// streamError turns the way a stream ended into run's vocabulary.
func (s *subscription) streamError(ctx, sctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if cause := context.Cause(sctx); errors.Is(cause, errIdle) {
		return fmt.Errorf("%w for %s: %w", errIdle, s.idle, err)
	}
	if err == nil {
		return errStreamEnded
	}
	var cerr *connect.Error
	if !errors.As(err, &cerr) || !connect.IsWireError(err) {
		return err
	}
	switch cerr.Code() {
	case connect.CodeOutOfRange:
		ce := &CompactedError{ResumeRevision: s.next, Err: err}
		if d := compactedDetail(cerr); d != nil {
			ce.CompactRevision, ce.CurrentRevision = d.GetCompactRevision(), d.GetCurrentRevision()
		}
		return ce
	case connect.CodeResourceExhausted:
		s.stats.SlowConsumerCuts.Add(1)
		fallthrough
	case connect.CodeUnavailable:
		r := resumeDetail(cerr)
		switch {
		case r == nil:
		case s.next == 0:
			// Following "from now" and nothing delivered yet: the
			// replica's resume point is where "now" was.
			s.next = r.GetRevision()
		case r.GetRevision() != s.next:
			// Ahead is normal (the revisions between had nothing under
			// the prefixes); behind would only replay duplicates. Either
			// way resume from what the handler actually got: it never
			// loses anything.
			s.log.Debug("resilience: watchbus resume detail differs from delivery, resuming from delivery",
				"resume_detail", r.GetRevision(), "resume_revision", s.next)
		}
	}
	return err
}

// compactedDetail returns the Compacted detail of err, if any.
func compactedDetail(err *connect.Error) *watchbusv1.Compacted {
	for _, d := range err.Details() {
		if v, e := d.Value(); e == nil {
			if c, ok := v.(*watchbusv1.Compacted); ok {
				return c
			}
		}
	}
	return nil
}

// resumeDetail returns the Resume detail of err, if any.
func resumeDetail(err *connect.Error) *watchbusv1.Resume {
	for _, d := range err.Details() {
		if v, e := d.Value(); e == nil {
			if r, ok := v.(*watchbusv1.Resume); ok {
				return r
			}
		}
	}
	return nil
}
