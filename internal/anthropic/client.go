package anthropic

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/relaydev/relay/internal/outbound"
)

// OAuthBeta is the anthropic-beta value the Messages API requires with an
// OAuth access token.
const OAuthBeta = "oauth-2025-04-20"

// DefaultVersion is sent as anthropic-version when a client sends none.
const DefaultVersion = "2023-06-01"

// Target is the account a request goes to.
type Target struct {
	BaseURL     string // empty: the client's default
	APIKey      string // Console: sent as x-api-key
	BearerToken string // OAuth: sent as Authorization: Bearer, with the OAuth beta
	Proxy       string // outbound proxy URL (http, https, socks5, socks5h); empty: direct
}

// Client sends requests to Anthropic-compatible upstreams. Connections are
// pooled per proxy. It is safe for concurrent use.
type Client struct {
	baseURL string
	conns   *outbound.Pool
}

// NewClient makes a client whose default upstream is baseURL. timeout bounds
// the wait for response headers (a stream's body may run longer; the caller
// bounds it with its context).
func NewClient(baseURL string, timeout time.Duration) *Client {
	return &Client{baseURL: strings.TrimRight(baseURL, "/"), conns: outbound.NewPool(timeout)}
}

// BaseURL is the client's default upstream.
func (c *Client) BaseURL() string { return c.baseURL }

// Close drops idle upstream connections.
func (c *Client) Close() { c.conns.Close() }

// forwarded lists the client headers that go upstream; everything else
// (the client's own credentials, hop-by-hop and proxy headers, cookies,
// Accept-Encoding) stays behind.
func forwarded(name string) bool {
	switch strings.ToLower(name) {
	case "anthropic-version", "anthropic-beta", "content-type", "accept", "user-agent", "x-app",
		"anthropic-dangerous-direct-browser-access", "x-claude-code-session-id":
		return true
	}
	return len(name) > 12 && strings.EqualFold(name[:12], "x-stainless-")
}

// Forwarded reports whether a client header goes upstream unchanged.
func Forwarded(name string) bool { return forwarded(name) }

// Send sends one request to the target: the client's headers that pass
// (anthropic-version and anthropic-beta among them) and its body unchanged,
// plus what the account needs (its credential; for OAuth the OAuth beta).
// path starts with /v1/; rawQuery is the client's query string.
func (c *Client) Send(ctx context.Context, t Target, method, path, rawQuery string, in http.Header, body []byte) (*http.Response, error) {
	base := t.BaseURL
	if base == "" {
		base = c.baseURL
	}
	u := base + path
	if rawQuery != "" {
		u += "?" + rawQuery
	}
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("build upstream request: %w", err)
	}
	for name, vals := range in {
		if forwarded(name) {
			req.Header[http.CanonicalHeaderKey(name)] = append([]string(nil), vals...)
		}
	}
	if req.Header.Get("anthropic-version") == "" {
		req.Header.Set("anthropic-version", DefaultVersion)
	}
	if req.Header.Get("content-type") == "" && len(body) > 0 {
		req.Header.Set("content-type", "application/json")
	}
	switch {
	case t.BearerToken != "":
		req.Header.Set("Authorization", "Bearer "+t.BearerToken)
		req.Header.Set("anthropic-beta", withBeta(req.Header.Values("anthropic-beta"), OAuthBeta))
	case t.APIKey != "":
		req.Header.Set("x-api-key", t.APIKey)
	}
	tr, err := c.conns.Transport(t.Proxy)
	if err != nil {
		return nil, err
	}
	return tr.RoundTrip(req)
}

// withBeta is the anthropic-beta list with beta appended unless present.
func withBeta(vals []string, beta string) string {
	joined := strings.Join(vals, ",")
	for _, b := range strings.Split(joined, ",") {
		if strings.TrimSpace(b) == beta {
			return joined
		}
	}
	if strings.TrimSpace(joined) == "" {
		return beta
	}
	return joined + "," + beta
}
