// Package fakegemini is a fake of Google's Gemini upstreams for tests and
// local runs: the native Gemini API (generateContent, streamGenerateContent
// with alt=sse, countTokens, models) behind API keys, the Code Assist API
// (v1internal:*) behind OAuth access tokens, and Google's OAuth token
// endpoint. Answers stream word by word with usageMetadata like the real
// ones; failure modes include 429 with RetryInfo and 5xx. It answers only
// what the real APIs would, and counts what it was asked.
package fakegemini

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Mode is how the fake answers one credential's model calls.
type Mode struct {
	// Status, when not 0 or 200, answers with that status and a Google
	// error body (429, 500, 503, 401, 403...).
	Status int
	// RetryDelay is what a 429 says in its RetryInfo (and, on Code Assist,
	// in quotaResetDelay).
	RetryDelay time.Duration
	// Hold, if set, makes a stream wait after its first chunk until the
	// channel is closed or the client goes away.
	Hold chan struct{}
}

// Usage is what every answer reports. Candidates tokens are one per word of
// the reply.
type Usage struct {
	Prompt, Cached, Thoughts int64
}

// Call is one request the fake received.
type Call struct {
	Method string
	Path   string // e.g. /v1beta/models/gemini-2.5-flash:generateContent, /v1internal:loadCodeAssist
	Query  string
	Header http.Header
	Body   []byte
	Cred   string // the API key or access token it carried
	Status int
}

// Counts are how many requests of each kind the fake received.
type Counts struct {
	Generate, Stream, CountTokens, Models               int
	LoadCodeAssist, OnboardUser, UserQuota, Experiments int
	Exchanges, Refreshes                                int
}

// Fake is the fake upstream. Serve it with httptest.NewServer(f).
type Fake struct {
	// ClientID, ClientSecret and RedirectURL are what the token endpoint
	// expects.
	ClientID, ClientSecret, RedirectURL string
	// TokenTTL is the lifetime of issued access tokens (default 1 h).
	TokenTTL time.Duration
	// Reply is the text of every answer, streamed one word per chunk.
	Reply string
	// Thought, when set, is a thought part sent before the reply.
	Thought string
	Usage   Usage
	// OnboardPolls is how many onboardUser calls answer "not done yet"
	// before onboarding completes.
	OnboardPolls int

	mu       sync.Mutex
	keys     map[string]bool
	tokens   map[string]string // access token -> user
	refresh  map[string]string // refresh token -> user
	projects map[string]string // user -> Code Assist project, once onboarded
	polls    map[string]int
	codes    map[string]grant
	modes    map[string]Mode
	queued   map[string][]Mode
	calls    []Call
	counts   Counts
	issued   int
}

type grant struct{ challenge, redirect, user string }

// New makes a fake with Gemini CLI's OAuth client and usage numbers that
// include cached and thought tokens.
func New() *Fake {
	return &Fake{
		ClientID:     "fake-client.apps.googleusercontent.com",
		ClientSecret: "fake-client-secret",
		RedirectURL:  "https://codeassist.google.com/authcode",
		TokenTTL:     time.Hour,
		Reply:        "Hello from the fake Gemini upstream, answering word by word.",
		Thought:      "The user wants a greeting.",
		Usage:        Usage{Prompt: 42, Cached: 10, Thoughts: 7},
		keys:         map[string]bool{},
		tokens:       map[string]string{},
		refresh:      map[string]string{},
		projects:     map[string]string{},
		polls:        map[string]int{},
		codes:        map[string]grant{},
		modes:        map[string]Mode{},
		queued:       map[string][]Mode{},
	}
}

// AddAPIKey makes key a valid native API key.
func (f *Fake) AddAPIKey(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys[key] = true
}

// AddAccessToken makes token a valid access token of user, who is already
// onboarded to project when project is not empty.
func (f *Fake) AddAccessToken(token, user, project string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokens[token] = user
	if project != "" {
		f.projects[user] = project
	}
}

// AddRefreshToken makes token a valid refresh token of user.
func (f *Fake) AddRefreshToken(token, user string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refresh[token] = user
}

// Project is the Code Assist project of user ("" until onboarded).
func (f *Fake) Project(user string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.projects[user]
}

