package mvcc

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"plasmacloud.dev/proto/mvccpb"
)

// WatchBatch is one delivery to a watcher.
type WatchBatch struct {
	// Revision is the revision of the last event in Events.
	Revision int64
	// Events holds every matching event of one or more whole revisions, in revision
	// order and, within a revision, in write order. A revision is never split. The
	// events are shared with other watchers: read them, do not modify them.
	Events []*mvccpb.Event
	// CompactRevision, when non-zero, says the watcher fell behind compaction: the
	// events it needs are gone. It is the last batch; C is closed after it.
	CompactRevision int64
}

// Watcher receives the events of a key range. It is created by Store.Watch and ends
// with Cancel, with a CompactRevision batch, or with Store.Close. The consumer reads C;
// a consumer that stops reading makes the watcher fall behind (it is caught up from
// history later) but never blocks Apply and never loses, duplicates or reorders events.
type Watcher struct {
	hub      *hub
	key, end []byte
	prevKV   bool
	ch       chan WatchBatch

	// Guarded by hub.mu.
	state   watchState
	nextRev int64 // synced: deliver events of revisions >= nextRev; unsynced: next revision needed
	idx     int   // position in hub.ranges or in the single-key slice while synced
	pend    []*mvccpb.Event
	pendRev int64
}

type watchState uint8

const (
	watchSynced watchState = iota
	watchUnsynced
	watchClosed
)

// C returns the channel of batches. It is closed after Cancel, after a batch with
// CompactRevision set, and on Store.Close.
func (w *Watcher) C() <-chan WatchBatch { return w.ch }

// Cancel stops the watcher and closes C. Batches already in C stay readable. Safe to
// call more than once and concurrently.
func (w *Watcher) Cancel() {
	h := w.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	h.close(w)
}

func (w *Watcher) matches(key []byte) bool { return inRange(key, w.key, w.end) }

// hub is the watchable part of the store, after etcd's watchableStore. Synced watchers
// are fed from Apply (notify) through a non-blocking send; a watcher whose channel is
// full becomes unsynced, and syncLoop catches it up from the by-revision index in
// pebble, then makes it synced again.
type hub struct {
	s  *Store
	mu sync.Mutex
	// rev is the last revision notified: synced watchers have been given every event
	// up to it.
	rev      int64
	epoch    uint64 // bumped by reset (Restore); a catch-up round of an older epoch is void
	single   map[string][]*Watcher
	ranges   []*Watcher
	unsynced map[*Watcher]struct{}
	touched  []*Watcher
	closed   bool
	n        atomic.Int64 // live watchers
	nPrev    atomic.Int64 // live watchers with prevKV
	kickCh   chan struct{}
	buffer   int
}

func newHub(s *Store, rev int64) *hub {
	return &hub{
		s: s, rev: rev, buffer: s.opts.WatchBuffer,
		single:   map[string][]*Watcher{},
		unsynced: map[*Watcher]struct{}{},
		kickCh:   make(chan struct{}, 1),
	}
}

func (h *hub) active() bool { return h.n.Load() > 0 }

func (h *hub) prevActive() bool { return h.nPrev.Load() > 0 }

func (h *hub) kick() {
	select {
	case h.kickCh <- struct{}{}:
	default:
	}
}

// Watch registers a watcher on [key, end): end nil or empty watches just key, end
// "\x00" every key >= key. startRev <= 0 means the next revision (Revision()+1 at the
// time of the call; pass an explicit revision to line up with a header read earlier). Events
// of revisions already stored are replayed from history first, then live ones follow.
// A startRev at or below the compaction revision fails with a *CompactedError (which
// Is ErrCompacted). With prevKV, events carry the previous version of their key. The
// caller owns the Watcher and must Cancel it.
func (s *Store) Watch(key, end []byte, startRev int64, prevKV bool) (*Watcher, error) {
	h := s.hub
	w := &Watcher{
		hub: h, key: append([]byte(nil), key...), prevKV: prevKV,
		ch: make(chan WatchBatch, h.buffer),
	}
	if len(end) > 0 {
		w.end = append([]byte(nil), end...)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, ErrClosed
	}
	if startRev <= 0 {
		// The committed revision, which may be ahead of h.rev while an Apply is
		// between its commit and its notify: those events are not this watcher's.
		startRev = s.rev.Load() + 1
	}
	if c := s.compacted.Load(); startRev <= c {
		return nil, &CompactedError{CompactRevision: c}
	}
	w.nextRev = startRev
	h.n.Add(1)
	if prevKV {
		h.nPrev.Add(1)
	}
	if startRev > h.rev {
		h.addSynced(w)
	} else {
		w.state = watchUnsynced
		h.unsynced[w] = struct{}{}
		h.kick()
	}
	return w, nil
}

