package bus

import (
	"encoding/binary"
	"slices"
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
// of readers call Read, Floor, Head, Lag, AddWaiter, RemoveWaiter and Position
// concurrently. The writer never waits
// for a reader: a reader copies out entry pointers under a read lock and works on them
// outside it. A reader whose cursor falls below Floor (evicted) learns it from Read.
//
// Readers learn of changes either from ReadResult.Changed (closed on the next change) or,
// cheaper when there are thousands of them, as registered [Waiter]s: after each change
// the writer wakes only the waiters that have something to read in it (per-prefix
// dispatch through an index), and Position tells the others how far they are.
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

	// Registered waiters (see Waiter), woken after each change outside mu. waitMu
	// guards the maps and the lengths; dispatched is the newest revision whose
	// dispatch is complete (read without locks by Position).
	waitMu        sync.Mutex
	any           map[*Waiter]struct{}    // waiters without prefixes
	groups        map[string]*waitGroup   // by prefix-set key
	index         map[string][]*waitGroup // by prefix: the groups having it
	lengths       map[int]int             // distinct prefix lengths in index → prefixes of that length
	sortedLengths []int                   // the keys of lengths, ascending
	dispatched    atomic.Int64
}

// Waiter is a reader registered with a window (AddWaiter) so that the writer wakes it
// after a change instead of it waiting on ReadResult.Changed: one channel receive to
// park on, which other wake-up sources (cancelation, a timer, a cut) can share, and no
// wake-up at all for a revision with nothing under its prefixes.
//
// Per-prefix dispatch. The window indexes waiters by prefix set (a group per distinct
// set) and, for each change, finds the groups with an event under their prefixes by
// looking the event keys' prefixes up in the index: the cost of a revision is its
// events times the number of distinct registered prefix lengths, plus one wake-up per
// waiter concerned — not a visit to every waiter. A group records the last revision
// that concerned it; a waiter whose cursor is at or past that revision has, by
// construction, seen everything up to the last dispatched revision, which Position
// returns without the waiter having been woken (so idle subscribers' resume points,
// bookmarks and lag follow the head for free). When a revision does concern a waiter,
// the writer first records how far it had got (its hint), so that a reader idle for
// long does not restart from its own stale cursor.
type Waiter struct {
	// C receives a value (capacity 1, so wake-ups coalesce) when a change concerns the
	// reader, or when Wake was called.
	C chan struct{}

	prefixes [][]byte                  // normalized; nil: every change concerns the reader
	cursor   *atomic.Int64             // the reader's own cursor (read-only here)
	hint     atomic.Int64              // written by the writer only: a position the reader had reached
	group    atomic.Pointer[waitGroup] // while registered with prefixes
}

// waitGroup is the waiters with one prefix set. Membership and mark are guarded by the
// window's waitMu; lastMatch is read without it.
type waitGroup struct {
	key      string
	prefixes [][]byte
	// waiters in registration order (removal swaps the last one in): waking them in
	// that order wakes the streams of one HTTP/2 connection together, which lets its
	// writer put several frames in one socket write; a map's random order cost the
	// replica 1.5–1.8× the CPU per event at 10,000 subscribers on one prefix.
	waiters   []*Waiter
	pos       map[*Waiter]int // index in waiters
	lastMatch atomic.Int64    // newest dispatched revision with an event under prefixes (or dispatched at creation, or a reset)
	mark      int64           // dispatch-local: revision the group was last woken for
}

// NewWaiter returns a waiter for the given normalized prefixes (see NormalizePrefixes)
// and the reader's cursor: the revision up to which the reader has delivered or passed
// over everything, which only the reader writes; nil prefixes: the reader is woken
// after every change.
func NewWaiter(prefixes [][]byte, cursor *atomic.Int64) *Waiter {
	return &Waiter{C: make(chan struct{}, 1), prefixes: prefixes, cursor: cursor}
}

// Wake makes C ready without blocking (a no-op when it already is). Any goroutine may
// call it.
func (wk *Waiter) Wake() {
	select {
	case wk.C <- struct{}{}:
	default:
	}
}

// groupKey is a canonical key of a normalized prefix set.
func groupKey(prefixes [][]byte) string {
	var b []byte
	for _, p := range prefixes {
		b = binary.AppendUvarint(b, uint64(len(p)))
		b = append(b, p...)
	}
	return string(b)
}

// AddWaiter registers wk: it is woken after every change that concerns it until
// RemoveWaiter. Register before the first Read so that no change falls between the
// read and the registration.
func (w *Window) AddWaiter(wk *Waiter) {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	if w.any == nil {
		w.any = make(map[*Waiter]struct{})
		w.groups = make(map[string]*waitGroup)
		w.index = make(map[string][]*waitGroup)
		w.lengths = make(map[int]int)
	}
	if wk.prefixes == nil {
		w.any[wk] = struct{}{}
		return
	}
	if wk.group.Load() != nil {
		return
	}
	key := groupKey(wk.prefixes)
	g := w.groups[key]
	if g == nil {
		g = &waitGroup{key: key, prefixes: wk.prefixes, pos: make(map[*Waiter]int)}
		// Revisions dispatched so far may concern the group's first reader; later ones
		// are dispatched after the group exists (dispatch needs waitMu) and move
		// lastMatch themselves.
		g.lastMatch.Store(w.dispatched.Load())
		w.groups[key] = g
		for _, p := range g.prefixes {
			w.index[string(p)] = append(w.index[string(p)], g)
			if w.lengths[len(p)]++; w.lengths[len(p)] == 1 {
				w.sortedLengths = append(w.sortedLengths, len(p))
				slices.Sort(w.sortedLengths)
			}
		}
	}
	g.pos[wk] = len(g.waiters)
	g.waiters = append(g.waiters, wk)
	wk.group.Store(g)
}