// Revoke makes a credential invalid.
func (f *Fake) Revoke(cred string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.keys, cred)
	delete(f.tokens, cred)
	delete(f.refresh, cred)
}

// SetMode sets how model calls with cred are answered from now on.
func (f *Fake) SetMode(cred string, m Mode) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.modes[cred] = m
}

// Queue makes the next model calls with cred answer in these modes, one
// each, before the persistent mode applies again.
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

// Counts returns the counters.
func (f *Fake) Counts() Counts {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts
}

// Words is how many chunks (and candidates tokens) an answer has.
func (f *Fake) Words() int64 { return int64(len(strings.SplitAfter(f.Reply, " "))) }

// Authorize plays Google's consent page: it checks an authorize URL the
// way the real page does and returns the code the redirect page shows.
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
	case q.Get("access_type") != "offline":
		return "", fmt.Errorf("access_type=offline is needed for a refresh token")
	case !strings.Contains(q.Get("scope"), "https://www.googleapis.com/auth/cloud-platform"):
		return "", fmt.Errorf("scope must include cloud-platform")
	}
	ch := q.Get("code_challenge")
	if raw, err := base64.RawURLEncoding.DecodeString(ch); err != nil || len(raw) != sha256.Size {
		return "", fmt.Errorf("code_challenge is not a base64url SHA-256 digest")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.issued++
	code := fmt.Sprintf("4/0Afake-code-%d", f.issued)
	f.codes[code] = grant{challenge: ch, redirect: q.Get("redirect_uri"), user: fmt.Sprintf("user%d@example.com", f.issued)}
	return code, nil
}

// ServeHTTP answers the APIs.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &recorder{ResponseWriter: w}
	cred := ""
	defer func() { f.record(r, body, cred, rec) }()
	p := r.URL.Path
	switch {
	case r.Method == http.MethodPost && p == "/token":
		f.serveToken(rec, r, body)
	case strings.HasPrefix(p, "/v1internal:"):
		cred = bearer(r)
		f.serveCodeAssist(rec, r, strings.TrimPrefix(p, "/v1internal:"), cred, body)
	case strings.HasPrefix(p, "/v1beta/models") || strings.HasPrefix(p, "/v1/models"):
		cred = r.Header.Get("x-goog-api-key")
		if cred == "" {
			cred = r.URL.Query().Get("key")
		}
		f.serveNative(rec, r, p, cred, body)
	default:
		writeError(rec, http.StatusNotFound, "NOT_FOUND", "Requested entity was not found.", nil)
	}
}

func bearer(r *http.Request) string {
	b, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	return b
}

type recorder struct {
	http.ResponseWriter
	status int
}

func (r *recorder) WriteHeader(s int) { r.status = s; r.ResponseWriter.WriteHeader(s) }
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
	f.calls = append(f.calls, Call{Method: r.Method, Path: r.URL.Path, Query: r.URL.RawQuery, Header: r.Header.Clone(),
		Body: body, Cred: cred, Status: st})
}

// mode is the next mode for cred.
func (f *Fake) mode(cred string) Mode {
	f.mu.Lock()
	defer f.mu.Unlock()
	if q := f.queued[cred]; len(q) > 0 {
		m := q[0]
		f.queued[cred] = q[1:]
		return m
	}
	return f.modes[cred]
}

func (f *Fake) count(fn func(c *Counts)) {
	f.mu.Lock()
	fn(&f.counts)
	f.mu.Unlock()
}

// nativeFields are the GenerateContentRequest fields the native API knows
// (it refuses others as unknown names).
var nativeFields = map[string]bool{
	"contents": true, "systemInstruction": true, "system_instruction": true, "tools": true, "toolConfig": true,
	"tool_config": true, "safetySettings": true, "safety_settings": true, "generationConfig": true,
	"generation_config": true, "cachedContent": true, "cached_content": true, "model": true,
}

