// Package ingress is the relay's HTTP face: the Fiber app, its routes, the
// API-key middleware and limit checks, the OpenAI, Anthropic and Gemini
// adapters, SSE writing, error bodies, the admin API and the embedded web UI.
package ingress

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp/fasthttpadaptor"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/adminauth"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
)

// HealthCheck is one part of the relay that /health reports on. Check returns
// the part's state as a short string and whether it is healthy.
type HealthCheck struct {
	Name  string
	Check func(ctx context.Context) (state string, ok bool)
}

// Deps is what the ingress is built from. Parts left nil are not served: their
// routes answer 503 saying what is not configured.
type Deps struct {
	Config  config.Config
	Log     zerolog.Logger
	Redis   redis.UniversalClient
	Metrics *metrics.Metrics
	Health  []HealthCheck
	Usage   UsageRecorder
	// Keys and Admin are built from Redis and Config when nil (the relay
	// passes its own so the process owns their lifecycle).
	Keys  *apikeys.Store
	Admin *adminauth.Auth
	// Claude: the account scheduler, the Anthropic upstream client, the
	// OAuth flow and the token keeper. Without Scheduler and Anthropic the
	// Anthropic routes answer 503.
	Scheduler    *accounts.Scheduler
	Anthropic    *anthropic.Client
	ClaudeOAuth  *anthropic.OAuth
	ClaudeTokens ClaudeTokens
	// VS serves the OpenAI-compatible routes; without it they answer 503.
	VS *VerticalStudio
	// Gemini: the upstream client (native API and Code Assist), the Google
	// OAuth flow and the token keeper for Google OAuth accounts (the same
	// keeper as Claude's serves). Without Scheduler and Gemini the /gemini
	// routes answer 503.
	Gemini       *gemini.Client
	GeminiOAuth  *gemini.OAuth
	GeminiTokens ClaudeTokens
	// Images serves POST /v1/images/generations; without it that answers 503.
	Images *Images
}

// Server is the HTTP server. Start it once; Stop it once or more.
type Server struct {
	cfg     config.Config
	log     zerolog.Logger
	rdb     redis.UniversalClient
	metrics *metrics.Metrics
	health  []HealthCheck
	usage   UsageRecorder
	started time.Time
	keys    *apikeys.Store
	admin   *adminauth.Auth
	vs      *VerticalStudio
	images  *Images

	sched        *accounts.Scheduler
	anthropic    *anthropic.Client
	claudeOAuth  *anthropic.OAuth
	claudeTokens ClaudeTokens

	gemini       *gemini.Client
	geminiOAuth  *gemini.OAuth
	geminiTokens ClaudeTokens

	app *fiber.App

	// base is the parent of every request's upstream context. Stop cancels it
	// once open streams have had their time to finish.
	base       context.Context
	cancelBase context.CancelFunc

	mu       sync.Mutex
	ln       net.Listener
	serveErr chan error
	stopOnce sync.Once
}

// New builds the server and its routes.
func New(d Deps) *Server {
	base, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg: d.Config, log: d.Log, rdb: d.Redis, metrics: d.Metrics, health: d.Health, usage: d.Usage,
		started: time.Now(), base: base, cancelBase: cancel,
	}
	s.keys, s.admin = d.Keys, d.Admin
	s.sched, s.anthropic, s.claudeOAuth, s.claudeTokens = d.Scheduler, d.Anthropic, d.ClaudeOAuth, d.ClaudeTokens
	s.vs = d.VS
	s.gemini, s.geminiOAuth, s.geminiTokens = d.Gemini, d.GeminiOAuth, d.GeminiTokens
	s.images = d.Images
	if s.keys == nil && d.Redis != nil {
		s.keys = apikeys.NewStore(d.Redis, keyspace.New(d.Config.Redis.KeyPrefix), apikeys.Options{
			Prefix: d.Config.APIKeyPrefix, CacheTTL: d.Config.KeyCacheTTL, Log: d.Log})
	}
	if s.admin == nil && d.Redis != nil {
		s.admin = adminauth.New(d.Redis, keyspace.New(d.Config.Redis.KeyPrefix), adminauth.Options{
			Secret: d.Config.JWTSecret, Log: d.Log})
	}
	s.app = fiber.New(fiber.Config{
		AppName:               "relay",
		DisableStartupMessage: true,
		BodyLimit:             d.Config.MaxBodyBytes,
		ErrorHandler:          s.handleError,
		ReadTimeout:           2 * time.Minute, // a request must arrive in this time; responses (streams) are not bounded
		IdleTimeout:           90 * time.Second,
		ReadBufferSize:        8 << 10, // Claude Code sends many headers
		// Handlers copy what they keep beyond the request (stream writers run
		// after the handler returned, on a reused context).
		Immutable: false,
		// Behind a trusted load balancer the client is the one it names.
		EnableTrustedProxyCheck: len(d.Config.TrustedProxies) > 0,
		TrustedProxies:          d.Config.TrustedProxies,
		ProxyHeader:             proxyHeader(d.Config.TrustedProxies),
		EnableIPValidation:      true,
	})
	s.app.Server().Handler = knownMethods(s.app.Server().Handler)
	s.routes()
	return s
}