func (h *hub) addSynced(w *Watcher) {
	w.state = watchSynced
	if len(w.end) == 0 {
		l := h.single[string(w.key)]
		w.idx = len(l)
		h.single[string(w.key)] = append(l, w)
		return
	}
	w.idx = len(h.ranges)
	h.ranges = append(h.ranges, w)
}

func (h *hub) removeSynced(w *Watcher) {
	if len(w.end) == 0 {
		l := h.single[string(w.key)]
		last := len(l) - 1
		l[w.idx] = l[last]
		l[w.idx].idx = w.idx
		l[last] = nil
		if last == 0 {
			delete(h.single, string(w.key))
		} else {
			h.single[string(w.key)] = l[:last]
		}
		return
	}
	last := len(h.ranges) - 1
	h.ranges[w.idx] = h.ranges[last]
	h.ranges[w.idx].idx = w.idx
	h.ranges[last] = nil
	h.ranges = h.ranges[:last]
}

// toUnsynced moves a synced watcher to the catch-up set; it needs revisions from next on.
func (h *hub) toUnsynced(w *Watcher, next int64) {
	h.removeSynced(w)
	w.state = watchUnsynced
	w.nextRev = max(w.nextRev, next)
	h.unsynced[w] = struct{}{}
}

// close ends w (h.mu held).
func (h *hub) close(w *Watcher) {
	switch w.state {
	case watchClosed:
		return
	case watchSynced:
		h.removeSynced(w)
	case watchUnsynced:
		delete(h.unsynced, w)
	}
	w.state = watchClosed
	w.pend = nil
	close(w.ch)
	h.n.Add(-1)
	if w.prevKV {
		h.nPrev.Add(-1)
	}
}

func (h *hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	for _, l := range h.single {
		for _, w := range append([]*Watcher(nil), l...) {
			h.close(w)
		}
	}
	for _, w := range append([]*Watcher(nil), h.ranges...) {
		h.close(w)
	}
	for w := range h.unsynced {
		h.close(w)
	}
}

// event returns the shared Event for pe in the variant w needs.
func (pe *pendingEvent) event(prevKV bool) *mvccpb.Event {
	if prevKV && pe.prev != nil {
		if pe.withPrv == nil {
			pe.withPrv = &mvccpb.Event{Type: pe.typ, Kv: pe.kv, PrevKv: pe.prev}
		}
		return pe.withPrv
	}
	if pe.plain == nil {
		pe.plain = &mvccpb.Event{Type: pe.typ, Kv: pe.kv}
	}
	return pe.plain
}

// notify hands the events of revisions [from, to], just committed by Apply, to the
// synced watchers. It never blocks: a watcher whose channel is full becomes unsynced.
// Watchers registered while Apply ran may need more than Apply collected (events at all,
// or previous values): those are caught up from history instead.
func (h *hub) notify(from, to int64, evs []pendingEvent, collected, collectedPrev bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !collected || !collectedPrev {
		moved := false
		for _, l := range h.single {
			for _, w := range append([]*Watcher(nil), l...) {
				if !collected || w.prevKV {
					h.toUnsynced(w, from)
					moved = true
				}
			}
		}
		for _, w := range append([]*Watcher(nil), h.ranges...) {
			if !collected || w.prevKV {
				h.toUnsynced(w, from)
				moved = true
			}
		}
		if moved {
			h.kick()
		}
		if !collected {
			h.rev = to
			return
		}
	}
	touched := h.touched[:0]
	for i := range evs {
		pe := &evs[i]
		for _, w := range h.single[string(pe.kv.Key)] {
			touched = w.add(pe, touched)
		}
		for _, w := range h.ranges {
			if w.matches(pe.kv.Key) {
				touched = w.add(pe, touched)
			}
		}
	}
	for _, w := range touched {
		select {
		case w.ch <- WatchBatch{Revision: w.pendRev, Events: w.pend}:
		default:
			h.toUnsynced(w, from)
			h.kick()
		}
		w.pend = nil
	}
	clear(touched)
	h.touched = touched[:0]
	h.rev = to
}