func (f *Fake) serveNative(w *recorder, r *http.Request, path, cred string, body []byte) {
	rest := strings.TrimPrefix(strings.TrimPrefix(path, "/v1beta"), "/v1")
	rest = strings.TrimPrefix(strings.TrimPrefix(rest, "/models"), "/")
	f.mu.Lock()
	valid := f.keys[cred]
	f.mu.Unlock()
	if !valid {
		// The real API answers a bad key with 400, not 401.
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
			[]any{map[string]any{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
				"domain": "googleapis.com"}})
		return
	}
	if r.Method == http.MethodGet {
		f.count(func(c *Counts) { c.Models++ })
		f.serveModels(w, rest)
		return
	}
	model, method, _ := strings.Cut(rest, ":")
	var req map[string]json.RawMessage
	if err := json.Unmarshal(body, &req); err != nil {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "Invalid JSON payload received. "+err.Error(), nil)
		return
	}
	switch method {
	case "generateContent", "streamGenerateContent":
		if method == "generateContent" {
			f.count(func(c *Counts) { c.Generate++ })
		} else {
			f.count(func(c *Counts) { c.Stream++ })
		}
		for k := range req {
			if !nativeFields[k] {
				writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT",
					fmt.Sprintf("Invalid JSON payload received. Unknown name %q: Cannot find field.", k), nil)
				return
			}
		}
		if n := listLen(req["contents"]); n == 0 {
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n", nil)
			return
		}
		m := f.mode(cred)
		if m.Status != 0 && m.Status != http.StatusOK {
			modeError(w, m, false)
			return
		}
		if method == "streamGenerateContent" {
			if r.URL.Query().Get("alt") != "sse" {
				writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "this fake streams only with alt=sse", nil)
				return
			}
			if m.Hold != nil {
				r = r.WithContext(contextWithHold(r.Context(), m.Hold))
			}
			f.stream(w, r, model, false)
			return
		}
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		_ = json.NewEncoder(w).Encode(f.whole(model))
	case "countTokens":
		f.count(func(c *Counts) { c.CountTokens++ })
		contents := req["contents"]
		if listLen(contents) == 0 {
			var g struct {
				Contents json.RawMessage `json:"contents"`
			}
			_ = json.Unmarshal(req["generateContentRequest"], &g)
			contents = g.Contents
		}
		if listLen(contents) == 0 {
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "* CountTokensRequest.contents: contents is not specified", nil)
			return
		}
		if m := f.mode(cred); m.Status != 0 && m.Status != http.StatusOK {
			modeError(w, m, false)
			return
		}
		n := TokensOf(contents)
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		_ = json.NewEncoder(w).Encode(map[string]any{"totalTokens": n,
			"promptTokensDetails": []any{map[string]any{"modality": "TEXT", "tokenCount": n}}})
	default:
		writeError(w, http.StatusNotFound, "NOT_FOUND", "Requested entity was not found.", nil)
	}
}

// TokensOf is the fake's token count of a contents list: one per four bytes
// of its JSON, at least one.
func TokensOf(contents json.RawMessage) int64 { return int64(len(contents))/4 + 1 }

func listLen(raw json.RawMessage) int {
	var l []json.RawMessage
	if json.Unmarshal(raw, &l) != nil {
		return 0
	}
	return len(l)
}