func proxyHeader(trusted []string) string {
	if len(trusted) == 0 {
		return ""
	}
	return fiber.HeaderXForwardedFor
}

// App exposes the Fiber app, for tests that drive it in-process.
func (s *Server) App() *fiber.App { return s.app }

func (s *Server) routes() {
	s.app.Use(s.observe)
	s.app.Get("/health", s.handleHealth)
	s.app.Get("/metrics", s.handleMetrics())
	s.keyInfoRoutes()
	s.anthropicRoutes()
	s.geminiRoutes()
	s.openAIRoutes()
	s.imageRoutes()
	s.webRoutes()
	s.adminRoutes()
}

// Start listens on HOST:PORT and serves in the background. It returns once
// the port is bound, or the error that prevented it.
func (s *Server) Start(ctx context.Context) error {
	addr := net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	return s.Serve(ln)
}

// Serve serves on ln in the background (tests pass a listener on port 0).
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("ingress: already started")
	}
	s.ln = ln
	s.serveErr = make(chan error, 1)
	go func() { s.serveErr <- s.app.Listener(ln) }()
	s.log.Info().Str("addr", ln.Addr().String()).Msg("listening")
	return nil
}

// Addr is the address the server listens on, once started.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Stop stops accepting connections, lets open requests and streams finish for
// up to SHUTDOWN_TIMEOUT, then cancels what is left. It is idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		started := s.ln != nil
		s.mu.Unlock()
		if !started {
			s.cancelBase()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.ShutdownTimeout)
		defer cancel()
		if err := s.app.ShutdownWithContext(ctx); err != nil {
			s.log.Warn().Err(err).Msg("open requests did not finish in time; cancelling them")
		}
		s.cancelBase()
		// Streams that were cancelled end within moments; give them that.
		force, cancelForce := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancelForce()
		_ = s.app.ShutdownWithContext(force)
		select {
		case <-s.serveErr:
		case <-force.Done():
		}
		s.log.Info().Msg("http server stopped")
	})
}

func (s *Server) handleHealth(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	services := fiber.Map{}
	healthy := true
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		services["redis"] = "disconnected: " + err.Error()
		healthy = false
	} else {
		services["redis"] = "connected"
	}
	for _, h := range s.health {
		state, ok := h.Check(ctx)
		services[h.Name] = state
		healthy = healthy && ok
	}
	status, code := "ok", fiber.StatusOK
	if !healthy {
		status, code = "degraded", fiber.StatusServiceUnavailable
	}
	return c.Status(code).JSON(fiber.Map{
		"status":    status,
		"timestamp": time.Now().UTC().Format(time.RFC3339),
		"uptime":    int64(time.Since(s.started).Seconds()),
		"services":  services,
	})
}

func (s *Server) handleMetrics() fiber.Handler {
	h := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(s.metrics.Registry, promhttp.HandlerOpts{}))
	return func(c *fiber.Ctx) error {
		h(c.Context())
		return nil
	}
}
