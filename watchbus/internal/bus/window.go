package bus

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"plasmacloud.dev/proto/mvccpb"
)

// Entry is one ChainFire revision in the window: every event of that revision, in
// ChainFire's order (a transaction's events stay together). Entries are immutable once
// appended, so readers share them without copying.
type Entry struct {
	// Revision is the ChainFire revision (the events' ModRevision).
	Revision int64
	// Events are the revision's changes over the whole keyspace, with prev_kv.
	Events []*mvccpb.Event
	// Received is when the upstream watch delivered the revision.
	Received time.Time

	// enc caches the events' encodings per subscriber view (see encodings); nil for
	// entries no longer among the newest encodedEntries. A cache, not content: the
	// window clears it under its write lock, readers use the copy they read.
	enc *encodings
}

// Window is the revision-indexed in-memory window of recent ChainFire revisions that
// every subscriber of a replica reads by cursor, like Kubernetes' watch cache. It covers
// the revisions (Floor, Head]: every revision in that range that had events is an entry.
//
// Concurrency: one writer (the upstream loop) calls Append, Advance and Reset; any number
// of readers call Read, Floor, Head, Lag and Changed concurrently. The writer never waits
// for a reader: a reader copies out entry pointers under a read lock and works on them
// outside it. A reader whose cursor falls below Floor (evicted) learns it from Read.
//
// Readers learn of changes either from ReadResult.Changed (closed on the next change) or,
// cheaper when there are thousands of them, as registered [Waiter]s: after each change
// the writer wakes only the waiters that have something to read in it (per-prefix
// dispatch) and moves the cursor of the others past it in place.
type Window struct {
	maxEvents int
	maxAge    time.Duration
	now       func() time.Time

	mu      sync.RWMutex
	entries []Entry // entries[off:] are live, ascending by revision
	off     int
	events  int   // events in live entries
	floor   int64 // revisions <= floor are not (all) in the window
	head    int64 // newest revision seen (events or progress)
	// resetAt is the floor set by the last Reset (0: never): a cursor below it missed
	// revisions ChainFire compacted while the upstream was away. resetCompact is that
	// compaction revision.
	resetAt, resetCompact int64
	changed               chan struct{} // closed and replaced when the window changes

	// waiters are the registered readers, woken after each change outside mu. waitMu
	// guards the slice and the index (a waiter's position, for O(1) removal).
	waitMu  sync.Mutex
	waiters []*Waiter
	waitIdx map[*Waiter]int
}

// Waiter is a reader registered with a window (AddWaiter) so that the writer wakes it
// after a change instead of it waiting on ReadResult.Changed: one channel receive to
// park on, which several other wake-up sources (cancelation, a timer, a cut) can share,
// and no wake-up at all for a revision that has nothing for it.
//
// Match and Cursor are read by the writer while the waiter is registered: Match must
// not change, and Cursor is the reader's own cursor (revisions up to it delivered or
// passed over). The writer moves it forward only with CompareAndSwap from the head
// before a change to the change's revision, when the change has no event Match
// accepts: the reader had seen everything before it, so it has seen everything up to
// the change too. The reader must therefore only ever Store revisions it has read.
type Waiter struct {
	// C receives a value (capacity 1, so wake-ups coalesce) when the window changed
	// in a way that concerns the reader, or when Wake was called.
	C chan struct{}
	// Match reports whether an event key concerns the reader (nil: every change does).
	Match func(key []byte) bool
	// Cursor is the reader's cursor (nil: the writer never advances it; every change
	// wakes the reader).
	Cursor *atomic.Int64
}

// NewWaiter returns a waiter with a fresh channel.
func NewWaiter(match func(key []byte) bool, cursor *atomic.Int64) *Waiter {
	return &Waiter{C: make(chan struct{}, 1), Match: match, Cursor: cursor}
}

// Wake makes C ready without blocking (a no-op when it already is). Any goroutine may
// call it.
func (wk *Waiter) Wake() {
	select {
	case wk.C <- struct{}{}:
	default:
	}
}

