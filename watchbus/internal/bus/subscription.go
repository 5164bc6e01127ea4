package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

// SendFunc delivers one message to the subscriber. It may block (HTTP/2 flow control);
// the bus never holds a lock while calling it.
type SendFunc func(*watchbusv1.SubscribeResponse) error

// Stream is one subscriber's output: Send, and Abort, which makes a Send blocked on a
// subscriber that stopped reading fail (the server sets the write deadline to now).
// Abort may be nil and may be called from another goroutine, at most once.
//
// Hold, when set, batches the transport: the bus calls Hold(true) before a Send that
// another Send follows at once (a subscriber with several revisions to catch up on) and
// Hold(false) before the last Send of such a run, and the server flushes only when not
// held: one HTTP/2 hand-off and socket write for the run instead of one per message.
// Messages, their order and sequence numbers are unchanged. Hold is called from the
// Subscribe goroutine only, like Send; nil means every Send flushes.
type Stream struct {
	Send  SendFunc
	Abort func()
	Hold  func(hold bool)
}

// subscription modes, for the sweeper and the subscribers gauge.
const (
	modeSnapshot int32 = iota
	modeHistory
	modeWindow
)

var modeNames = [...]string{"snapshot", "history", "window"}

// subscription is the state of one Subscribe call. Its fields are owned by the
// Subscribe goroutine except the atomics and cut, which the sweeper uses.
type subscription struct {
	b      *Bus
	req    Request
	stream Stream
	seq    uint64

	cursor    atomic.Int64 // last revision delivered or passed over
	mode      atomic.Int32
	sendingAt atomic.Int64 // unix nanos a blocked Send began (0: not sending)

	overSince time.Time // sweeper-owned: since when lag has been at the bound

	cutOnce   sync.Once
	cut       chan struct{} // closed by the sweeper
	cutReason string
	abortT    *time.Timer
	lastSent  time.Time

	// waiter is how live mode parks: its channel is woken by the window (a revision
	// with events for the subscriber), the bookmark timer, a cut, the drain and the end
	// of ctx, so that parking is one channel receive. The cursor is the subscriber's
	// own; the window never writes it (see Window.Position).
	waiter *Waiter
	held   bool // Stream.Hold(true) is in effect
	// stop is set (and the waiter woken) on a cut, the drain or the end of ctx, so that
	// the check before every send is one load of a field already in cache; the
	// channels say which.
	stop atomic.Bool
	// bookmarkFired is set by live mode's bookmark timer.
	bookmarkFired atomic.Bool
}

// Subscribe serves one subscription until ctx ends (ctx's error), the
// replica drains (*UnavailableError), the subscriber is cut (*SlowConsumerError), the
// start revision is compacted (*CompactedError), or a send fails. It validates req
// first (errors wrap ErrInvalid).
func (b *Bus) Subscribe(ctx context.Context, req *watchbusv1.SubscribeRequest, st Stream) (err error) {
	r, err := Validate(req)
	if err != nil {
		return err
	}
	w := b.Window()
	if w == nil || !b.ready.Load() {
		return ErrNotReady
	}
	s := &subscription{b: b, req: r, stream: st, cut: make(chan struct{})}
	s.waiter = NewWaiter(s.req.Prefixes, &s.cursor)
	b.metrics.SubscribersTotal.Inc()
	s.setMode(-1, modeSnapshot)
	b.subsMu.Lock()
	b.subs[s] = struct{}{}
	b.subsMu.Unlock()
	select { // wakeOnDrain only sees the subscriptions registered when the drain began
	case <-b.cfg.Drain:
		s.stop.Store(true)
	default:
	}
	defer context.AfterFunc(ctx, s.halt)()
	defer func() {
		b.subsMu.Lock()
		delete(b.subs, s)
		b.subsMu.Unlock()
		b.metrics.Subscribers.WithLabelValues(modeNames[s.mode.Load()]).Dec()
		// Close the cut: a concurrent cutNow finishes first (so abortT is safe to
		// read), a later one does nothing.
		s.cutOnce.Do(func() {})
		if s.abortT != nil {
			s.abortT.Stop()
		}
		s.hold(false)
		code := "ok"
		if err != nil {
			code = codeOf(err).String()
		}
		b.metrics.Ended.WithLabelValues(code).Inc()
	}()

	switch {
	case r.Snapshot:
		rev := r.StartRevision
		head := w.Head()
		if rev == 0 {
			rev = head
		}
		if rev > head {
			return fmt.Errorf("%w: start_revision: snapshot revision %d is ahead of this replica's head %d", ErrInvalid, rev, head)
		}
		if err := s.snapshot(ctx, rev); err != nil {
			return err
		}
		s.cursor.Store(rev)
	case r.StartRevision == 0:
		head := w.Head()
		s.cursor.Store(head)
		if err := s.send(ctx, &watchbusv1.SubscribeResponse{Revision: head, Bookmark: true}, "bookmark", 0); err != nil {
			return err
		}
	default:
		s.cursor.Store(r.StartRevision - 1)
	}
	if s.cursor.Load() < w.Floor() {
		if err := s.history(ctx, w); err != nil {
			return err
		}
	}
	return s.live(ctx, w)
}

