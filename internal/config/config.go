// Package config reads the relay's configuration from the environment.
//
// Every value is validated when the process starts. A missing or malformed
// value is reported as one error that names the variable, and the process
// stops; nothing is read from the environment after Load returns.
package config

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Config is everything the relay reads from its environment.
type Config struct {
	Host      string // HOST
	Port      int    // PORT
	LogLevel  string // LOG_LEVEL: trace, debug, info, warn, error
	LogFormat string // LOG_FORMAT: json, console, or auto (console on a terminal)
	PublicURL string // PUBLIC_URL: absolute base URL for links the relay hands out

	Redis Redis

	JWTSecret     string // JWT_SECRET
	EncryptionKey string // ENCRYPTION_KEY
	// GeneratedSecrets names the secrets that were generated for this process
	// because none was configured (embedded Redis only).
	GeneratedSecrets []string

	AdminUsername string // ADMIN_USERNAME
	AdminPassword string // ADMIN_PASSWORD

	APIKeyPrefix string // API_KEY_PREFIX

	ShutdownTimeout   time.Duration // SHUTDOWN_TIMEOUT: how long open streams may drain
	StreamHeartbeat   time.Duration // STREAM_HEARTBEAT: comment line during upstream silence
	MaxBodyBytes      int           // MAX_BODY_BYTES: largest request body accepted
	KeyCacheTTL       time.Duration // KEY_CACHE_TTL: in-process cache of key lookups
	WorkerConcurrency int           // WORKER_CONCURRENCY: handlers per stream pool
	// WorkerVisibility is how long a stream entry may sit unacknowledged with
	// a consumer that stopped renewing it (a crashed process) before another
	// consumer takes it over (WORKER_VISIBILITY_TIMEOUT).
	WorkerVisibility time.Duration

	VS VerticalStudio

	PricingFile string // PRICING_FILE: JSON that overrides the shipped prices

	// PprofAddr serves Go's pprof profiles on this loopback address
	// (PPROF_ADDR, e.g. 127.0.0.1:6060); empty, the default, serves none.
	PprofAddr string

	// TrustedProxies are the load balancers whose X-Forwarded-For names the
	// client (TRUSTED_PROXIES: comma-separated IPs or CIDRs). Without them the
	// client is the connection's peer.
	TrustedProxies []string

	Claude   Claude
	Accounts Accounts
	Gemini   Gemini
}

// Gemini configures the Gemini upstreams (the native API for API-key
// accounts, Code Assist for Google OAuth accounts) and the Google OAuth
// flow. The defaults are Gemini CLI's public OAuth client.
type Gemini struct {
	BaseURL           string        // GEMINI_BASE_URL: default native API upstream for API-key accounts
	CodeAssistURL     string        // CODE_ASSIST_BASE_URL: default Code Assist upstream for OAuth accounts
	OAuthClientID     string        // GEMINI_OAUTH_CLIENT_ID
	OAuthClientSecret string        // GEMINI_OAUTH_CLIENT_SECRET (an installed-app client's, public by design)
	OAuthAuthorizeURL string        // GEMINI_OAUTH_AUTHORIZE_URL
	OAuthTokenURL     string        // GEMINI_OAUTH_TOKEN_URL
	OAuthRedirectURL  string        // GEMINI_OAUTH_REDIRECT_URL: a page that shows the code to paste back
	OAuthScopes       string        // GEMINI_OAUTH_SCOPES: space-separated
	UpstreamTimeout   time.Duration // GEMINI_TIMEOUT: longest an upstream request (incl. a whole stream) may take
}

// Claude configures the Anthropic upstream and the Claude OAuth flow. The
// OAuth endpoints are overridable so tests and self-hosted gateways can
// point them elsewhere.
type Claude struct {
	BaseURL           string        // ANTHROPIC_BASE_URL: default upstream for OAuth and Console accounts
	OAuthClientID     string        // CLAUDE_OAUTH_CLIENT_ID
	OAuthAuthorizeURL string        // CLAUDE_OAUTH_AUTHORIZE_URL
	OAuthTokenURL     string        // CLAUDE_OAUTH_TOKEN_URL
	OAuthRedirectURL  string        // CLAUDE_OAUTH_REDIRECT_URL
	OAuthScopes       string        // CLAUDE_OAUTH_SCOPES: space-separated
	RefreshLead       time.Duration // CLAUDE_TOKEN_REFRESH_LEAD: refresh an access token this long before it expires
	RefreshInterval   time.Duration // CLAUDE_TOKEN_REFRESH_INTERVAL: how often the refresher looks for tokens near expiry
	UpstreamTimeout   time.Duration // ANTHROPIC_TIMEOUT: longest an upstream request (incl. a whole stream) may take
}

