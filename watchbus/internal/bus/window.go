package bus

import (
	"sort"
	"sync"
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
}

// Window is the revision-indexed in-memory window of recent ChainFire revisions that
// every subscriber of a replica reads by cursor, like Kubernetes' watch cache. It covers
// the revisions (Floor, Head]: every revision in that range that had events is an entry.
//
// Concurrency: one writer (the upstream loop) calls Append, Advance and Reset; any number
// of readers call Read, Floor, Head, Lag and Changed concurrently. The writer never waits
// for a reader: a reader copies out entry pointers under a read lock and works on them
// outside it. A reader whose cursor falls below Floor (evicted) learns it from Read.
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
	defer w.mu.Unlock()
	if rev <= w.head {
		return false
	}
	w.entries = append(w.entries, Entry{Revision: rev, Events: events, Received: now})
	w.events += len(events)
	w.head = rev
	w.evictLocked(now)
	w.notifyLocked()
	return true
}

// Advance moves Head to rev without events (a progress notification: nothing changed
// up to rev). It is a no-op when rev <= Head.
func (w *Window) Advance(rev int64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if rev <= w.head {
		return
	}
	w.head = rev
	w.notifyLocked()
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
	defer w.mu.Unlock()
	w.entries, w.off, w.events = nil, 0, 0
	if rev < w.head {
		rev = w.head // never move backwards: cursors already past head stay valid
	}
	w.floor, w.head = rev, rev
	w.resetAt, w.resetCompact = rev, compactRev
	w.notifyLocked()
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
