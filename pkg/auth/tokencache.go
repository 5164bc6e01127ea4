package auth

import (
	"sync"
	"time"
)

// tokenCache remembers tokens whose signature and claims verified, keyed by
// the exact token bytes, so that a client reusing its token for many calls
// pays for the signature check once. It is bounded: when full it drops the
// expired entries, then an arbitrary quarter. Safe for concurrent use.
type tokenCache struct {
	max int

	mu sync.RWMutex
	m  map[string]*cachedToken
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[string]*cachedToken)}
}

func (c *tokenCache) get(raw string) (*cachedToken, bool) {
	c.mu.RLock()
	ct, ok := c.m[raw]
	c.mu.RUnlock()
	return ct, ok
}

func (c *tokenCache) put(raw string, ct *cachedToken, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k, v := range c.m {
			if !now.Before(v.id.ExpiresAt) {
				delete(c.m, k)
			}
		}
		drop := len(c.m) - c.max*3/4
		for k := range c.m {
			if drop <= 0 {
				break
			}
			delete(c.m, k)
			drop--
		}
	}
	c.m[raw] = ct
}

func (c *tokenCache) remove(raw string) {
	c.mu.Lock()
	delete(c.m, raw)
	c.mu.Unlock()
}
