// Package fakeanthropic is a fake Anthropic API for tests and local runs:
// the Messages API (streaming and not) with realistic SSE and usage numbers,
// count_tokens, rate-limit headers, failure modes (429 with a reset time,
// 529, 5xx, 401, an error event in the middle of a stream), and an OAuth
// token endpoint for the authorization_code and refresh_token grants. It
// answers only what the real API would, and counts what it was asked.
package fakeanthropic

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// OAuthBeta is the beta an OAuth access token must be sent with.
const OAuthBeta = "oauth-2025-04-20"

// Mode is how the fake answers one credential's requests.
type Mode struct {
	// Status, when not 0 or 200, answers every Messages request with that
	// status and an Anthropic error body (429, 529, 500, 503, 401, 403...).
	Status int
	// ResetAt is the rate-limit reset a 429 reports in
	// anthropic-ratelimit-unified-reset (and retry-after).
	ResetAt time.Time
	// MidStreamError makes a stream send an error event after its first
	// text delta, then end.
	MidStreamError bool
	// Hold, if set, makes a stream wait after its first text delta until the
	// channel is closed or the client goes away.
	Hold chan struct{}
}

// Usage is the usage the fake reports for every message; output tokens are
// one per text delta.
type Usage struct {
	Input, CacheCreate, CacheRead, Cache5m, Cache1h int64
}

// Call is one request the fake received.
type Call struct {
	Path     string
	Query    string
	Header   http.Header
	Body     []byte
	Cred     string // the API key or access token it carried
	Status   int    // what the fake answered
	Response []byte // the bytes of the response body it wrote
}

// Fake is the fake API. Serve it with httptest.NewServer(f).
type Fake struct {
	// ClientID and RedirectURL are what the token endpoint expects.
	ClientID    string
	RedirectURL string
	// TokenTTL is the lifetime of issued access tokens (default 8 h).
	TokenTTL time.Duration
	// Reply is the text of every answer, sent one word per delta.
	Reply string
	Usage Usage

	mu        sync.Mutex
	creds     map[string]bool      // API keys (false) and access tokens (true)
	modes     map[string]Mode      // per credential
	queued    map[string][]Mode    // one-shot modes, before the persistent one
	codes     map[string]pkceGrant // authorization codes issued
	refresh   map[string]string    // live refresh tokens -> email
	calls     []Call
	messages  int
	counts    int
	exchanges int
	refreshes int
	issued    int
}

type pkceGrant struct {
	challenge, redirect, state, email string
}

// New makes a fake with Claude Code's client id and redirect URL defaults
// and usage numbers that include cache tokens.
func New() *Fake {
	return &Fake{
		ClientID:    "9d1c250a-e61b-44d9-88ed-5944d1962f5e",
		RedirectURL: "https://platform.claude.com/oauth/code/callback",
		TokenTTL:    8 * time.Hour,
		Reply:       "Hello! I am the fake Anthropic upstream, answering word by word.",
		Usage:       Usage{Input: 25, CacheCreate: 12, CacheRead: 340, Cache5m: 12},
		creds:       map[string]bool{},
		modes:       map[string]Mode{},
		queued:      map[string][]Mode{},
		codes:       map[string]pkceGrant{},
		refresh:     map[string]string{},
	}
}

// AddAPIKey makes key a valid x-api-key.
func (f *Fake) AddAPIKey(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creds[key] = false
}

// AddAccessToken makes token a valid OAuth access token.
func (f *Fake) AddAccessToken(token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.creds[token] = true
}

// AddRefreshToken makes token a valid refresh token.
func (f *Fake) AddRefreshToken(token string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refresh[token] = "fake@example.com"
}

// Revoke makes a credential invalid (requests with it get 401).
func (f *Fake) Revoke(cred string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.creds, cred)
	delete(f.refresh, cred)
}

// SetMode sets how requests with cred are answered from now on.
func (f *Fake) SetMode(cred string, m Mode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.modes[cred] = m
}

// Queue makes the next requests with cred answer in these modes, one each,
// before the persistent mode applies again.
func (f *Fake) Queue(cred string, ms ...Mode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.queued[cred] = append(f.queued[cred], ms...)
}

// Calls returns the requests received so far.
func (f *Fake) Calls() []Call {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Call(nil), f.calls...)
}

// Counts are how many requests of each kind the fake received.
type Counts struct {
	Messages, CountTokens, Exchanges, Refreshes int
}

// Counts returns the counters.
func (f *Fake) Counts() Counts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Counts{Messages: f.messages, CountTokens: f.counts, Exchanges: f.exchanges, Refreshes: f.refreshes}
}