func (s *subscription) setMode(from, to int32) {
	if from >= 0 {
		s.b.metrics.Subscribers.WithLabelValues(modeNames[from]).Dec()
	}
	s.mode.Store(to)
	s.b.metrics.Subscribers.WithLabelValues(modeNames[to]).Inc()
}

// send delivers msg with the next sequence number, first checking for a cut or a drain.
func (s *subscription) send(ctx context.Context, msg *watchbusv1.SubscribeResponse, kind string, events int) error {
	if err := s.interrupted(ctx); err != nil {
		return err
	}
	s.seq++
	msg.Sequence = s.seq
	now := s.b.cfg.Now()
	s.sendingAt.Store(now.UnixNano())
	err := s.stream.Send(msg)
	s.sendingAt.Store(0)
	if err != nil {
		select {
		case <-s.cut:
			return s.slowErr()
		default:
		}
		return err
	}
	s.lastSent = now
	s.b.metrics.messagesOut(kind).Inc()
	s.b.metrics.EventsOut.Add(float64(events))
	return nil
}

// interrupted reports a cut, a drain or the end of ctx. It runs before every send, so
// it only looks further than the stop flag when that is set (and then polls each
// channel on its own rather than in one select, which would lock all of them).
func (s *subscription) interrupted(ctx context.Context) error {
	if !s.stop.Load() {
		return nil
	}
	select {
	case <-s.cut:
		return s.slowErr()
	default:
	}
	select {
	case <-s.b.cfg.Drain:
		return &UnavailableError{Resume: s.cursor.Load() + 1, Reason: "replica draining"}
	default:
	}
	return ctx.Err()
}

// halt sets the stop flag and wakes the subscription (cut, drain, end of ctx).
func (s *subscription) halt() {
	s.stop.Store(true)
	s.waiter.Wake()
}

// hold switches the transport's batching on or off (see Stream.Hold).
func (s *subscription) hold(on bool) {
	if s.stream.Hold != nil && s.held != on {
		s.held = on
		s.stream.Hold(on)
	}
}

func (s *subscription) slowErr() error {
	return &SlowConsumerError{Resume: s.cursor.Load() + 1, Reason: s.cutReason}
}

// cutNow is called by the sweeper: the next send check ends the subscription, and a
// Send still blocked after CutGrace is aborted.
func (s *subscription) cutNow(reason string) {
	s.cutOnce.Do(func() {
		s.cutReason = reason
		s.b.metrics.SlowConsumerCuts.WithLabelValues(reason).Inc()
		s.b.log.Warn("slow consumer cut", "reason", reason, "resume_revision", s.cursor.Load()+1)
		close(s.cut)
		s.halt()
		if s.stream.Abort != nil {
			s.abortT = time.AfterFunc(s.b.cfg.CutGrace, s.stream.Abort)
		}
	})
}

