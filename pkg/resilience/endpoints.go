package resilience

import (
	"fmt"
	"sync"
)

// Endpoints is a fixed set of base URLs of one replicated service with one
// of them "current". Every caller sends to [Endpoints.Pick]; a caller whose
// request failed in a way that blames the endpoint (transport error,
// Unavailable) reports it with [Endpoints.Failed], which moves "current" to
// the next URL in order, wrapping around. Because Failed only rotates when
// the failed URL is still the current one, a burst of concurrent failures on
// one dead endpoint rotates once, not once per caller.
//
// The current endpoint is sticky: healthy traffic stays on one member (and
// its pooled connection) until that member fails. There is no background
// health checking; a member that comes back is used again when rotation
// reaches it.
//
// Endpoints is safe for concurrent use.
type Endpoints struct {
	mu   sync.Mutex
	urls []string
	cur  int
}

// NewEndpoints validates and normalizes urls (see [NormalizeURL]), drops
// duplicates and returns the set with the first URL current. It fails with an
// error wrapping [ErrBadEndpoint] if urls is empty or one of them is invalid.
func NewEndpoints(urls []string) (*Endpoints, error) {
	seen := make(map[string]bool, len(urls))
	out := make([]string, 0, len(urls))
	for _, raw := range urls {
		u, err := NormalizeURL(raw)
		if err != nil {
			return nil, err
		}
		if !seen[u] {
			seen[u] = true
			out = append(out, u)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no endpoints given", ErrBadEndpoint)
	}
	return &Endpoints{urls: out}, nil
}

// Pick returns the current endpoint.
func (e *Endpoints) Pick() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.urls[e.cur]
}

// Failed reports that a request to url failed because of the endpoint. If
// url is the current endpoint, the next one becomes current; otherwise
// (someone already rotated, or url is not in the set) nothing changes.
// It returns the endpoint that is current afterwards.
func (e *Endpoints) Failed(url string) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.urls[e.cur] == url {
		e.cur = (e.cur + 1) % len(e.urls)
	}
	return e.urls[e.cur]
}

// All returns a copy of the endpoints, in order.
func (e *Endpoints) All() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.urls...)
}

// Len returns the number of endpoints.
func (e *Endpoints) Len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.urls)
}