// Authorize plays the sign-in page: it checks an authorize URL the way the
// real page does (client, redirect, S256 challenge, state) and returns what
// the page shows the user to paste back: "code#state".
func (f *Fake) Authorize(authorizeURL string) (string, error) {
	u, err := url.Parse(authorizeURL)
	if err != nil {
		return "", err
	}
	q := u.Query()
	switch {
	case q.Get("client_id") != f.ClientID:
		return "", fmt.Errorf("unknown client_id %q", q.Get("client_id"))
	case q.Get("response_type") != "code":
		return "", fmt.Errorf("response_type must be code")
	case q.Get("code_challenge_method") != "S256":
		return "", fmt.Errorf("code_challenge_method must be S256")
	case q.Get("redirect_uri") != f.RedirectURL:
		return "", fmt.Errorf("redirect_uri %q is not registered", q.Get("redirect_uri"))
	case q.Get("state") == "":
		return "", fmt.Errorf("state is required")
	case !strings.Contains(q.Get("scope"), "user:inference"):
		return "", fmt.Errorf("scope must include user:inference")
	}
	ch := q.Get("code_challenge")
	if raw, err := base64.RawURLEncoding.DecodeString(ch); err != nil || len(raw) != sha256.Size {
		return "", fmt.Errorf("code_challenge is not a base64url SHA-256 digest")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.issued++
	code := fmt.Sprintf("fake-code-%d", f.issued)
	f.codes[code] = pkceGrant{challenge: ch, redirect: q.Get("redirect_uri"), state: q.Get("state"),
		email: fmt.Sprintf("user%d@example.com", f.issued)}
	return code + "#" + q.Get("state"), nil
}

// ServeHTTP answers the API.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/v1/messages":
		f.serveMessages(w, r, body)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/messages/count_tokens":
		f.serveCountTokens(w, r, body)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/oauth/token":
		f.serveToken(w, body)
	default:
		writeError(w, http.StatusNotFound, "not_found_error", "Not found")
	}
}

// recorder keeps a copy of what was written, so tests can compare bytes.
type recorder struct {
	http.ResponseWriter
	buf    bytes.Buffer
	status int
}

func (r *recorder) WriteHeader(s int)           { r.status = s; r.ResponseWriter.WriteHeader(s) }
func (r *recorder) Write(b []byte) (int, error) { r.buf.Write(b); return r.ResponseWriter.Write(b) }
func (r *recorder) Flush() {
	if fl, ok := r.ResponseWriter.(http.Flusher); ok {
		fl.Flush()
	}
}

func (f *Fake) record(r *http.Request, body []byte, cred string, rec *recorder) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := rec.status
	if st == 0 {
		st = http.StatusOK
	}
	f.calls = append(f.calls, Call{Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(), Body: body,
		Cred: cred, Status: st, Response: append([]byte(nil), rec.buf.Bytes()...)})
}

// authenticate returns the credential and the mode for it, or writes a 401.
func (f *Fake) authenticate(w http.ResponseWriter, r *http.Request) (string, Mode, bool) {
	cred, oauth := r.Header.Get("x-api-key"), false
	if cred == "" {
		if b, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			cred, oauth = b, true
		}
	}
	f.mu.Lock()
	isToken, known := f.creds[cred]
	var m Mode
	if q := f.queued[cred]; len(q) > 0 {
		m, f.queued[cred] = q[0], q[1:]
	} else {
		m = f.modes[cred]
	}
	f.mu.Unlock()
	switch {
	case cred == "":
		writeError(w, http.StatusUnauthorized, "authentication_error", "x-api-key header is required")
		return cred, m, false
	case !known || isToken != oauth:
		writeError(w, http.StatusUnauthorized, "authentication_error", "invalid x-api-key")
		return cred, m, false
	case oauth && !hasBeta(r.Header.Values("anthropic-beta"), OAuthBeta):
		writeError(w, http.StatusUnauthorized, "authentication_error", "OAuth authentication is currently not supported.")
		return cred, m, false
	}
	return cred, m, true
}

func hasBeta(vals []string, beta string) bool {
	for _, v := range vals {
		for _, b := range strings.Split(v, ",") {
			if strings.TrimSpace(b) == beta {
				return true
			}
		}
	}
	return false
}