func (f *Fake) serveModels(w http.ResponseWriter, rest string) {
	models := []map[string]any{}
	for _, id := range []string{"gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"} {
		models = append(models, map[string]any{"name": "models/" + id, "version": "001", "displayName": id,
			"inputTokenLimit": 1048576, "outputTokenLimit": 65536,
			"supportedGenerationMethods": []string{"generateContent", "countTokens"}})
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	if rest == "" {
		_ = json.NewEncoder(w).Encode(map[string]any{"models": models})
		return
	}
	for _, m := range models {
		if m["name"] == "models/"+rest {
			_ = json.NewEncoder(w).Encode(m)
			return
		}
	}
	writeError(w, http.StatusNotFound, "NOT_FOUND", "models/"+rest+" is not found for API version v1beta", nil)
}

func (f *Fake) usage(final bool) map[string]any {
	u := map[string]any{"promptTokenCount": f.Usage.Prompt, "totalTokenCount": f.Usage.Prompt}
	if !final {
		return u
	}
	words := f.Words()
	u["candidatesTokenCount"] = words
	u["totalTokenCount"] = f.Usage.Prompt + words + f.Usage.Thoughts
	u["promptTokensDetails"] = []any{map[string]any{"modality": "TEXT", "tokenCount": f.Usage.Prompt}}
	if f.Usage.Cached > 0 {
		u["cachedContentTokenCount"] = f.Usage.Cached
		u["cacheTokensDetails"] = []any{map[string]any{"modality": "TEXT", "tokenCount": f.Usage.Cached}}
	}
	if f.Usage.Thoughts > 0 {
		u["thoughtsTokenCount"] = f.Usage.Thoughts
	}
	return u
}

func responseID() string { return fmt.Sprintf("fake-%d", time.Now().UnixNano()) }

func textPart(text string) map[string]any { return map[string]any{"text": text} }

// whole is a complete (non-streamed) answer.
func (f *Fake) whole(model string) map[string]any {
	parts := []any{}
	if f.Thought != "" {
		parts = append(parts, map[string]any{"text": f.Thought, "thought": true})
	}
	parts = append(parts, textPart(f.Reply))
	return map[string]any{
		"candidates": []any{map[string]any{"content": map[string]any{"parts": parts, "role": "model"},
			"finishReason": "STOP", "index": 0}},
		"usageMetadata": f.usage(true), "modelVersion": model, "responseId": responseID(),
	}
}

// stream sends the answer as SSE, one chunk per word, each ended by a
// blank line the way Google ends them (CRLF). wrap puts every chunk into
// {"response": ...} as Code Assist does.
func (f *Fake) stream(w *recorder, r *http.Request, model string, wrap bool) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	id := responseID()
	send := func(c map[string]any) bool {
		var v any = c
		if wrap {
			v = map[string]any{"response": c, "traceId": "fake-trace-" + id}
		}
		b, _ := json.Marshal(v)
		if _, err := fmt.Fprintf(w, "data: %s\r\n\r\n", b); err != nil {
			return false
		}
		w.Flush()
		return true
	}
	chunk := func(parts []any, final bool) map[string]any {
		cand := map[string]any{"content": map[string]any{"parts": parts, "role": "model"}, "index": 0}
		if final {
			cand["finishReason"] = "STOP"
		}
		return map[string]any{"candidates": []any{cand}, "usageMetadata": f.usage(final), "modelVersion": model,
			"responseId": id}
	}
	if f.Thought != "" {
		if !send(chunk([]any{map[string]any{"text": f.Thought, "thought": true}}, false)) {
			return
		}
	}
	hold := f.holdFor(r)
	words := strings.SplitAfter(f.Reply, " ")
	for i, word := range words {
		if !send(chunk([]any{textPart(word)}, i == len(words)-1)) {
			return
		}
		if i == 0 && hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
	}
}

// holdFor is the Hold channel of the request's credential mode, kept aside
// by the handler that read the mode.
func (f *Fake) holdFor(r *http.Request) chan struct{} {
	h, _ := r.Context().Value(holdKey{}).(chan struct{})
	return h
}

type holdKey struct{}

func contextWithHold(ctx context.Context, h chan struct{}) context.Context {
	return context.WithValue(ctx, holdKey{}, h)
}

