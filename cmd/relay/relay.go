package main

import (
	"context"
	"fmt"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/ingress"
	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/adminauth"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/redisconn"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/usage"
	"github.com/relaydev/relay/workers"
)

// service is a long-running part of the relay.
type service interface {
	Start(ctx context.Context) error
	Stop()
}

// relay is the assembled process: its parts in start order. They stop in
// reverse order, so the HTTP server (started last) stops accepting first and
// drains its streams, then the worker pools stop fetching and finish or hand
// back their entries, buffered usage events are flushed, and Redis closes
// last.
type relay struct {
	log      zerolog.Logger
	redis    *redisconn.Conn
	services []service
	started  []service
}

func assemble(ctx context.Context, cfg config.Config, log zerolog.Logger) (*relay, error) {
	for _, name := range cfg.GeneratedSecrets {
		log.Warn().Str("variable", name).Msg("not set: generated a random value for this process; " +
			"sessions and encrypted data will not survive a restart")
	}
	conn, err := redisconn.Open(ctx, cfg.Redis, log.With().Str("component", "redis").Logger())
	if err != nil {
		return nil, err
	}
	m := metrics.New()
	r := &relay{log: log, redis: conn}
	if cfg.PprofAddr != "" {
		r.services = append(r.services, newPprofServer(cfg.PprofAddr, log.With().Str("component", "pprof").Logger()))
	}

	ks := keyspace.New(cfg.Redis.KeyPrefix)
	keys := apikeys.NewStore(conn.Client, ks, apikeys.Options{
		Prefix: cfg.APIKeyPrefix, CacheTTL: cfg.KeyCacheTTL, Log: log.With().Str("component", "apikeys").Logger()})
	admin := adminauth.New(conn.Client, ks, adminauth.Options{
		Secret: cfg.JWTSecret, Log: log.With().Str("component", "admin").Logger()})
	if err := admin.Bootstrap(ctx, cfg.AdminUsername, cfg.AdminPassword); err != nil {
		// Redis may not answer yet: the relay starts degraded, and the admin
		// is created at the first login attempt once Redis is back.
		log.Warn().Err(err).Msg("could not create or check the admin account yet")
	}
	// The key store's lease releaser stops after the HTTP server (reverse
	// order), so the leases of the last requests are still freed.
	r.services = append(r.services, keys)

	// Claude: accounts (credentials sealed under ENCRYPTION_KEY), their
	// scheduler, the Anthropic upstream client and the OAuth token keeper.
	acctBox, err := secretbox.New(cfg.EncryptionKey)
	if err != nil {
		return nil, fmt.Errorf("ENCRYPTION_KEY: %w", err)
	}
	acctStore := accounts.NewStore(conn.Client, ks, acctBox, cfg.Accounts.SyncInterval, nil)
	sched := accounts.NewScheduler(acctStore, conn.Client, ks, accounts.Policy{
		StickyTTL: cfg.Accounts.StickyTTL, MaxPause: cfg.Accounts.MaxPause, OverloadPause: cfg.Accounts.OverloadPause,
		ErrorPause: cfg.Accounts.ErrorPause, RateLimitDefault: cfg.Accounts.RateLimitDefault,
	}, log.With().Str("component", "accounts").Logger())
	claudeOAuth := anthropic.NewOAuth(anthropic.OAuthConfig{
		ClientID: cfg.Claude.OAuthClientID, AuthorizeURL: cfg.Claude.OAuthAuthorizeURL, TokenURL: cfg.Claude.OAuthTokenURL,
		RedirectURL: cfg.Claude.OAuthRedirectURL, Scopes: cfg.Claude.OAuthScopes,
	}, nil)
	// Gemini: API-key accounts on the native API, Google OAuth accounts on
	// Code Assist; their tokens are kept by the same keeper as Claude's.
	googleOAuth := gemini.NewOAuth(gemini.OAuthConfig{
		ClientID: cfg.Gemini.OAuthClientID, ClientSecret: cfg.Gemini.OAuthClientSecret,
		AuthorizeURL: cfg.Gemini.OAuthAuthorizeURL, TokenURL: cfg.Gemini.OAuthTokenURL,
		RedirectURL: cfg.Gemini.OAuthRedirectURL, Scopes: cfg.Gemini.OAuthScopes,
	}, nil)
	claudeTokens := session.NewClaude(session.ClaudeOptions{
		Redis: conn.Client, Keys: ks, Store: acctStore, OAuth: claudeOAuth, Google: googleOAuth,
		Log:  log.With().Str("component", "claude-tokens").Logger(),
		Lead: cfg.Claude.RefreshLead, Interval: cfg.Claude.RefreshInterval, RetryPause: cfg.Accounts.ErrorPause,
	})
	r.services = append(r.services, claudeTokens)

	// Vertical Studio (only with VS_EMAIL and VS_PASSWORD): the shared
	// session and the archive pool start before the HTTP server.
	var vsDeps *ingress.VerticalStudio
	var imageDeps *ingress.Images
	var health []ingress.HealthCheck
	if cfg.VS.Enabled() {
		v, err := assembleVS(cfg, conn.Client, ks, acctBox, m, log)
		if err != nil {
			return nil, err
		}
		r.services = append(r.services, v.session, v.archive, v.sweeper)
		vsDeps, health = v.deps, append(health, v.health)
		imgs, err := assembleImages(cfg, conn.Client, ks, v, m, log)
		if err != nil {
			return nil, err
		}
		r.services = append(r.services, imgs.pool, imgs.queue)
		imageDeps = imgs.deps
	}

	// Usage accounting: the recorder puts one event per request on the usage
	// stream, and the usage pool folds them into the aggregates. In reverse
	// order the HTTP server stops first, then the pool, and the recorder
	// last, so it flushes the events of the last requests.
	pricing, err := usage.LoadPricing(cfg.PricingFile)
	if err != nil {
		return nil, err
	}
	recorder := usage.NewRecorder(conn.Client, usage.RecorderConfig{
		Stream: ks.Stream(usage.StreamName), Log: log.With().Str("component", "usage").Logger(), Metrics: m})
	r.services = append(r.services, recorder)
	aggregator := usage.NewAggregator(conn.Client, ks, pricing, usage.AggregatorConfig{},
		log.With().Str("component", "usage").Logger())
	usageCfg := aggregator.PoolConfig(workers.ConsumerName(), log.With().Str("component", "usage-pool").Logger(), m)
	usageCfg.VisibilityTimeout = cfg.WorkerVisibility
	usagePool, err := workers.New(conn.Client, usageCfg)
	if err != nil {
		return nil, fmt.Errorf("usage pool: %w", err)
	}
	r.services = append(r.services, usagePool)

	srv := ingress.New(ingress.Deps{
		Config:  cfg,
		Log:     log.With().Str("component", "http").Logger(),
		Redis:   conn.Client,
		Metrics: m,
		Keys:    keys,
		Admin:   admin,
		Usage:   recorder,
		VS:      vsDeps,
		Images:  imageDeps,
		Health:  health,

		Scheduler:    sched,
		Anthropic:    anthropic.NewClient(cfg.Claude.BaseURL, cfg.Claude.UpstreamTimeout),
		ClaudeOAuth:  claudeOAuth,
		ClaudeTokens: claudeTokens,

		Gemini:       gemini.NewClient(cfg.Gemini.BaseURL, cfg.Gemini.CodeAssistURL, cfg.Gemini.UpstreamTimeout),
		GeminiOAuth:  googleOAuth,
		GeminiTokens: claudeTokens,
	})
	r.services = append(r.services, srv)

	// /metrics reports every pool's stream length and pending entries.
	var watched []metrics.StreamGroup
	for _, svc := range r.services {
		if p, ok := svc.(*workers.Pool); ok {
			watched = append(watched, p.Watched())
		}
	}
	m.WatchStreams(conn.Client, watched)
	return r, nil
}

func (r *relay) start(ctx context.Context) error {
	for _, s := range r.services {
		if err := s.Start(ctx); err != nil {
			return err
		}
		r.started = append(r.started, s)
	}
	return nil
}

func (r *relay) stop() {
	done := make(chan struct{})
	go func() {
		for i := len(r.started) - 1; i >= 0; i-- {
			r.started[i].Stop()
		}
		r.redis.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		r.log.Error().Msg("shutdown did not finish in two minutes; exiting anyway")
	}
}