func (f *Fake) rateHeaders(w http.ResponseWriter, m Mode) {
	h := w.Header()
	reset := time.Now().Add(5 * time.Hour).Truncate(time.Hour)
	status := "allowed"
	if m.Status == http.StatusTooManyRequests {
		status = "rejected"
		if !m.ResetAt.IsZero() {
			reset = m.ResetAt
			secs := int(time.Until(reset).Seconds() + 0.999)
			if secs < 0 {
				secs = 0
			}
			h.Set("retry-after", strconv.Itoa(secs))
		}
	}
	h.Set("anthropic-ratelimit-requests-limit", "4000")
	h.Set("anthropic-ratelimit-requests-remaining", "3999")
	h.Set("anthropic-ratelimit-requests-reset", time.Now().Add(time.Minute).UTC().Format(time.RFC3339))
	h.Set("anthropic-ratelimit-unified-status", status)
	h.Set("anthropic-ratelimit-unified-reset", strconv.FormatInt(reset.Unix(), 10))
	h.Set("request-id", fmt.Sprintf("req_fake%d", time.Now().UnixNano()))
}

type msgRequest struct {
	Model     string          `json:"model"`
	MaxTokens *int64          `json:"max_tokens"`
	Messages  json.RawMessage `json:"messages"`
	Stream    bool            `json:"stream"`
}

func (f *Fake) serveMessages(w http.ResponseWriter, r *http.Request, body []byte) {
	rec := &recorder{ResponseWriter: w}
	cred := ""
	defer func() { f.record(r, body, cred, rec) }()
	f.mu.Lock()
	f.messages++
	f.mu.Unlock()
	c, m, ok := f.authenticate(rec, r)
	cred = c
	if !ok {
		return
	}
	f.rateHeaders(rec, m)
	if r.Header.Get("anthropic-version") == "" {
		writeError(rec, http.StatusBadRequest, "invalid_request_error", "anthropic-version: header is required")
		return
	}
	var req msgRequest
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(rec, http.StatusBadRequest, "invalid_request_error", "There was an error parsing the body: "+err.Error())
		return
	}
	switch {
	case req.Model == "":
		writeError(rec, http.StatusBadRequest, "invalid_request_error", "model: Field required")
		return
	case req.MaxTokens == nil:
		writeError(rec, http.StatusBadRequest, "invalid_request_error", "max_tokens: Field required")
		return
	case len(req.Messages) == 0:
		writeError(rec, http.StatusBadRequest, "invalid_request_error", "messages: Field required")
		return
	}
	if m.Status != 0 && m.Status != http.StatusOK {
		typ, msg := errorFor(m.Status)
		writeError(rec, m.Status, typ, msg)
		return
	}
	words := strings.SplitAfter(f.Reply, " ")
	id := fmt.Sprintf("msg_fake%d", time.Now().UnixNano())
	if !req.Stream {
		rec.Header().Set("Content-Type", "application/json")
		out, _ := json.Marshal(map[string]any{
			"id": id, "type": "message", "role": "assistant", "model": req.Model,
			"content":     []any{map[string]any{"type": "text", "text": f.Reply}},
			"stop_reason": "end_turn", "stop_sequence": nil,
			"usage": f.usage(int64(len(words))),
		})
		_, _ = rec.Write(out)
		return
	}
	rec.Header().Set("Content-Type", "text/event-stream; charset=utf-8")
	rec.Header().Set("Cache-Control", "no-cache")
	rec.WriteHeader(http.StatusOK)
	send := func(typ string, v any) bool {
		b, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(rec, "event: %s\ndata: %s\n\n", typ, b); err != nil {
			return false
		}
		rec.Flush()
		return true
	}
	start := f.usage(1)
	send("message_start", map[string]any{"type": "message_start", "message": map[string]any{
		"id": id, "type": "message", "role": "assistant", "model": req.Model, "content": []any{},
		"stop_reason": nil, "stop_sequence": nil, "usage": start,
	}})
	send("content_block_start", map[string]any{"type": "content_block_start", "index": 0,
		"content_block": map[string]any{"type": "text", "text": ""}})
	send("ping", map[string]any{"type": "ping"})
	for i, word := range words {
		if !send("content_block_delta", map[string]any{"type": "content_block_delta", "index": 0,
			"delta": map[string]any{"type": "text_delta", "text": word}}) {
			return
		}
		if i == 0 && m.Hold != nil {
			select {
			case <-m.Hold:
			case <-r.Context().Done():
				return
			}
		}
		if i == 0 && m.MidStreamError {
			send("error", map[string]any{"type": "error", "error": map[string]any{
				"type": "overloaded_error", "message": "Overloaded"}})
			return
		}
	}
	send("content_block_stop", map[string]any{"type": "content_block_stop", "index": 0})
	send("message_delta", map[string]any{"type": "message_delta",
		"delta": map[string]any{"stop_reason": "end_turn", "stop_sequence": nil},
		"usage": f.usage(int64(len(words)))})
	send("message_stop", map[string]any{"type": "message_stop"})
}