// deliverRun sends the matching events of consecutive revisions (ascending, as read
// from the window or from one history watch response), one message per revision with
// matching events, and moves the cursor past each revision once its message is sent
// (or at once, when none of its events match). Every message but the last is sent with
// the transport held (Stream.Hold), so the run leaves in one flush.
//
// Messages carry their events pre-encoded where the entry has encodings (see message).
func (s *subscription) deliverRun(ctx context.Context, entries []Entry) error {
	type out struct {
		msg    *watchbusv1.SubscribeResponse
		events int
	}
	var (
		one  [1]out // the usual run: one revision, no allocation
		msgs = one[:0]
		last = -1 // the last entry with a message
	)
	if len(entries) > 1 {
		msgs = make([]out, 0, len(entries))
	}
	for i := range entries {
		m, n := message(&s.req, &entries[i])
		msgs = append(msgs, out{m, n})
		if m != nil {
			last = i
		}
	}
	for i, e := range entries {
		if m := msgs[i]; m.msg != nil {
			s.hold(i < last)
			if err := s.send(ctx, m.msg, "events", m.events); err != nil {
				return err
			}
		}
		s.cursor.Store(e.Revision)
	}
	return nil
}

// bookmarkDue sends a bookmark at the cursor when nothing was sent for an interval.
func (s *subscription) bookmarkDue(ctx context.Context) error {
	if s.b.cfg.Now().Sub(s.lastSent) < s.req.BookmarkInterval {
		return nil
	}
	return s.send(ctx, &watchbusv1.SubscribeResponse{Revision: s.cursor.Load(), Bookmark: true}, "bookmark", 0)
}

// bookmarkTick sends a bookmark if one is due, when live mode's bookmark timer has
// fired, and re-arms the timer for when the next one is due. The timer is armed for a
// time at or before the due time (sends only move the due time later), so a timer that
// has not fired means no bookmark is due: the hot path reads no clock and resets no
// timer, and an active subscriber's timer fires once per interval, not per message.
func (s *subscription) bookmarkTick(ctx context.Context, t *time.Timer) error {
	if !s.bookmarkFired.Swap(false) {
		return nil
	}
	if err := s.bookmarkDue(ctx); err != nil {
		return err
	}
	t.Reset(max(s.lastSent.Add(s.req.BookmarkInterval).Sub(s.b.cfg.Now()), time.Millisecond))
	return nil
}

// readBatch is how many revisions a subscriber takes from the window at once.
const readBatch = 256

// live serves the subscription from the window until it ends.
//
// Between reads it parks on its waiter: the window wakes it only for revisions with
// events under its prefixes (Window.Position tells it, and the sweeper, how far the
// others took it), and a bookmark timer, a cut, the drain and the end of ctx wake the
// same channel. At 10,000 subscribers the five-way select this replaces was 14% of the
// replica's CPU (locking five channels, one of them shared by all, on every park and
// wake-up).
func (s *subscription) live(ctx context.Context, w *Window) error {
	s.setMode(s.mode.Load(), modeWindow)
	if s.lastSent.IsZero() {
		s.lastSent = s.b.cfg.Now()
	}
	w.AddWaiter(s.waiter)
	defer w.RemoveWaiter(s.waiter)
	// One timer, armed for when the next bookmark is due (a ticker per subscriber woke
	// all of them every second to find nothing to do).
	bookmark := time.AfterFunc(max(s.lastSent.Add(s.req.BookmarkInterval).Sub(s.b.cfg.Now()), time.Millisecond), func() {
		s.bookmarkFired.Store(true)
		s.waiter.Wake()
	})
	defer bookmark.Stop()
	for {
		// Skip what was dispatched while it was parked without concerning it.
		cursor := w.Position(s.waiter, s.cursor.Load())
		s.cursor.Store(cursor)
		if err := s.interrupted(ctx); err != nil {
			return err
		}
		r := w.Read(cursor, readBatch)
		if r.Compacted {
			return &CompactedError{CompactRevision: r.CompactRevision, CurrentRevision: r.Head}
		}
		if r.Evicted {
			s.cutNow("evicted")
			return s.slowErr()
		}
		if err := s.deliverRun(ctx, r.Entries); err != nil {
			return err
		}
		if len(r.Entries) == readBatch {
			if err := s.bookmarkTick(ctx, bookmark); err != nil {
				return err
			}
			continue
		}
		if len(r.Entries) == 0 && r.Head > cursor {
			s.cursor.Store(r.Head) // nothing in (cursor, head]
		}
		if err := s.bookmarkTick(ctx, bookmark); err != nil {
			return err
		}
		if len(r.Entries) > 0 {
			continue
		}
		<-s.waiter.C
	}
}

