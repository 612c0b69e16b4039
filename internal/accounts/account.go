// Package accounts holds the upstream accounts the relay serves requests
// with, and the scheduler that picks one for each request.
//
// Accounts of every upstream kind (Claude OAuth and Console today, Gemini
// later) live in one store in Redis. Their credentials are sealed with
// secretbox under a purpose bound to the account id and are never part of
// the record the admin API returns. The scheduler keeps a conversation on
// its account (sticky sessions), honours a key's binding to an account,
// otherwise picks by priority then least recently used, and skips accounts
// that are rate-limited, paused or waiting for re-authorization. Every
// automatic state carries its reason and, except re-authorization, an end
// time after which the account serves again by itself.
package accounts

import (
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Kind is an account's upstream kind.
type Kind string

// The upstream kinds.
const (
	KindClaudeOAuth   Kind = "claude-oauth"   // Claude subscription via OAuth tokens
	KindClaudeConsole Kind = "claude-console" // an Anthropic-compatible base URL and API key
	KindGeminiOAuth   Kind = "gemini-oauth"   // Google OAuth (Gemini CLI / Code Assist)
	KindGeminiAPI     Kind = "gemini-api"     // a Gemini API key
)

// Service is the client-facing service (a key permission) an account of
// this kind serves.
func (k Kind) Service() string {
	switch k {
	case KindClaudeOAuth, KindClaudeConsole:
		return "claude"
	case KindGeminiOAuth, KindGeminiAPI:
		return "gemini"
	}
	return ""
}

// OAuth reports whether the kind authenticates with refreshable OAuth tokens.
func (k Kind) OAuth() bool { return k == KindClaudeOAuth || k == KindGeminiOAuth }

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k.Service() != "" }

// Account is an upstream account as the admin API shows it: never its
// credentials.
type Account struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Kind        Kind   `json:"kind"`

	// Priority orders the pool: lower is preferred (1 to 100, default 50).
	Priority int `json:"priority"`
	// Enabled is the administrator's on/off switch.
	Enabled bool `json:"enabled"`
	// Schedulable is false while an administrator has paused the account.
	Schedulable bool   `json:"schedulable"`
	PauseNote   string `json:"pause_note,omitempty"`
	// Models the account serves; empty means any. An entry ending in '*'
	// matches by prefix.
	Models []string `json:"models,omitempty"`
	// BaseURL is the upstream base URL (Console and API-key kinds); empty
	// means the configured default.
	BaseURL string `json:"base_url,omitempty"`
	// Proxy is the outbound proxy, with any password masked.
	Proxy string `json:"proxy,omitempty"`

	// OAuth identity (not secret) and token expiry.
	Email          string    `json:"email,omitempty"`
	Organization   string    `json:"organization,omitempty"`
	Scopes         string    `json:"scopes,omitempty"`
	TokenExpiresAt time.Time `json:"token_expires_at,omitzero"`
	// Project is a Google OAuth account's Code Assist project (discovered
	// at sign-in or on first use, or set by an administrator).
	Project string `json:"project,omitempty"`

	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`

	State      State     `json:"state"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

// State is what the relay learned about an account from the upstream.
type State struct {
	RateLimitedUntil time.Time `json:"rate_limited_until,omitzero"`
	RateLimitReason  string    `json:"rate_limit_reason,omitempty"`
	PausedUntil      time.Time `json:"paused_until,omitzero"`
	PauseReason      string    `json:"pause_reason,omitempty"`
	NeedsReauth      bool      `json:"needs_reauth,omitempty"`
	ReauthReason     string    `json:"reauth_reason,omitempty"`
	ReauthSince      time.Time `json:"reauth_since,omitzero"`
	LastError        string    `json:"last_error,omitempty"`
	LastErrorAt      time.Time `json:"last_error_at,omitzero"`
}

// Status names what the account is doing at now: active, disabled, paused
// (by an administrator), rate_limited, overloaded (an automatic pause) or
// needs_reauth.
func (a *Account) Status(now time.Time) string {
	switch {
	case !a.Enabled:
		return "disabled"
	case !a.Schedulable:
		return "paused"
	case a.State.NeedsReauth:
		return "needs_reauth"
	case a.State.RateLimitedUntil.After(now):
		return "rate_limited"
	case a.State.PausedUntil.After(now):
		return "overloaded"
	}
	return "active"
}

// Serves reports whether the account serves model.
func (a *Account) Serves(model string) bool {
	if len(a.Models) == 0 {
		return true
	}
	for _, m := range a.Models {
		if p, ok := strings.CutSuffix(m, "*"); ok {
			if strings.HasPrefix(model, p) {
				return true
			}
		} else if m == model {
			return true
		}
	}
	return false
}

// Credentials are an account's secrets. They are stored sealed and only the
// upstream clients and the token refresher see them.
type Credentials struct {
	APIKey       string `json:"api_key,omitempty"`
	AccessToken  string `json:"access_token,omitempty"`
	RefreshToken string `json:"refresh_token,omitempty"`
	// Proxy is the outbound proxy URL, which may carry a password.
	Proxy string `json:"proxy,omitempty"`
}

// Empty reports whether no credential is set.
func (c Credentials) Empty() bool {
	return c.APIKey == "" && c.AccessToken == "" && c.RefreshToken == ""
}

// CheckProxy validates an outbound proxy URL: http, https, socks5 or
// socks5h with a host and port.
func CheckProxy(raw string) error {
	if raw == "" {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Port() == "" {
		return fmt.Errorf("proxy must be a URL such as socks5://host:1080 or http://user:pass@host:8080")
	}
	switch u.Scheme {
	case "http", "https", "socks5", "socks5h":
		return nil
	}
	return fmt.Errorf("proxy scheme %q is not supported (use http, https, socks5 or socks5h)", u.Scheme)
}

// MaskProxy is the proxy URL with its password replaced, for display.
func MaskProxy(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid)"
	}
	if u.User != nil {
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "****")
		}
	}
	return u.String()
}
