package apikeys

import (
	"sync"
	"time"
)

// cache holds recent lookups by digest, found or not, for a short time. It
// is what keeps authentication off Redis on most requests; its TTL bounds how
// long another replica's revoke takes to reach this one.
type cache struct {
	ttl time.Duration
	max int

	mu sync.RWMutex
	m  map[string]cacheEntry
}

type cacheEntry struct {
	key     *Key // nil: no such key
	expires int64
}

func newCache(ttl time.Duration, max int) *cache {
	return &cache{ttl: ttl, max: max, m: make(map[string]cacheEntry)}
}

// get returns the cached lookup of digest and whether there was a fresh one.
func (c *cache) get(digest string, now time.Time) (*Key, bool) {
	c.mu.RLock()
	e, ok := c.m[digest]
	c.mu.RUnlock()
	if !ok || now.UnixNano() >= e.expires {
		return nil, false
	}
	return e.key, true
}

func (c *cache) put(digest string, k *Key, now time.Time) {
	c.mu.Lock()
	if len(c.m) >= c.max {
		// Full (e.g. a flood of made-up keys): drop everything stale, and if
		// that is not enough, everything. Lookups just go to Redis again.
		n := now.UnixNano()
		for d, e := range c.m {
			if n >= e.expires {
				delete(c.m, d)
			}
		}
		if len(c.m) >= c.max {
			clear(c.m)
		}
	}
	c.m[digest] = cacheEntry{key: k, expires: now.Add(c.ttl).UnixNano()}
	c.mu.Unlock()
}

func (c *cache) forget(digest string) {
	c.mu.Lock()
	delete(c.m, digest)
	c.mu.Unlock()
}