// history serves revisions below the window's floor from a temporary ChainFire watch
// over the whole keyspace (every revision has events there, so the cursor advances
// through every revision and meets the window's floor), then returns to switch to the
// window with no gap and no duplicate.
func (s *subscription) history(ctx context.Context, w *Window) error {
	// Revision 1 is a fresh store's and has no events: nothing to catch up on.
	if floor := w.Floor(); floor <= 1 {
		s.cursor.Store(max(s.cursor.Load(), floor))
		return nil
	}
	s.setMode(s.mode.Load(), modeHistory)
	s.b.metrics.HistoryReads.Inc()
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	from := s.cursor.Load() + 1
	ch := s.b.cfg.Source.Watch(hctx, "", chainfire.WithPrefix(), chainfire.WithRev(from), chainfire.WithPrevKV())
	defer func() {
		cancel()
		for range ch {
		}
	}()
	if s.lastSent.IsZero() {
		s.lastSent = s.b.cfg.Now()
	}
	tick := time.NewTicker(min(s.req.BookmarkInterval/2, time.Second))
	defer tick.Stop()
	for s.cursor.Load() < w.Floor() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-s.cut:
			return s.slowErr()
		case <-s.b.cfg.Drain:
			return &UnavailableError{Resume: s.cursor.Load() + 1, Reason: "replica draining"}
		case <-tick.C:
			if err := s.bookmarkDue(ctx); err != nil {
				return err
			}
		case r, ok := <-ch:
			if !ok {
				return &UnavailableError{Resume: s.cursor.Load() + 1, Reason: "ChainFire history watch ended"}
			}
			switch {
			case r.Relist:
				return &CompactedError{CompactRevision: r.CompactRevision, CurrentRevision: max(w.Head(), r.Revision())}
			case r.Err != nil:
				return &UnavailableError{Resume: s.cursor.Load() + 1, Reason: r.Err.Error()}
			case len(r.Events) == 0:
				continue
			}
			// One response may hold several revisions: deliver them as one run.
			var run []Entry
			for evs := r.Events; len(evs) > 0; {
				rev := evs[0].GetKv().GetModRevision()
				n := 1
				for n < len(evs) && evs[n].GetKv().GetModRevision() == rev {
					n++
				}
				if rev > s.cursor.Load() {
					run = append(run, Entry{Revision: rev, Events: evs[:n:n]})
				}
				evs = evs[n:]
			}
			if err := s.deliverRun(ctx, run); err != nil {
				return err
			}
		}
	}
	return nil
}