// RemoveWaiter unregisters wk (a no-op if it is not registered).
func (w *Window) RemoveWaiter(wk *Waiter) {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	if wk.prefixes == nil {
		delete(w.any, wk)
		return
	}
	g := wk.group.Swap(nil)
	if g == nil {
		return
	}
	i, last := g.pos[wk], len(g.waiters)-1
	if i != last {
		g.waiters[i] = g.waiters[last]
		g.pos[g.waiters[i]] = i
	}
	g.waiters[last] = nil
	g.waiters = g.waiters[:last]
	delete(g.pos, wk)
	if len(g.waiters) > 0 {
		return
	}
	delete(w.groups, g.key)
	for _, p := range g.prefixes {
		gs := slices.DeleteFunc(w.index[string(p)], func(x *waitGroup) bool { return x == g })
		if len(gs) == 0 {
			delete(w.index, string(p))
		} else {
			w.index[string(p)] = gs
		}
		if w.lengths[len(p)]--; w.lengths[len(p)] == 0 {
			delete(w.lengths, len(p))
			w.sortedLengths = slices.DeleteFunc(w.sortedLengths, func(n int) bool { return n == len(p) })
		}
	}
}

// Waiters returns the number of registered waiters.
func (w *Window) Waiters() int {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	n := len(w.any)
	for _, g := range w.groups {
		n += len(g.waiters)
	}
	return n
}

// Position returns the revision up to which a registered waiter whose own cursor is
// cursor has seen everything under its prefixes: cursor itself, or the last
// dispatched revision when nothing dispatched after cursor concerned it (or the hint
// the writer recorded when a revision last concerned it, if further). It never returns
// less than cursor. Any goroutine may call it (four atomic loads).
//
// Why it holds: the writer sets a group's lastMatch before it publishes the dispatched
// revision, and Position reads them in the opposite order; so if cursor ≥ lastMatch,
// no revision in (cursor, dispatched] had an event under the prefixes. A hint is such
// a position computed by the writer, so it stays valid.
func (w *Window) Position(wk *Waiter, cursor int64) int64 {
	cursor = max(cursor, wk.hint.Load())
	d := w.dispatched.Load()
	g := wk.group.Load()
	if g == nil || d <= cursor || cursor < g.lastMatch.Load() {
		return cursor
	}
	return d
}

// dispatch wakes the waiters concerned by the change to rev with events (none for a
// progress notification): the groups with an event under one of their prefixes, and
// every waiter without prefixes. reset (a Reset) wakes everyone and marks every group
// as concerned. It then publishes rev as dispatched. Called by the writer without mu
// held.
func (w *Window) dispatch(rev int64, events []*mvccpb.Event, reset bool) {
	w.waitMu.Lock()
	defer w.waitMu.Unlock()
	for wk := range w.any {
		wk.Wake()
	}
	before := w.dispatched.Load()
	wake := func(g *waitGroup) {
		if g.mark == rev && !reset {
			return
		}
		g.mark = rev
		lm := g.lastMatch.Load()
		for _, wk := range g.waiters {
			// Record the position it had reached before rev (Position as of now):
			// once lastMatch moves to rev, its own cursor may be far behind.
			if c := max(wk.cursor.Load(), wk.hint.Load()); c >= lm && before > c {
				wk.hint.Store(before)
			}
			wk.Wake()
		}
		if rev > lm { // only the writer stores it
			g.lastMatch.Store(rev)
		}
	}
	if reset {
		for _, g := range w.groups {
			wake(g)
		}
	} else {
		for _, ev := range events {
			key := ev.GetKv().GetKey()
			for _, n := range w.sortedLengths {
				if n > len(key) {
					break
				}
				for _, g := range w.index[string(key[:n])] {
					wake(g)
				}
			}
		}
	}
	w.dispatched.Store(rev)
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
	w := &Window{maxEvents: cfg.MaxEvents, maxAge: cfg.MaxAge, now: cfg.Now,
		floor: rev, head: rev, changed: make(chan struct{})}
	w.dispatched.Store(rev)
	return w
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
	w.entries = append(w.entries, Entry{Revision: rev, Events: events, Received: now, enc: newEncodings(events)})
	if old := len(w.entries) - 1 - encodedEntries; old >= w.off {
		w.entries[old].enc = nil
	}
	w.events += len(events)
	w.head = rev
	w.evictLocked(now)
	w.notifyLocked()
	w.mu.Unlock()
	w.dispatch(rev, events, false)
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
	w.head = rev
	w.notifyLocked()
	w.mu.Unlock()
	w.dispatch(rev, nil, false)
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
	w.dispatch(rev, nil, true)
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