// Accounts configures upstream-account scheduling (shared by every service).
type Accounts struct {
	StickyTTL        time.Duration // STICKY_SESSION_TTL: how long a conversation stays on its account after its last request
	MaxPause         time.Duration // ACCOUNT_MAX_PAUSE: cap on any automatic pause or rate limit (a weekly reset must not take an account away for days)
	OverloadPause    time.Duration // ACCOUNT_OVERLOAD_PAUSE: pause after an upstream 529
	ErrorPause       time.Duration // ACCOUNT_ERROR_PAUSE: pause after an upstream 5xx or a connection failure
	RateLimitDefault time.Duration // ACCOUNT_RATE_LIMIT_DEFAULT: rate limit after a 429 that names no reset time
	SyncInterval     time.Duration // ACCOUNT_SYNC_INTERVAL: how stale a replica's view of the accounts may get
	MaxAttempts      int           // ACCOUNT_MAX_ATTEMPTS: accounts tried for one request before giving up
}

// Redis says where the relay keeps its state.
type Redis struct {
	URL       string // REDIS_URL (redis:// or rediss://); wins over the parts below
	Host      string // REDIS_HOST
	Port      int    // REDIS_PORT
	Password  string // REDIS_PASSWORD
	DB        int    // REDIS_DB
	TLS       bool   // REDIS_ENABLE_TLS
	KeyPrefix string // REDIS_KEY_PREFIX: every key the relay writes starts with it
}

// Embedded reports whether no Redis was configured, so the relay runs an
// in-process one that keeps nothing across restarts.
func (r Redis) Embedded() bool { return r.URL == "" && r.Host == "" }

// VerticalStudio configures the upstream behind the OpenAI-compatible routes.
type VerticalStudio struct {
	Email           string        // VS_EMAIL
	Password        string        // VS_PASSWORD
	BaseURL         string        // VS_BASE_URL
	RefreshInterval time.Duration // VS_REFRESH_INTERVAL: log in again this long after the last login
	ModelMapping    string        // VS_MODEL_MAPPING: JSON object, or a path to a JSON file
	ImageMapping    string        // VS_IMAGE_MODEL_MAPPING: JSON object, or a path to a JSON file
	HistoryChars    int           // VS_HISTORY_CHARS: transcript cap sent upstream
	ImageTimeout    time.Duration // IMAGE_TIMEOUT: how long an image request waits for its jobs
	MaxBodyBytes    int           // VS_MAX_BODY_BYTES: largest /v1/chat/completions body accepted
}

// Enabled reports whether Vertical Studio credentials were given.
func (v VerticalStudio) Enabled() bool { return v.Email != "" && v.Password != "" }