func (w *Watcher) add(pe *pendingEvent, touched []*Watcher) []*Watcher {
	if pe.rev < w.nextRev {
		return touched
	}
	if len(w.pend) == 0 {
		touched = append(touched, w)
	}
	w.pend = append(w.pend, pe.event(w.prevKV))
	w.pendRev = pe.rev
	return touched
}

// reset makes every watcher catch up against a restored state. Restore calls it with
// dbMu write-locked (lock order: dbMu, then h.mu).
func (h *hub) reset(rev int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.epoch++
	for _, l := range h.single {
		for _, w := range append([]*Watcher(nil), l...) {
			h.toUnsynced(w, h.rev+1)
		}
	}
	for _, w := range append([]*Watcher(nil), h.ranges...) {
		h.toUnsynced(w, h.rev+1)
	}
	h.rev = rev
	h.kick()
}

var errStale = errors.New("stale catch-up round")

const (
	syncRetry       = 10 * time.Millisecond
	syncBatchEvents = 1024 // events read per catch-up round (whole revisions)
)

// syncLoop is the catch-up goroutine: it serves unsynced watchers from history until
// they reach the notified revision. It owns nothing but its scratch state and ends with
// the store.
func (h *hub) syncLoop() {
	defer h.s.wg.Done()
	t := time.NewTimer(syncRetry)
	defer t.Stop()
	for {
		h.mu.Lock()
		waiting := len(h.unsynced) > 0
		h.mu.Unlock()
		var tc <-chan time.Time
		if waiting {
			t.Reset(syncRetry)
			tc = t.C
		}
		select {
		case <-h.s.stop:
			return
		case <-h.kickCh:
		case <-tc:
		}
		for h.syncRound() {
			select {
			case <-h.s.stop:
				return
			default:
			}
		}
	}
}

// candidate is an unsynced watcher served by one catch-up round.
type candidate struct {
	w         *Watcher
	next      int64
	compacted bool
	events    []*mvccpb.Event
	lastRev   int64
}

// syncRound runs one catch-up round; it reports whether another round should follow
// at once (progress was made and watchers are still behind).
func (h *hub) syncRound() bool {
	s := h.s
	h.mu.Lock()
	if len(h.unsynced) == 0 || h.closed {
		h.mu.Unlock()
		return false
	}
	upto, epoch := h.rev, h.epoch
	var cands []candidate
	minRev := int64(0)
	for w := range h.unsynced {
		if w.nextRev > upto {
			delete(h.unsynced, w)
			h.addSynced(w)
			continue
		}
		if len(w.ch) == cap(w.ch) {
			continue // no room: retried on the timer
		}
		cands = append(cands, candidate{w: w, next: w.nextRev})
		if minRev == 0 || w.nextRev < minRev {
			minRev = w.nextRev
		}
	}
	h.mu.Unlock()
	if len(cands) == 0 {
		return false
	}

	endRev, compacted, err := h.readHistory(cands, minRev, upto, epoch)
	if err == errStale {
		return true
	}
	if err != nil {
		s.log.Error("mvcc watch catch-up failed", "err", err)
		return false
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	if h.epoch != epoch || h.closed {
		return true
	}
	progress := false
	for i := range cands {
		c := &cands[i]
		w := c.w
		if w.state != watchUnsynced || w.nextRev != c.next {
			continue
		}
		if c.compacted {
			select {
			case w.ch <- WatchBatch{CompactRevision: compacted}:
				h.close(w)
			default:
			}
			continue
		}
		if len(c.events) > 0 {
			select {
			case w.ch <- WatchBatch{Revision: c.lastRev, Events: c.events}:
			default:
				continue
			}
		}
		progress = true
		w.nextRev = max(w.nextRev, endRev+1)
		if w.nextRev > h.rev {
			delete(h.unsynced, w)
			h.addSynced(w)
		}
	}
	return progress && len(h.unsynced) > 0
}

// readHistory reads the events of revisions [minRev, upto] (at most about
// syncBatchEvents, whole revisions) from pebble and distributes them to the candidates.
// It returns the last revision fully read and the compaction revision it checked.
func (h *hub) readHistory(cands []candidate, minRev, upto int64, epoch uint64) (endRev, compacted int64, err error) {
	s := h.s
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	// h.epoch changes only under dbMu's write lock (Restore), so reading it here is safe.
	if s.h == nil || h.epoch != epoch {
		return 0, 0, errStale
	}
	rit, err := s.h.db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxRev), UpperBound: appendRevKey(nil, upto+1, 0)})
	if err != nil {
		return 0, 0, storageErr("watch history", err)
	}
	defer rit.Close()
	// Checked after the iterator pinned its view (see Range).
	compacted = s.compacted.Load()
	live := 0
	for i := range cands {
		if cands[i].next <= compacted {
			cands[i].compacted = true
		} else {
			live++
		}
	}
	if live == 0 {
		return upto, compacted, nil
	}
	kit, err := rit.Clone(pebble.CloneOptions{IterOptions: &pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper}})
	if err != nil {
		return 0, 0, storageErr("watch history", err)
	}
	defer kit.Close()

	from := max(minRev, compacted+1)
	endRev = upto
	n := 0
	lastSeen := int64(0)
	var kbuf []byte
	var matched []int
	// Start at the chunk holding the first event of revision from: the last chunk
	// starting at or before (from, 0).
	ok := rit.SeekLT(append(appendRevKey(nil, from, 0), 0))
	if !ok {
		ok = rit.First()
	}