// AddWaiter registers wk: it is woken after every change that concerns it until
// RemoveWaiter. Register before the first Read so that no change falls between the
// read and the registration.
func (w *Window) AddWaiter(wk *Waiter) {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	if w.waitIdx == nil {
		w.waitIdx = make(map[*Waiter]int)
	}
	if _, ok := w.waitIdx[wk]; ok {
		return
	}
	w.waitIdx[wk] = len(w.waiters)
	w.waiters = append(w.waiters, wk)
}

// RemoveWaiter unregisters wk (a no-op if it is not registered).
func (w *Window) RemoveWaiter(wk *Waiter) {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	i, ok := w.waitIdx[wk]
	if !ok {
		return
	}
	last := len(w.waiters) - 1
	if i != last {
		w.waiters[i] = w.waiters[last]
		w.waitIdx[w.waiters[i]] = i
	}
	w.waiters[last] = nil
	w.waiters = w.waiters[:last]
	delete(w.waitIdx, wk)
}

// Waiters returns the number of registered waiters.
func (w *Window) Waiters() int {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	return len(w.waiters)
}

// dispatch wakes the waiters after the head moved from prev to rev with events (none
// for a progress notification). A waiter whose Match accepts none of the events and
// whose cursor is at prev is advanced to rev instead of being woken. wakeAll (a Reset)
// wakes everyone. Called by the writer without mu held.
func (w *Window) dispatch(prev, rev int64, events []*mvccpb.Event, wakeAll bool) {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	for _, wk := range w.waiters {
		if !wakeAll && wk.Cursor != nil && !matchesAny(wk.Match, events) && wk.Cursor.CompareAndSwap(prev, rev) {
			continue
		}
		wk.Wake()
	}
}

// matchesAny reports whether match accepts any event's key (a nil match accepts all).
func matchesAny(match func([]byte) bool, events []*mvccpb.Event) bool {
	if match == nil {
		return len(events) > 0
	}
	for _, ev := range events {
		if match(ev.GetKv().GetKey()) {
			return true
		}
	}
	return false
}

// WindowConfig bounds a window.
type WindowConfig struct {
	// MaxEvents is the most events kept (default 100,000). The oldest revisions are
	// evicted first; the newest revision is kept even if it alone exceeds the bound.
	MaxEvents int
	// MaxAge is how long a revision is kept (default 10 min; 0 keeps by count only).
	MaxAge time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// NewWindow returns an empty window at revision rev: Floor = Head = rev.
func NewWindow(cfg WindowConfig, rev int64) *Window {
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = 100_000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Window{maxEvents: cfg.MaxEvents, maxAge: cfg.MaxAge, now: cfg.Now,
		floor: rev, head: rev, changed: make(chan struct{})}
}

// Append adds one revision's events. rev must exceed Head; an older revision is ignored
// (the upstream never repeats one) and Append reports false.
func (w *Window) Append(rev int64, events []*mvccpb.Event) bool {
	now := w.now()
	w.mu.Lock()
	if rev <= w.head {
		w.mu.Unlock()
		return false
	}
	prev := w.head
	w.entries = append(w.entries, Entry{Revision: rev, Events: events, Received: now, enc: newEncodings(events)})
	if old := len(w.entries) - 1 - encodedEntries; old >= w.off {
		w.entries[old].enc = nil
	}
	w.events += len(events)
	w.head = rev
	w.evictLocked(now)
	w.notifyLocked()
	w.mu.Unlock()
	w.dispatch(prev, rev, events, false)
	return true
}

// Advance moves Head to rev without events (a progress notification: nothing changed
// up to rev). It is a no-op when rev <= Head.
func (w *Window) Advance(rev int64) {
	w.mu.Lock()
	if rev <= w.head {
		w.mu.Unlock()
		return
	}
	prev := w.head
	w.head = rev
	w.notifyLocked()
	w.mu.Unlock()
	w.dispatch(prev, rev, nil, false)
}

// Expire evicts entries older than MaxAge; the upstream loop calls it periodically so
// an idle window still ages out.
func (w *Window) Expire() {
	now := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	w.evictLocked(now)
}

// Reset empties the window at rev after ChainFire compacted past the upstream's resume
// point (compactRev): revisions up to rev are gone for good, and readers whose cursor is
// below rev learn it from Read (ErrCompacted-worthy, not a slow-consumer cut).
func (w *Window) Reset(rev, compactRev int64) {
	w.mu.Lock()
	w.entries, w.off, w.events = nil, 0, 0
	if rev < w.head {
		rev = w.head // never move backwards: cursors already past head stay valid
	}
	w.floor, w.head = rev, rev
	w.resetAt, w.resetCompact = rev, compactRev
	w.notifyLocked()
	w.mu.Unlock()
	w.dispatch(0, 0, nil, true)
}

func (w *Window) notifyLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *Window) evictLocked(now time.Time) {
	for len(w.entries)-w.off > 1 {
		e := &w.entries[w.off]
		tooMany := w.events > w.maxEvents
		tooOld := w.maxAge > 0 && now.Sub(e.Received) > w.maxAge
		if !tooMany && !tooOld {
			break
		}
		w.events -= len(e.Events)
		w.floor = e.Revision
		*e = Entry{} // release the events
		w.off++
	}
	// Compact the backing array once half of it is dead.
	if w.off > 0 && w.off >= len(w.entries)/2 {
		live := copy(w.entries, w.entries[w.off:])
		clear(w.entries[live:])
		w.entries = w.entries[:live]
		w.off = 0
	}
}