// Load reads the configuration through getenv (os.Getenv in production).
func Load(getenv func(string) string) (Config, error) {
	e := env{get: getenv}
	c := Config{
		Host:      e.str("HOST", "0.0.0.0"),
		Port:      e.port("PORT", 7860),
		LogLevel:  e.oneOf("LOG_LEVEL", "info", "trace", "debug", "info", "warn", "error"),
		LogFormat: e.oneOf("LOG_FORMAT", "auto", "auto", "json", "console"),
		PublicURL: e.absURL("PUBLIC_URL"),
		Redis: Redis{
			URL:       e.redisURL("REDIS_URL"),
			Host:      e.str("REDIS_HOST", ""),
			Port:      e.port("REDIS_PORT", 6379),
			Password:  e.str("REDIS_PASSWORD", ""),
			DB:        e.intRange("REDIS_DB", 0, 0, 15),
			TLS:       e.boolean("REDIS_ENABLE_TLS", false),
			KeyPrefix: e.str("REDIS_KEY_PREFIX", "relay:"),
		},
		JWTSecret:         e.str("JWT_SECRET", ""),
		EncryptionKey:     e.str("ENCRYPTION_KEY", ""),
		AdminUsername:     e.str("ADMIN_USERNAME", "admin"),
		AdminPassword:     e.str("ADMIN_PASSWORD", ""),
		APIKeyPrefix:      e.keyPrefix("API_KEY_PREFIX", "cr_"),
		ShutdownTimeout:   e.duration("SHUTDOWN_TIMEOUT", 30*time.Second),
		StreamHeartbeat:   e.duration("STREAM_HEARTBEAT", 5*time.Second),
		MaxBodyBytes:      e.intRange("MAX_BODY_BYTES", 32<<20, 1<<10, 1<<30),
		KeyCacheTTL:       e.duration("KEY_CACHE_TTL", 500*time.Millisecond),
		WorkerConcurrency: e.intRange("WORKER_CONCURRENCY", 16, 1, 1024),
		WorkerVisibility:  e.duration("WORKER_VISIBILITY_TIMEOUT", 30*time.Second),
		VS: VerticalStudio{
			Email:           e.str("VS_EMAIL", ""),
			Password:        e.str("VS_PASSWORD", ""),
			BaseURL:         e.absURLDefault("VS_BASE_URL", "https://app.verticalstudio.ai"),
			RefreshInterval: e.duration("VS_REFRESH_INTERVAL", 2*time.Hour),
			ModelMapping:    e.str("VS_MODEL_MAPPING", ""),
			ImageMapping:    e.str("VS_IMAGE_MODEL_MAPPING", ""),
			HistoryChars:    e.intRange("VS_HISTORY_CHARS", 100_000, 1_000, 10_000_000),
			ImageTimeout:    e.duration("IMAGE_TIMEOUT", 120*time.Second),
			MaxBodyBytes:    e.intRange("VS_MAX_BODY_BYTES", 4<<20, 1<<10, 1<<30),
		},
		PricingFile:    e.str("PRICING_FILE", ""),
		PprofAddr:      e.str("PPROF_ADDR", ""),
		TrustedProxies: e.proxies("TRUSTED_PROXIES"),
		Claude: Claude{
			BaseURL:           e.absURLDefault("ANTHROPIC_BASE_URL", "https://api.anthropic.com"),
			OAuthClientID:     e.str("CLAUDE_OAUTH_CLIENT_ID", "9d1c250a-e61b-44d9-88ed-5944d1962f5e"),
			OAuthAuthorizeURL: e.absURLDefault("CLAUDE_OAUTH_AUTHORIZE_URL", "https://claude.ai/oauth/authorize"),
			OAuthTokenURL:     e.absURLDefault("CLAUDE_OAUTH_TOKEN_URL", "https://platform.claude.com/v1/oauth/token"),
			OAuthRedirectURL:  e.absURLDefault("CLAUDE_OAUTH_REDIRECT_URL", "https://platform.claude.com/oauth/code/callback"),
			OAuthScopes: e.str("CLAUDE_OAUTH_SCOPES",
				"org:create_api_key user:profile user:inference user:sessions:claude_code user:mcp_servers user:file_upload"),
			RefreshLead:     e.duration("CLAUDE_TOKEN_REFRESH_LEAD", 5*time.Minute),
			RefreshInterval: e.duration("CLAUDE_TOKEN_REFRESH_INTERVAL", time.Minute),
			UpstreamTimeout: e.duration("ANTHROPIC_TIMEOUT", 10*time.Minute),
		},
		Gemini: Gemini{
			BaseURL:           e.absURLDefault("GEMINI_BASE_URL", "https://generativelanguage.googleapis.com"),
			CodeAssistURL:     e.absURLDefault("CODE_ASSIST_BASE_URL", "https://cloudcode-pa.googleapis.com"),
			OAuthClientID:     e.str("GEMINI_OAUTH_CLIENT_ID", "681255809395-oo8ft2oprdrnp9e3aqf6av3hmdib135j.apps.googleusercontent.com"),
			OAuthClientSecret: e.str("GEMINI_OAUTH_CLIENT_SECRET", "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"),
			OAuthAuthorizeURL: e.absURLDefault("GEMINI_OAUTH_AUTHORIZE_URL", "https://accounts.google.com/o/oauth2/v2/auth"),
			OAuthTokenURL:     e.absURLDefault("GEMINI_OAUTH_TOKEN_URL", "https://oauth2.googleapis.com/token"),
			OAuthRedirectURL:  e.absURLDefault("GEMINI_OAUTH_REDIRECT_URL", "https://codeassist.google.com/authcode"),
			OAuthScopes: e.str("GEMINI_OAUTH_SCOPES", "https://www.googleapis.com/auth/cloud-platform "+
				"https://www.googleapis.com/auth/userinfo.email https://www.googleapis.com/auth/userinfo.profile"),
			UpstreamTimeout: e.duration("GEMINI_TIMEOUT", 10*time.Minute),
		},
		Accounts: Accounts{
			StickyTTL:        e.duration("STICKY_SESSION_TTL", time.Hour),
			MaxPause:         e.duration("ACCOUNT_MAX_PAUSE", 30*time.Minute),
			OverloadPause:    e.duration("ACCOUNT_OVERLOAD_PAUSE", time.Minute),
			ErrorPause:       e.duration("ACCOUNT_ERROR_PAUSE", 30*time.Second),
			RateLimitDefault: e.duration("ACCOUNT_RATE_LIMIT_DEFAULT", time.Minute),
			SyncInterval:     e.duration("ACCOUNT_SYNC_INTERVAL", time.Second),
			MaxAttempts:      e.intRange("ACCOUNT_MAX_ATTEMPTS", 3, 1, 20),
		},
	}
	if e.err != nil {
		return Config{}, e.err
	}
	if (c.VS.Email == "") != (c.VS.Password == "") {
		return Config{}, fmt.Errorf("VS_EMAIL and VS_PASSWORD: set both or neither")
	}
	if c.KeyCacheTTL > time.Second {
		return Config{}, fmt.Errorf("KEY_CACHE_TTL: at most 1s, so a revoked key stops working within a second")
	}
	if err := c.secrets(); err != nil {
		return Config{}, err
	}
	if err := loopbackAddr(c.PprofAddr); err != nil {
		return Config{}, fmt.Errorf("PPROF_ADDR: %w", err)
	}
	return c, nil
}

