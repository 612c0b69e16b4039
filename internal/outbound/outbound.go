// Package outbound holds the relay's connections to upstreams: one pooled
// http.Transport per outbound proxy (an account may go through its own HTTP or
// SOCKS5 proxy), so connections are kept and reused per route.
package outbound

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// Pool hands out transports by proxy URL ("" is direct). It is safe for
// concurrent use.
type Pool struct {
	headerTimeout time.Duration

	mu         sync.Mutex
	transports map[string]*http.Transport
}

// NewPool makes a pool whose transports wait at most headerTimeout for an
// upstream's response headers (a streamed body may run longer: the caller
// bounds it with its context).
func NewPool(headerTimeout time.Duration) *Pool {
	return &Pool{headerTimeout: headerTimeout, transports: map[string]*http.Transport{}}
}

// Transport is the transport for proxy, made on first use.
func (p *Pool) Transport(proxy string) (*http.Transport, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.transports[proxy]; t != nil {
		return t, nil
	}
	t := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2: true,
		// One upstream host carries every request: keep its connections
		// instead of closing and redialing them past a small idle limit.
		MaxIdleConns:          4096,
		MaxIdleConnsPerHost:   2048,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
		ResponseHeaderTimeout: p.headerTimeout,
	}
	if proxy != "" {
		u, err := url.Parse(proxy)
		if err != nil {
			return nil, fmt.Errorf("account proxy: %w", err)
		}
		t.Proxy = http.ProxyURL(u)
	}
	p.transports[proxy] = t
	return t, nil
}

// Close drops idle connections.
func (p *Pool) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, t := range p.transports {
		t.CloseIdleConnections()
	}
}
