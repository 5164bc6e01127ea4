package bus

import (
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

// encodings caches, for one window entry, the wire encoding of its events as
// subscribers see them — the events under their prefixes, prev_kv removed unless asked
// for — so that a revision fanned out to N subscribers is marshalled once per distinct
// view instead of N times (at 10,000 subscribers on one prefix the per-subscriber
// marshal and filter copies were 6% of the replica's CPU; what is left is marshalling
// the message's own two fields and copying the bytes).
//
// A view is cached as the bytes of SubscribeResponse field 3 (events) alone; a message
// carries them as its unknown fields next to its own sequence and revision, and
// proto.Marshal writes unknown fields verbatim, so what reaches the subscriber is
// exactly the message it would otherwise have been sent.
//
// Concurrency: any number of subscribers call view concurrently; the first to need a
// view builds it (a racing second may build it too, and one copy wins).
//
// Memory: only views up to maxEncodedBytes are kept (a larger one is built for the
// subscriber that needs it and dropped, the cost being the copy anyway), and the window
// drops an entry's encodings once the entry is no longer among the newest
// encodedEntries; readers that still hold the entry keep using what they hold. The
// cache is therefore bounded by encodedEntries × maxEncodedBytes per distinct view of
// a revision, and is usually a few hundred bytes per recent revision.
type encodings struct {
	// anyPrevKV: some event carries prev_kv (otherwise the views with and without
	// prev_kv are the same bytes and share one slot).
	anyPrevKV bool
	// all holds the views where every event matched, without [0] and with [1] prev_kv.
	all [2]atomic.Pointer[[]byte]

	mu   sync.Mutex
	some map[subsetKey][]byte // views of a subset of at most maxSubsetEvents events
}

// subsetKey names a view of some of an entry's events: bit i set = event i matched.
type subsetKey struct {
	mask   uint64
	prevKV bool
}

// maxSubsetEvents is the most events an entry may have for views of a part of them to
// be cached (the subset is a 64-bit mask); larger entries are marshalled per
// subscriber when only some of their events match.
const maxSubsetEvents = 64

// encodedEntries is how many of the newest window entries keep their encodings: the
// fan-out of a revision happens while it is among the newest (a subscriber reads at
// most readBatch entries at a time); subscribers further behind marshal their own.
const encodedEntries = 256

// maxEncodedBytes is the largest view kept in the cache.
const maxEncodedBytes = 64 << 10

func newEncodings(events []*mvccpb.Event) *encodings {
	e := &encodings{}
	for _, ev := range events {
		if ev.PrevKv != nil {
			e.anyPrevKV = true
			break
		}
	}
	return e
}

// message returns the message of entry e for the subscriber of r (without sequence
// number) and its number of events, or nil when no event is under r's prefixes.
func message(r *Request, e *Entry) (*watchbusv1.SubscribeResponse, int) {
	var mask uint64
	n := 0
	for i, ev := range e.Events {
		if r.Match(ev.GetKv().GetKey()) {
			n++
			if i < maxSubsetEvents {
				mask |= 1 << i
			}
		}
	}
	switch {
	case n == 0:
		return nil, 0
	case e.enc == nil || (n < len(e.Events) && len(e.Events) > maxSubsetEvents):
		return &watchbusv1.SubscribeResponse{Revision: e.Revision, Events: filter(r, e.Events)}, n
	}
	raw := e.enc.view(r, e.Events, n == len(e.Events), mask)
	msg := &watchbusv1.SubscribeResponse{Revision: e.Revision}
	msg.ProtoReflect().SetUnknown(raw)
	return msg, n
}

// view returns the encoded events of r's view, building and caching it on first use.
func (c *encodings) view(r *Request, events []*mvccpb.Event, all bool, mask uint64) []byte {
	prevKV := r.PrevKV && c.anyPrevKV
	if all {
		slot := &c.all[0]
		if prevKV {
			slot = &c.all[1]
		}
		if b := slot.Load(); b != nil {
			return *b
		}
		b := encodeEvents(filter(r, events))
		if len(b) > maxEncodedBytes || slot.CompareAndSwap(nil, &b) {
			return b
		}
		return *slot.Load()
	}
	key := subsetKey{mask: mask, prevKV: prevKV}
	c.mu.Lock()
	b, ok := c.some[key]
	c.mu.Unlock()
	if ok {
		return b
	}
	b = encodeEvents(filter(r, events))
	if len(b) > maxEncodedBytes {
		return b
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.some[key]; ok {
		return prev
	}
	if c.some == nil {
		c.some = make(map[subsetKey][]byte)
	}
	c.some[key] = b
	return b
}

// encodeEvents is the wire encoding of a SubscribeResponse holding only events.
func encodeEvents(events []*mvccpb.Event) []byte {
	b, err := proto.Marshal(&watchbusv1.SubscribeResponse{Events: events})
	if err != nil { // cannot happen for well-formed key-values; keep the contract anyway
		panic("watchbus: encoding events: " + err.Error())
	}
	return b
}

// filter returns the events under r's prefixes, without prev_kv unless r asks for it.
// The result shares the key-values with the window.
func filter(r *Request, events []*mvccpb.Event) []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, ev := range events {
		if !r.Match(ev.GetKv().GetKey()) {
			continue
		}
		if !r.PrevKV && ev.PrevKv != nil {
			ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
		}
		out = append(out, ev)
	}
	return out
}