// secrets checks JWT_SECRET and ENCRYPTION_KEY. With a real Redis they must be
// set, since sessions and encrypted credentials outlive the process; with the
// embedded one, nothing outlives it, so missing ones are generated.
func (c *Config) secrets() error {
	for _, s := range []struct {
		name string
		val  *string
	}{{"JWT_SECRET", &c.JWTSecret}, {"ENCRYPTION_KEY", &c.EncryptionKey}} {
		switch {
		case *s.val == "" && c.Redis.Embedded():
			*s.val = randomHex(32)
			c.GeneratedSecrets = append(c.GeneratedSecrets, s.name)
		case *s.val == "":
			return fmt.Errorf("%s: required when Redis is configured (at least 32 characters)", s.name)
		case len(*s.val) < 32:
			return fmt.Errorf("%s: must be at least 32 characters", s.name)
		}
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error()) // the platform has no entropy: nothing safe can run
	}
	return hex.EncodeToString(b)
}

// env reads variables and keeps the first error, naming its variable.
type env struct {
	get func(string) string
	err error
}

func (e *env) fail(name, format string, args ...any) {
	if e.err == nil {
		e.err = fmt.Errorf("%s: %s", name, fmt.Sprintf(format, args...))
	}
}

func (e *env) str(name, def string) string {
	if v := strings.TrimSpace(e.get(name)); v != "" {
		return v
	}
	return def
}

func (e *env) intRange(name string, def, lo, hi int) int {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		e.fail(name, "%q is not a whole number from %d to %d", v, lo, hi)
		return def
	}
	return n
}

func (e *env) port(name string, def int) int { return e.intRange(name, def, 1, 65535) }

func (e *env) boolean(name string, def bool) bool {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.fail(name, "%q is not true or false", v)
		return def
	}
	return b
}

func (e *env) duration(name string, def time.Duration) time.Duration {
	v := e.str(name, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		e.fail(name, "%q is not a positive duration such as 30s or 5m", v)
		return def
	}
	return d
}

func (e *env) oneOf(name, def string, allowed ...string) string {
	v := strings.ToLower(e.str(name, def))
	for _, a := range allowed {
		if v == a {
			return v
		}
	}
	e.fail(name, "%q is not one of %s", v, strings.Join(allowed, ", "))
	return def
}

func (e *env) absURLDefault(name, def string) string {
	if v := e.absURL(name); v != "" {
		return v
	}
	return def
}

func (e *env) absURL(name string) string {
	v := e.str(name, "")
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		e.fail(name, "%q is not an absolute http(s) URL", v)
		return ""
	}
	return strings.TrimRight(v, "/")
}

func (e *env) redisURL(name string) string {
	v := e.str(name, "")
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		// Never echo the value: a Redis URL usually carries a password.
		e.fail(name, "not a redis:// or rediss:// URL")
		return ""
	}
	return v
}

func (e *env) proxies(name string) []string {
	var out []string
	for _, p := range strings.Split(e.str(name, ""), ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if _, _, err := net.ParseCIDR(p); err != nil && net.ParseIP(p) == nil {
			e.fail(name, "%q is not an IP address or CIDR", p)
			return nil
		}
		out = append(out, p)
	}
	return out
}

func (e *env) keyPrefix(name, def string) string {
	v := e.str(name, def)
	for _, r := range v {
		if !(r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			e.fail(name, "%q may hold only letters, digits, '_' and '-'", v)
			return def
		}
	}
	if len(v) > 16 {
		e.fail(name, "%q is longer than 16 characters", v)
		return def
	}
	return v
}

// loopbackAddr checks that addr, when set, is host:port on a loopback
// address: profiles show internals and must not be reachable from outside.
func loopbackAddr(addr string) error {
	if addr == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return fmt.Errorf("%q is not host:port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address (use 127.0.0.1:<port>)", addr)
	}
	return nil
}