// snapshot sends the state of the prefixes at rev: messages of at most SnapshotBatch
// key-values and about SnapshotBytes, all with snapshot = true, the last with
// snapshot_end = true (one empty message when nothing matches).
func (s *subscription) snapshot(ctx context.Context, rev int64) error {
	var (
		batch []*mvccpb.Event
		size  int
	)
	flush := func(end bool) error {
		msg := &watchbusv1.SubscribeResponse{Revision: rev, Events: batch, Snapshot: true, SnapshotEnd: end}
		batch, size = nil, 0
		return s.send(ctx, msg, "snapshot", len(msg.Events))
	}
	for _, p := range s.req.Prefixes {
		end := string(chainfire.PrefixEnd(p))
		key := string(p)
		for {
			resp, err := s.b.cfg.Source.Get(ctx, key, chainfire.WithRange(end), chainfire.WithRev(rev),
				chainfire.WithLimit(int64(s.b.cfg.SnapshotBatch)))
			if err != nil {
				if connect.CodeOf(err) == connect.CodeOutOfRange {
					return s.b.compacted(ctx, rev)
				}
				return &UnavailableError{Resume: 0, Reason: fmt.Sprintf("snapshot read at revision %d: %v", rev, err)}
			}
			for _, kv := range resp.Kvs {
				batch = append(batch, &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: kv})
				size += len(kv.Key) + len(kv.Value) + 32
				if len(batch) >= s.b.cfg.SnapshotBatch || size >= s.b.cfg.SnapshotBytes {
					if err := flush(false); err != nil {
						return err
					}
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	return flush(true)
}

// compacted builds the CompactedError for a read at rev that ChainFire refused as
// compacted, learning the compaction revision from a watch at rev.
func (b *Bus) compacted(ctx context.Context, rev int64) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	e := &CompactedError{CompactRevision: rev, CurrentRevision: b.Window().Head()}
	for r := range b.cfg.Source.Watch(ctx, "\x00", chainfire.WithRev(rev)) {
		if r.Relist {
			e.CompactRevision = r.CompactRevision
		}
		cancel()
	}
	return e
}

// sweep measures every window-mode subscriber's lag a few times a second and cuts the
// ones that stayed at the queue bound for SlowConsumerTimeout, and any subscriber whose
// current send has been blocked that long.
func (b *Bus) sweep(ctx context.Context, w *Window) {
	period := min(max(b.cfg.SlowConsumerTimeout/10, 50*time.Millisecond), time.Second)
	t := time.NewTicker(period)
	defer t.Stop()
	var subs []*subscription
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		subs = subs[:0]
		b.subsMu.Lock()
		for s := range b.subs {
			subs = append(subs, s)
		}
		b.subsMu.Unlock()
		now := b.cfg.Now()
		maxLag := 0
		for _, s := range subs {
			// Any mode: one send blocked for the whole timeout means the subscriber has
			// not opened its HTTP/2 window for that long (it stopped reading and every
			// buffer between us is full), whatever its lag: at a low write rate the
			// queue rule alone would take queue/rate to notice.
			if at := s.sendingAt.Load(); at != 0 && now.Sub(time.Unix(0, at)) >= b.cfg.SlowConsumerTimeout {
				s.cutNow("stalled_send")
				continue
			}
			if s.mode.Load() != modeWindow {
				continue
			}
			lag := w.Lag(w.Position(s.waiter, s.cursor.Load()))
			maxLag = max(maxLag, lag)
			b.metrics.SubscriberLag.Observe(float64(lag))
			if lag < b.cfg.SubscriberQueue {
				s.overSince = time.Time{}
				continue
			}
			if s.overSince.IsZero() {
				s.overSince = now
			} else if now.Sub(s.overSince) >= b.cfg.SlowConsumerTimeout {
				s.cutNow("queue_full")
			}
		}
		b.metrics.MaxLag.Set(float64(maxLag))
	}
}

// codeOf maps the bus's errors to Connect codes (see the server's edge mapping).
func codeOf(err error) connect.Code {
	var (
		ce *CompactedError
		se *SlowConsumerError
		ue *UnavailableError
	)
	switch {
	case errors.As(err, &ce):
		return connect.CodeOutOfRange
	case errors.As(err, &se):
		return connect.CodeResourceExhausted
	case errors.As(err, &ue), errors.Is(err, ErrNotReady):
		return connect.CodeUnavailable
	case errors.Is(err, ErrInvalid):
		return connect.CodeInvalidArgument
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return connect.CodeCanceled
	}
	return connect.CodeOf(err)
}

// ConnectError maps an error of Subscribe to the Connect error the client sees, with
// the Compacted or Resume detail.
func ConnectError(err error) error {
	if err == nil {
		return nil
	}
	var (
		ce *CompactedError
		se *SlowConsumerError
		ue *UnavailableError
	)
	code := codeOf(err)
	cerr := connect.NewError(code, err)
	switch {
	case errors.As(err, &ce):
		addDetail(cerr, &watchbusv1.Compacted{CompactRevision: ce.CompactRevision, CurrentRevision: ce.CurrentRevision})
	case errors.As(err, &se):
		addDetail(cerr, &watchbusv1.Resume{Revision: se.Resume})
	case errors.As(err, &ue):
		if ue.Resume > 0 {
			addDetail(cerr, &watchbusv1.Resume{Revision: ue.Resume})
		}
	}
	return cerr
}

func addDetail(cerr *connect.Error, m proto.Message) {
	if d, err := connect.NewErrorDetail(m); err == nil {
		cerr.AddDetail(d)
	}
}