func (f *Fake) usage(output int64) map[string]any {
	return map[string]any{
		"input_tokens":                f.Usage.Input,
		"cache_creation_input_tokens": f.Usage.CacheCreate,
		"cache_read_input_tokens":     f.Usage.CacheRead,
		"cache_creation": map[string]any{
			"ephemeral_5m_input_tokens": f.Usage.Cache5m,
			"ephemeral_1h_input_tokens": f.Usage.Cache1h,
		},
		"output_tokens": output,
		"service_tier":  "standard",
	}
}

func (f *Fake) serveCountTokens(w http.ResponseWriter, r *http.Request, body []byte) {
	rec := &recorder{ResponseWriter: w}
	cred := ""
	defer func() { f.record(r, body, cred, rec) }()
	f.mu.Lock()
	f.counts++
	f.mu.Unlock()
	c, m, ok := f.authenticate(rec, r)
	cred = c
	if !ok {
		return
	}
	f.rateHeaders(rec, m)
	var req msgRequest
	if err := json.Unmarshal(body, &req); err != nil || req.Model == "" || len(req.Messages) == 0 {
		writeError(rec, http.StatusBadRequest, "invalid_request_error", "model and messages are required")
		return
	}
	if m.Status != 0 && m.Status != http.StatusOK {
		typ, msg := errorFor(m.Status)
		writeError(rec, m.Status, typ, msg)
		return
	}
	rec.Header().Set("Content-Type", "application/json")
	n := int64(len(req.Messages))/4 + 1
	_, _ = fmt.Fprintf(rec, `{"input_tokens":%d}`, n)
}

func (f *Fake) serveToken(w http.ResponseWriter, body []byte) {
	var req map[string]string
	if json.Unmarshal(body, &req) != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request", "Invalid request format")
		return
	}
	if req["client_id"] != f.ClientID {
		tokenError(w, http.StatusBadRequest, "invalid_client", "Invalid client")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var email string
	switch req["grant_type"] {
	case "authorization_code":
		f.exchanges++
		g, ok := f.codes[req["code"]]
		if !ok {
			tokenError(w, http.StatusBadRequest, "invalid_grant", "Invalid 'code' in request.")
			return
		}
		delete(f.codes, req["code"])
		sum := sha256.Sum256([]byte(req["code_verifier"]))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
			tokenError(w, http.StatusBadRequest, "invalid_grant", "Invalid code verifier")
			return
		}
		if req["redirect_uri"] != g.redirect || req["state"] != g.state {
			tokenError(w, http.StatusBadRequest, "invalid_grant", "redirect_uri or state does not match")
			return
		}
		email = g.email
	case "refresh_token":
		f.refreshes++
		e, ok := f.refresh[req["refresh_token"]]
		if !ok {
			tokenError(w, http.StatusBadRequest, "invalid_grant", "Refresh token not found or invalid")
			return
		}
		delete(f.refresh, req["refresh_token"]) // rotation: a refresh token is spent once
		email = e
	default:
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "Unsupported grant type")
		return
	}
	f.issued++
	access := fmt.Sprintf("sk-ant-oat01-fake-%d", f.issued)
	refresh := fmt.Sprintf("sk-ant-ort01-fake-%d", f.issued)
	f.creds[access] = true
	f.refresh[refresh] = email
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"token_type": "Bearer", "access_token": access, "refresh_token": refresh,
		"expires_in": int64(f.TokenTTL / time.Second), "scope": "user:inference user:profile",
		"account":      map[string]any{"uuid": "acct-" + email, "email_address": email},
		"organization": map[string]any{"uuid": "org-fake", "name": "Fake Org"},
	})
}

func errorFor(status int) (string, string) {
	switch status {
	case http.StatusTooManyRequests:
		return "rate_limit_error", "This request would exceed your account's rate limit. Please try again later."
	case 529:
		return "overloaded_error", "Overloaded"
	case http.StatusUnauthorized:
		return "authentication_error", "invalid x-api-key"
	case http.StatusForbidden:
		return "permission_error", "Your credit balance is too low or your account is not allowed."
	case http.StatusBadRequest:
		return "invalid_request_error", "Bad request"
	}
	if status >= 500 {
		return "api_error", "Internal server error"
	}
	return "invalid_request_error", http.StatusText(status)
}

func writeError(w http.ResponseWriter, status int, typ, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("x-should-retry", strconv.FormatBool(status == 429 || status >= 500))
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]any{"type": "error", "error": map[string]any{"type": typ, "message": msg},
		"request_id": fmt.Sprintf("req_fake%d", time.Now().UnixNano())})
	_, _ = w.Write(b)
}

func tokenError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}