scan:
	for ; ok; ok = rit.Next() {
		cr, err := newChunkReader(rit.Key(), rit.Value())
		if err != nil {
			return 0, 0, storageErr("watch history", err)
		}
		for {
			rev, key, more, err := cr.next()
			if err != nil {
				return 0, 0, storageErr("watch history", err)
			}
			if !more {
				break
			}
			if rev < from {
				continue
			}
			if rev > upto {
				break scan
			}
			if n >= syncBatchEvents && rev != lastSeen {
				endRev = lastSeen // budget spent: stop at a revision boundary
				break scan
			}
			n++
			lastSeen = rev
			matched = matched[:0]
			wantPrev := false
			for i := range cands {
				c := &cands[i]
				if !c.compacted && rev >= c.next && c.w.matches(key) {
					matched = append(matched, i)
					wantPrev = wantPrev || c.w.prevKV
				}
			}
			if len(matched) == 0 {
				continue
			}
			ev, evPrev, err := historyEvent(kit, &kbuf, key, rev, wantPrev)
			if err != nil {
				return 0, 0, err
			}
			for _, i := range matched {
				c := &cands[i]
				e := ev
				if c.w.prevKV {
					e = evPrev
				}
				c.events = append(c.events, e)
				c.lastRev = rev
			}
		}
	}
	if err := rit.Error(); err != nil {
		return 0, 0, storageErr("watch history", err)
	}
	return endRev, compacted, nil
}

// historyEvent rebuilds the event of key at rev from its stored version; evPrev adds
// the previous version when wantPrev (and one exists and is not a tombstone).
func historyEvent(kit *pebble.Iterator, kbuf *[]byte, key []byte, rev int64, wantPrev bool) (ev, evPrev *mvccpb.Event, err error) {
	*kbuf = appendVersionKey((*kbuf)[:0], key, rev)
	if !kit.SeekPrefixGE(*kbuf) || !bytes.Equal(kit.Key(), *kbuf) {
		if err := kit.Error(); err != nil {
			return nil, nil, storageErr("watch history", err)
		}
		return nil, nil, storageErr("watch history", fmt.Errorf("version of %q at %d missing", key, rev))
	}
	val, err := kit.ValueAndErr()
	if err != nil {
		return nil, nil, storageErr("watch history", err)
	}
	rec, err := decodeRecord(val)
	if err != nil {
		return nil, nil, storageErr("watch history", err)
	}
	k := append([]byte(nil), key...)
	if rec.tombstone {
		ev = &mvccpb.Event{Type: mvccpb.Event_DELETE, Kv: &mvccpb.KeyValue{Key: k, ModRevision: rev}}
	} else {
		ev = &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: makeKVKey(k, rev, rec)}
	}
	evPrev = ev
	if wantPrev && kit.Next() {
		_, prevRev, ok := splitVersionKey(kit.Key())
		pv, err := kit.ValueAndErr()
		if err != nil || !ok {
			return nil, nil, storageErr("watch history", errCorrupt)
		}
		prec, err := decodeRecord(pv)
		if err != nil {
			return nil, nil, storageErr("watch history", err)
		}
		if !prec.tombstone {
			evPrev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv, PrevKv: makeKVKey(k, prevRev, prec)}
		}
	}
	return ev, evPrev, nil
}
