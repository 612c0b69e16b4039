// Package gemini speaks Google's Gemini upstreams: the native Gemini API
// (generateContent, streamGenerateContent with alt=sse, countTokens, models)
// with an API key, and the Code Assist API (v1internal:*) that Gemini CLI
// uses, with a Google OAuth bearer token. It converts between the two
// request and response shapes, reads usage from usageMetadata, runs the
// Google OAuth flow and refreshes, and discovers an account's Code Assist
// project (loadCodeAssist, onboardUser).
package gemini

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/relaydev/relay/internal/outbound"
)

// Default upstream base URLs.
const (
	DefaultBaseURL           = "https://generativelanguage.googleapis.com"
	DefaultCodeAssistBaseURL = "https://cloudcode-pa.googleapis.com"
)

// Target is the account a request goes to.
type Target struct {
	BaseURL     string // empty: the client's default for the credential's API
	APIKey      string // native API: sent as x-goog-api-key
	BearerToken string // Code Assist: sent as Authorization: Bearer
	Proxy       string // outbound proxy URL; empty: direct
}

// CodeAssist reports whether the target speaks the Code Assist API.
func (t Target) CodeAssist() bool { return t.APIKey == "" && t.BearerToken != "" }

// Client sends requests to Gemini upstreams. Connections are pooled per
// proxy. It is safe for concurrent use.
type Client struct {
	baseURL, codeAssistURL string
	conns                  *outbound.Pool
}

// NewClient makes a client. baseURL is the default native API upstream,
// codeAssistURL the default Code Assist upstream; timeout bounds the wait
// for response headers.
func NewClient(baseURL, codeAssistURL string, timeout time.Duration) *Client {
	if baseURL == "" {
		baseURL = DefaultBaseURL
	}
	if codeAssistURL == "" {
		codeAssistURL = DefaultCodeAssistBaseURL
	}
	return &Client{baseURL: strings.TrimRight(baseURL, "/"), codeAssistURL: strings.TrimRight(codeAssistURL, "/"),
		conns: outbound.NewPool(timeout)}
}

// Close drops idle upstream connections.
func (c *Client) Close() { c.conns.Close() }

// Send sends one request to the target with its credential: path is the
// upstream path ("/v1beta/models/gemini-2.5-flash:generateContent",
// "/v1internal:loadCodeAssist"), rawQuery the query without a key, body the
// JSON body (nil for GET). userAgent, when set, is passed on.
func (c *Client) Send(ctx context.Context, t Target, method, path, rawQuery string, body []byte, userAgent string) (*http.Response, error) {
	base := t.BaseURL
	if base == "" {
		base = c.baseURL
		if t.CodeAssist() {
			base = c.codeAssistURL
		}
	}
	u := strings.TrimRight(base, "/") + path
	if rawQuery != "" {
		u += "?" + rawQuery
	}
	var rd *bytes.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	var req *http.Request
	var err error
	if rd != nil {
		req, err = http.NewRequestWithContext(ctx, method, u, rd)
	} else {
		req, err = http.NewRequestWithContext(ctx, method, u, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("build upstream request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if userAgent != "" {
		req.Header.Set("User-Agent", userAgent)
	}
	switch {
	case t.APIKey != "":
		req.Header.Set("x-goog-api-key", t.APIKey)
	case t.BearerToken != "":
		req.Header.Set("Authorization", "Bearer "+t.BearerToken)
	}
	tr, err := c.conns.Transport(t.Proxy)
	if err != nil {
		return nil, err
	}
	return tr.RoundTrip(req)
}
