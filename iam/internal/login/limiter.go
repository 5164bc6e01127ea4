package login

import (
	"container/list"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// sourceLimiter is a token bucket per source address, in memory (each replica limits
// what it sees), holding at most max sources: the least recently seen is forgotten
// when a new one arrives at a full table. Safe for concurrent use.
type sourceLimiter struct {
	limit rate.Limit
	burst int
	max   int

	mu    sync.Mutex
	lru   *list.List               // of *sourceEntry, most recent first
	index map[string]*list.Element // source → element
}

type sourceEntry struct {
	source string
	lim    *rate.Limiter
}

func newSourceLimiter(limit rate.Limit, burst, max int) *sourceLimiter {
	return &sourceLimiter{limit: limit, burst: burst, max: max, lru: list.New(), index: make(map[string]*list.Element)}
}

// allow takes a token for source at now; when none is left it returns false and how
// long until one is.
func (l *sourceLimiter) allow(source string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var e *sourceEntry
	if el, ok := l.index[source]; ok {
		l.lru.MoveToFront(el)
		e = el.Value.(*sourceEntry)
	} else {
		if l.lru.Len() >= l.max {
			old := l.lru.Back()
			l.lru.Remove(old)
			delete(l.index, old.Value.(*sourceEntry).source)
		}
		e = &sourceEntry{source: source, lim: rate.NewLimiter(l.limit, l.burst)}
		l.index[source] = l.lru.PushFront(e)
	}
	r := e.lim.ReserveN(now, 1)
	if !r.OK() {
		return false, time.Second
	}
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return false, d
	}
	return true, 0
}

// size returns how many sources are tracked.
func (l *sourceLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}