// Floor returns the revision below which the window is incomplete: revisions in
// (Floor, Head] are all in it.
func (w *Window) Floor() int64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.floor
}

// Head returns the newest revision the window has seen.
func (w *Window) Head() int64 {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.head
}

// Bounds returns Floor and Head together.
func (w *Window) Bounds() (floor, head int64) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return w.floor, w.head
}

// Len returns the number of revisions and events in the window.
func (w *Window) Len() (revisions, events int) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	return len(w.entries) - w.off, w.events
}

// ReadResult is what Read found after a cursor.
type ReadResult struct {
	// Entries are the revisions after the cursor, oldest first (at most max).
	Entries []Entry
	// Head is the window's head at the time of the read: when Entries is empty, every
	// revision up to Head has been seen (the cursor may move to Head).
	Head int64
	// Changed is closed when the window next changes (wait on it when Entries is empty).
	Changed <-chan struct{}
	// Evicted is set when the cursor is below Floor: the revisions after it are no
	// longer all in the window. Compacted is set too (with CompactRevision) when they
	// were lost to a Reset, not to eviction.
	Evicted, Compacted bool
	// CompactRevision is the compaction that caused a Reset (with Compacted).
	CompactRevision int64
}

// Read returns up to max entries with revision > cursor. It copies entry values (not
// events) into a new slice that the caller owns.
func (w *Window) Read(cursor int64, max int) ReadResult {
	w.mu.RLock()
	defer w.mu.RUnlock()
	r := ReadResult{Head: w.head, Changed: w.changed}
	if cursor < w.floor {
		r.Evicted = true
		if w.resetAt > 0 && cursor < w.resetAt {
			r.Compacted, r.CompactRevision = true, w.resetCompact
		}
		return r
	}
	live := w.entries[w.off:]
	i := sort.Search(len(live), func(i int) bool { return live[i].Revision > cursor })
	n := min(len(live)-i, max)
	if n > 0 {
		r.Entries = make([]Entry, n)
		copy(r.Entries, live[i:i+n])
	}
	return r
}

// Lag returns how many revisions of the window are after cursor: the subscriber's queue
// depth. A cursor below Floor counts every entry.
func (w *Window) Lag(cursor int64) int {
	w.mu.RLock()
	defer w.mu.RUnlock()
	live := w.entries[w.off:]
	i := sort.Search(len(live), func(i int) bool { return live[i].Revision > cursor })
	return len(live) - i
}