func (f *Fake) serveCodeAssist(w *recorder, r *http.Request, method, cred string, body []byte) {
	f.mu.Lock()
	user, valid := f.tokens[cred]
	project := f.projects[user]
	f.mu.Unlock()
	if !valid {
		writeError(w, http.StatusUnauthorized, "UNAUTHENTICATED",
			"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.", nil)
		return
	}
	if r.Method != http.MethodPost {
		writeError(w, http.StatusNotFound, "NOT_FOUND", "Not found", nil)
		return
	}
	var env struct {
		Model        string          `json:"model"`
		Project      string          `json:"project"`
		UserPromptID string          `json:"user_prompt_id"`
		Request      json.RawMessage `json:"request"`
		TierID       string          `json:"tierId"`
	}
	if err := json.Unmarshal(body, &env); err != nil {
		writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "Invalid JSON payload received. "+err.Error(), nil)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	switch method {
	case "loadCodeAssist":
		f.count(func(c *Counts) { c.LoadCodeAssist++ })
		free := map[string]any{"id": "free-tier", "name": "Gemini Code Assist for individuals",
			"description": "Gemini Code Assist for individuals", "isDefault": true}
		if project == "" {
			_ = json.NewEncoder(w).Encode(map[string]any{"allowedTiers": []any{free}})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"currentTier": free, "allowedTiers": []any{free},
			"cloudaicompanionProject": project, "gcpManaged": false})
	case "onboardUser":
		f.count(func(c *Counts) { c.OnboardUser++ })
		if env.TierID == "" {
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "tierId is required", nil)
			return
		}
		f.mu.Lock()
		f.polls[user]++
		done := f.polls[user] > f.OnboardPolls
		if done && f.projects[user] == "" {
			f.projects[user] = "fake-project-" + strings.SplitN(user, "@", 2)[0]
		}
		project = f.projects[user]
		f.mu.Unlock()
		if !done {
			_ = json.NewEncoder(w).Encode(map[string]any{"name": "operations/onboard-" + user, "done": false})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"name": "operations/onboard-" + user, "done": true,
			"response": map[string]any{"@type": "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
				"cloudaicompanionProject": map[string]any{"id": project, "name": project}}})
	case "retrieveUserQuota":
		f.count(func(c *Counts) { c.UserQuota++ })
		reset := time.Now().Add(24 * time.Hour).UTC().Format(time.RFC3339)
		_ = json.NewEncoder(w).Encode(map[string]any{"buckets": []any{
			map[string]any{"modelId": "gemini-2.5-pro", "remainingFraction": 1, "resetTime": reset, "tokenType": "REQUESTS"},
			map[string]any{"modelId": "gemini-2.5-flash", "remainingFraction": 1, "resetTime": reset, "tokenType": "REQUESTS"},
		}})
	case "listExperiments":
		f.count(func(c *Counts) { c.Experiments++ })
		_ = json.NewEncoder(w).Encode(map[string]any{"experimentIds": []any{}, "flags": []any{}})
	case "generateContent", "streamGenerateContent":
		if method == "generateContent" {
			f.count(func(c *Counts) { c.Generate++ })
		} else {
			f.count(func(c *Counts) { c.Stream++ })
		}
		var req struct {
			Contents json.RawMessage `json:"contents"`
		}
		_ = json.Unmarshal(env.Request, &req)
		switch {
		case env.Model == "":
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "model is required", nil)
			return
		case project == "" || env.Project != project:
			writeError(w, http.StatusForbidden, "PERMISSION_DENIED",
				fmt.Sprintf("Permission denied on resource project %s.", env.Project), nil)
			return
		case listLen(req.Contents) == 0:
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "* GenerateContentRequest.contents: contents is not specified\n", nil)
			return
		}
		m := f.mode(cred)
		if m.Status != 0 && m.Status != http.StatusOK {
			modeError(w, m, true)
			return
		}
		if method == "streamGenerateContent" {
			if r.URL.Query().Get("alt") != "sse" {
				writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "this fake streams only with alt=sse", nil)
				return
			}
			ctx := r.Context()
			if m.Hold != nil {
				ctx = contextWithHold(ctx, m.Hold)
			}
			f.stream(w, r.WithContext(ctx), env.Model, true)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"response": f.whole(env.Model), "traceId": "fake-trace"})
	case "countTokens":
		f.count(func(c *Counts) { c.CountTokens++ })
		var req struct {
			Model    string          `json:"model"`
			Contents json.RawMessage `json:"contents"`
		}
		_ = json.Unmarshal(env.Request, &req)
		if req.Model == "" || listLen(req.Contents) == 0 {
			writeError(w, http.StatusBadRequest, "INVALID_ARGUMENT", "request.model and request.contents are required", nil)
			return
		}
		if m := f.mode(cred); m.Status != 0 && m.Status != http.StatusOK {
			modeError(w, m, true)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"totalTokens": TokensOf(req.Contents)})
	default:
		writeError(w, http.StatusNotFound, "NOT_FOUND", "Method not found.", nil)
	}
}

