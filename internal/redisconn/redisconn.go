// Package redisconn opens the Redis the relay keeps its state in: a real one
// (plain or TLS, e.g. a managed Upstash or Aiven instance), or an embedded
// in-process one for a bare machine.
package redisconn

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/config"
)

// Conn is an open Redis client, and the embedded server behind it if any.
type Conn struct {
	Client *redis.Client

	embedded *miniredis.Miniredis
	stopTick chan struct{}
	ticker   sync.WaitGroup
	once     sync.Once
}

// Embedded reports whether the relay runs on its in-process Redis.
func (c *Conn) Embedded() bool { return c.embedded != nil }

// Options turns the configuration into go-redis options.
func Options(cfg config.Redis) (*redis.Options, error) {
	var opt *redis.Options
	if cfg.URL != "" {
		o, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, fmt.Errorf("REDIS_URL: %s", redactURLError(err))
		}
		opt = o
		if cfg.TLS && opt.TLSConfig == nil {
			opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: hostOnly(opt.Addr)}
		}
	} else {
		opt = &redis.Options{
			Addr:     net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port)),
			Password: cfg.Password,
			DB:       cfg.DB,
		}
		if cfg.TLS {
			opt.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, ServerName: cfg.Host}
		}
	}
	tune(opt)
	return opt, nil
}

// tune sets what every relay client wants: bounded dials so a dead Redis is
// noticed quickly, a pool large enough for blocking stream reads beside the
// request path, and no handshake commands that older servers reject.
func tune(opt *redis.Options) {
	opt.DialTimeout = 2 * time.Second
	opt.ReadTimeout = 3 * time.Second
	opt.WriteTimeout = 3 * time.Second
	if opt.PoolSize == 0 {
		opt.PoolSize = 128
	}
	opt.MinIdleConns = 4
	opt.DisableIdentity = true
	opt.MaintNotificationsConfig = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

// Open connects to the configured Redis, or starts the embedded one when none
// is configured. A real Redis that does not answer yet is not an error: the
// relay starts degraded and /health says so until Redis is back.
func Open(ctx context.Context, cfg config.Redis, log zerolog.Logger) (*Conn, error) {
	if cfg.Embedded() {
		return openEmbedded(log)
	}
	opt, err := Options(cfg)
	if err != nil {
		return nil, err
	}
	c := &Conn{Client: redis.NewClient(opt)}
	if err := c.Client.Ping(ctx).Err(); err != nil {
		log.Warn().Err(err).Str("addr", opt.Addr).Msg("redis is not reachable yet; starting degraded")
	}
	return c, nil
}

func openEmbedded(log zerolog.Logger) (*Conn, error) {
	m := miniredis.NewMiniRedis()
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("start embedded redis: %w", err)
	}
	opt := &redis.Options{Addr: m.Addr()}
	tune(opt)
	opt.PoolSize = 64
	c := &Conn{Client: redis.NewClient(opt), embedded: m, stopTick: make(chan struct{})}
	c.ticker.Add(1)
	go c.expireKeys()
	log.Warn().Str("addr", m.Addr()).Msg("NO REDIS CONFIGURED: using an embedded in-memory Redis. " +
		"Keys, accounts and usage are LOST when the process stops. Set REDIS_URL or REDIS_HOST for real use.")
	return c, nil
}

// expireKeys moves the embedded server's clock: miniredis only expires keys
// when told how much time has passed.
func (c *Conn) expireKeys() {
	defer c.ticker.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-c.stopTick:
			return
		case now := <-t.C:
			c.embedded.FastForward(now.Sub(last))
			last = now
		}
	}
}

// Close closes the client, and stops the embedded server. It is idempotent.
func (c *Conn) Close() {
	c.once.Do(func() {
		_ = c.Client.Close()
		if c.embedded != nil {
			close(c.stopTick)
			c.ticker.Wait()
			c.embedded.Close()
		}
	})
}

func hostOnly(addr string) string {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return h
}

// redactURLError keeps a parse error from echoing the URL, which may hold a
// password.
func redactURLError(err error) string {
	_ = err
	return "not a valid Redis URL (expected redis://[user:password@]host:port/db or rediss://...)"
}