func modeError(w http.ResponseWriter, m Mode, codeAssist bool) {
	switch {
	case m.Status == http.StatusTooManyRequests:
		var details []any
		msg := "Resource has been exhausted (e.g. check quota)."
		if m.RetryDelay > 0 {
			delay := fmt.Sprintf("%gs", m.RetryDelay.Seconds())
			if codeAssist {
				msg = "You have exhausted your capacity on this model. Your quota will reset after " + delay + "."
				details = append(details, map[string]any{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
					"reason": "RATE_LIMIT_EXCEEDED", "domain": "cloudcode-pa.googleapis.com",
					"metadata": map[string]any{"quotaResetDelay": delay, "model": "gemini"}})
			}
			details = append(details, map[string]any{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay})
		}
		writeError(w, m.Status, "RESOURCE_EXHAUSTED", msg, details)
	case m.Status == http.StatusServiceUnavailable:
		writeError(w, m.Status, "UNAVAILABLE", "The model is overloaded. Please try again later.", nil)
	case m.Status >= 500:
		writeError(w, m.Status, "INTERNAL", "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting", nil)
	case m.Status == http.StatusUnauthorized:
		writeError(w, m.Status, "UNAUTHENTICATED", "Request had invalid authentication credentials.", nil)
	case m.Status == http.StatusForbidden:
		writeError(w, m.Status, "PERMISSION_DENIED", "The caller does not have permission", nil)
	default:
		writeError(w, m.Status, "FAILED_PRECONDITION", http.StatusText(m.Status), nil)
	}
}

func writeError(w http.ResponseWriter, status int, name, msg string, details []any) {
	e := map[string]any{"code": status, "message": msg, "status": name}
	if len(details) > 0 {
		e["details"] = details
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"error": e})
}

func (f *Fake) serveToken(w http.ResponseWriter, r *http.Request, body []byte) {
	form, err := url.ParseQuery(string(body))
	if err != nil || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		tokenError(w, http.StatusBadRequest, "invalid_request", "Invalid request")
		return
	}
	if form.Get("client_id") != f.ClientID || form.Get("client_secret") != f.ClientSecret {
		tokenError(w, http.StatusUnauthorized, "invalid_client", "The OAuth client was not found.")
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var user, refresh string
	switch form.Get("grant_type") {
	case "authorization_code":
		f.counts.Exchanges++
		g, ok := f.codes[form.Get("code")]
		if !ok {
			tokenError(w, http.StatusBadRequest, "invalid_grant", "Malformed auth code.")
			return
		}
		delete(f.codes, form.Get("code"))
		sum := sha256.Sum256([]byte(form.Get("code_verifier")))
		if base64.RawURLEncoding.EncodeToString(sum[:]) != g.challenge {
			tokenError(w, http.StatusBadRequest, "invalid_grant", "Invalid code verifier.")
			return
		}
		if form.Get("redirect_uri") != g.redirect {
			tokenError(w, http.StatusBadRequest, "redirect_uri_mismatch", "Bad Request")
			return
		}
		user = g.user
		f.issued++
		refresh = fmt.Sprintf("1//fake-refresh-%d", f.issued)
		f.refresh[refresh] = user
	case "refresh_token":
		f.counts.Refreshes++
		u, ok := f.refresh[form.Get("refresh_token")]
		if !ok {
			tokenError(w, http.StatusBadRequest, "invalid_grant", "Token has been expired or revoked.")
			return
		}
		user = u // Google keeps the refresh token: the answer carries none
	default:
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "Invalid grant_type: "+form.Get("grant_type"))
		return
	}
	f.issued++
	access := fmt.Sprintf("ya29.fake-%d", f.issued)
	f.tokens[access] = user
	out := map[string]any{"access_token": access, "expires_in": int64(f.TokenTTL / time.Second), "token_type": "Bearer",
		"scope":    "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email openid",
		"id_token": idToken(user)}
	if refresh != "" {
		out["refresh_token"] = refresh
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	_ = json.NewEncoder(w).Encode(out)
}

func idToken(email string) string {
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	return enc(map[string]any{"alg": "RS256", "typ": "JWT"}) + "." +
		enc(map[string]any{"iss": "https://accounts.google.com", "email": email, "email_verified": true}) + ".fake-signature"
}

func tokenError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}
