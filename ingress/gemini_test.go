package ingress

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/rs/zerolog"
	"google.golang.org/genai"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/fakegemini"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/usage"
)

type geminiRig struct {
	t         *testing.T
	fake      *fakegemini.Fake
	clock     *claudeClock
	store     *accounts.Store
	base      string
	usage     *claudeUsage
	key       string // a relay key with the gemini permission
	claudeKey string // a relay key without it
	admin     *fiber.App
}

func newGeminiRig(t *testing.T) *geminiRig {
	t.Helper()
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	fake := fakegemini.New()
	up := httptest.NewServer(fake)
	t.Cleanup(up.Close)
	cfg := config.Config{
		Host: "127.0.0.1", ShutdownTimeout: 5 * time.Second, MaxBodyBytes: 4 << 20, StreamHeartbeat: time.Minute,
		KeyCacheTTL: 500 * time.Millisecond, APIKeyPrefix: "cr_", JWTSecret: strings.Repeat("j", 40),
		Redis:    config.Redis{KeyPrefix: env.Prefix},
		Gemini:   config.Gemini{UpstreamTimeout: time.Minute},
		Accounts: config.Accounts{MaxAttempts: 3},
	}
	box, err := secretbox.New(strings.Repeat("e", 32))
	if err != nil {
		t.Fatal(err)
	}
	clock := &claudeClock{t: time.Now()}
	store := accounts.NewStore(env.Client, ks, box, time.Second, clock.Now)
	sched := accounts.NewScheduler(store, env.Client, ks, accounts.Policy{
		StickyTTL: time.Hour, MaxPause: 30 * time.Minute, OverloadPause: time.Minute, ErrorPause: 30 * time.Second,
		RateLimitDefault: time.Minute}, zerolog.Nop())
	google := gemini.NewOAuth(gemini.OAuthConfig{ClientID: fake.ClientID, ClientSecret: fake.ClientSecret,
		AuthorizeURL: "https://accounts.google.com/o/oauth2/v2/auth", TokenURL: up.URL + "/token",
		RedirectURL: fake.RedirectURL, Scopes: "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/userinfo.email"}, nil)
	tokens := session.NewClaude(session.ClaudeOptions{Redis: env.Client, Keys: ks, Store: store, Google: google, Log: zerolog.Nop()})
	keys := apikeys.NewStore(env.Client, ks, apikeys.Options{CacheTTL: cfg.KeyCacheTTL})
	rec := &claudeUsage{}
	srv := New(Deps{Config: cfg, Log: zerolog.Nop(), Redis: env.Client, Metrics: metrics.New(), Usage: rec, Keys: keys,
		Scheduler: sched, Gemini: gemini.NewClient(up.URL, up.URL, time.Minute), GeminiOAuth: google, GeminiTokens: tokens})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	r := &geminiRig{t: t, fake: fake, clock: clock, store: store, base: "http://" + ln.Addr().String(), usage: rec}
	ctx := context.Background()
	if r.key, _, err = keys.Create(ctx, apikeys.Key{Name: "gemini", Enabled: true, Permissions: []string{apikeys.ServiceGemini}}); err != nil {
		t.Fatal(err)
	}
	if r.claudeKey, _, err = keys.Create(ctx, apikeys.Key{Name: "claude", Enabled: true, Permissions: []string{apikeys.ServiceClaude}}); err != nil {
		t.Fatal(err)
	}
	r.admin = fiber.New(fiber.Config{ErrorHandler: srv.handleError})
	srv.accountAdminRoutes(r.admin.Group("/admin"))
	return r
}

// apiAccount adds a Gemini API-key account whose key the fake accepts.
func (r *geminiRig) apiAccount(name string, prio int) (accounts.Account, string) {
	r.t.Helper()
	key := "AIzaSy-" + name
	r.fake.AddAPIKey(key)
	a, err := r.store.Create(context.Background(), accounts.Account{Name: name, Kind: accounts.KindGeminiAPI,
		Priority: prio, Enabled: true, Schedulable: true}, accounts.Credentials{APIKey: key})
	if err != nil {
		r.t.Fatal(err)
	}
	return a, key
}

// oauthAccount adds a Google OAuth account whose token the fake accepts;
// its user is onboarded to project unless project is "".
func (r *geminiRig) oauthAccount(name string, prio int, project string) (accounts.Account, string) {
	r.t.Helper()
	tok := "ya29.token-" + name
	r.fake.AddAccessToken(tok, name+"@example.com", project)
	a, err := r.store.Create(context.Background(), accounts.Account{Name: name, Kind: accounts.KindGeminiOAuth,
		Priority: prio, Enabled: true, Schedulable: true, Project: project, TokenExpiresAt: r.clock.Now().Add(time.Hour)},
		accounts.Credentials{AccessToken: tok})
	if err != nil {
		r.t.Fatal(err)
	}
	return a, tok
}

func (r *geminiRig) sdk(key string) *genai.Client {
	r.t.Helper()
	c, err := genai.NewClient(context.Background(), &genai.ClientConfig{APIKey: key, Backend: genai.BackendGeminiAPI,
		HTTPOptions: genai.HTTPOptions{BaseURL: r.base + "/gemini/", APIVersion: "v1beta"}})
	if err != nil {
		r.t.Fatal(err)
	}
	return c
}

// post sends a request the way Gemini CLI does (Bearer relay key).
func (r *geminiRig) post(path, key, body string) (*http.Response, []byte) {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, r.base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("x-goog-api-client", "gl-node/22.12.0")
	req.Header.Set("User-Agent", "GeminiCLI/0.61.0 (linux; x64)")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// modelCalls are the fake's model calls made with cred.
func (r *geminiRig) modelCalls(cred string) []fakegemini.Call {
	var out []fakegemini.Call
	for _, c := range r.fake.Calls() {
		if c.Cred == cred && (strings.Contains(c.Path, "generateContent") || strings.Contains(c.Path, "GenerateContent") ||
			strings.Contains(c.Path, "countTokens")) {
			out = append(out, c)
		}
	}
	return out
}

// checkUsage asserts the last usage event carries the fake's numbers.
func (r *geminiRig) checkUsage(accountID, model string) {
	r.t.Helper()
	ev := r.usage.last(r.t)
	u := r.fake.Usage
	if ev.Service != usage.ServiceGemini || ev.Model != model || ev.AccountID != accountID || ev.Status != http.StatusOK {
		r.t.Fatalf("usage event = %+v", ev)
	}
	if ev.InputTokens != u.Prompt-u.Cached || ev.CacheReadTokens != u.Cached || ev.OutputTokens != r.fake.Words()+u.Thoughts || ev.Estimated {
		r.t.Fatalf("usage tokens in=%d cache_read=%d out=%d estimated=%v; want in=%d cache_read=%d out=%d",
			ev.InputTokens, ev.CacheReadTokens, ev.OutputTokens, ev.Estimated, u.Prompt-u.Cached, u.Cached, r.fake.Words()+u.Thoughts)
	}
}

func googleError(t *testing.T, body []byte, status int) string {
	t.Helper()
	var e struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Status  string `json:"status"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != status || e.Error.Status == "" || e.Error.Message == "" {
		t.Fatalf("want a Google error with code %d, got %s", status, body)
	}
	return e.Error.Message
}

func TestGeminiSDKGenerateWithAPIKeyAccount(t *testing.T) {
	r := newGeminiRig(t)
	acct, key := r.apiAccount("a", 50)
	resp, err := r.sdk(r.key).Models.GenerateContent(context.Background(), "gemini-2.5-flash", genai.Text("Say hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Text() != r.fake.Reply {
		t.Fatalf("text = %q", resp.Text())
	}
	um := resp.UsageMetadata
	if um == nil || int64(um.PromptTokenCount) != r.fake.Usage.Prompt || int64(um.ThoughtsTokenCount) != r.fake.Usage.Thoughts {
		t.Fatalf("usage metadata = %+v", um)
	}
	calls := r.modelCalls(key)
	if len(calls) != 1 || calls[0].Path != "/v1beta/models/gemini-2.5-flash:generateContent" {
		t.Fatalf("upstream calls = %+v", calls)
	}
	if strings.Contains(calls[0].Header.Get("x-goog-api-key"), "cr_") || strings.Contains(calls[0].Query, "cr_") {
		t.Fatal("the relay key went upstream")
	}
	r.checkUsage(acct.ID, "gemini-2.5-flash")
}

func TestGeminiSDKStreamWithAPIKeyAccount(t *testing.T) {
	r := newGeminiRig(t)
	acct, key := r.apiAccount("a", 50)
	var text strings.Builder
	chunks := 0
	for resp, err := range r.sdk(r.key).Models.GenerateContentStream(context.Background(), "gemini-2.5-flash", genai.Text("Say hello"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		chunks++
		text.WriteString(resp.Text())
	}
	if text.String() != r.fake.Reply {
		t.Fatalf("text = %q", text.String())
	}
	if want := int(r.fake.Words()) + 1; chunks != want { // one thought chunk, then a chunk per word
		t.Fatalf("chunks = %d, want %d", chunks, want)
	}
	calls := r.modelCalls(key)
	if len(calls) != 1 || calls[0].Path != "/v1beta/models/gemini-2.5-flash:streamGenerateContent" || calls[0].Query != "alt=sse" {
		t.Fatalf("upstream calls = %+v", calls)
	}
	r.checkUsage(acct.ID, "gemini-2.5-flash")
}

func TestGeminiSDKCountTokensAndModels(t *testing.T) {
	r := newGeminiRig(t)
	r.apiAccount("a", 50)
	c := r.sdk(r.key)
	ctx := context.Background()
	before := len(r.usage.all())
	ct, err := c.Models.CountTokens(ctx, "gemini-2.5-flash", genai.Text("How many tokens is this?"), nil)
	if err != nil {
		t.Fatal(err)
	}
	sent := r.fake.Calls()
	var body struct {
		Contents json.RawMessage `json:"contents"`
	}
	_ = json.Unmarshal(sent[len(sent)-1].Body, &body)
	if int64(ct.TotalTokens) != fakegemini.TokensOf(body.Contents) {
		t.Fatalf("total tokens = %d", ct.TotalTokens)
	}
	if len(r.usage.all()) != before {
		t.Fatal("countTokens produced a usage event")
	}
	page, err := c.Models.List(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Items) != len(gemini.Models) {
		t.Fatalf("listed %d models", len(page.Items))
	}
	m, err := c.Models.Get(ctx, "gemini-2.5-pro", nil)
	if err != nil || m.Name != "models/gemini-2.5-pro" {
		t.Fatalf("get = %+v, %v", m, err)
	}
	_, err = c.Models.Get(ctx, "gemini-0-nonexistent", nil)
	var apiErr genai.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != http.StatusNotFound {
		t.Fatalf("get unknown = %v", err)
	}
	if r.fake.Counts().Models != 0 {
		t.Fatal("the model list went upstream")
	}
}

// sseData reads an SSE body as Gemini CLI does: only "data: " lines and
// blank lines are allowed.
func sseData(t *testing.T, body []byte) [][]byte {
	t.Helper()
	var out [][]byte
	sc := bufio.NewScanner(bytes.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case line == "":
		case strings.HasPrefix(line, "data: "):
			out = append(out, []byte(line[6:]))
		default:
			t.Fatalf("unexpected line format in response: %q", line)
		}
	}
	return out
}

func caResponseText(t *testing.T, data []byte) string {
	t.Helper()
	var w struct {
		Response *struct {
			Candidates []struct {
				Content struct {
					Parts []struct {
						Text    string `json:"text"`
						Thought bool   `json:"thought"`
					} `json:"parts"`
				} `json:"content"`
			} `json:"candidates"`
		} `json:"response"`
	}
	if err := json.Unmarshal(data, &w); err != nil || w.Response == nil {
		t.Fatalf("not a Code Assist answer: %s", data)
	}
	var sb strings.Builder
	for _, c := range w.Response.Candidates {
		for _, p := range c.Content.Parts {
			if !p.Thought {
				sb.WriteString(p.Text)
			}
		}
	}
	return sb.String()
}

// geminiCLIStart plays Gemini CLI's start-up calls and returns the project
// it will send.
func (r *geminiRig) geminiCLIStart() string {
	r.t.Helper()
	resp, body := r.post("/gemini/v1internal:loadCodeAssist", r.key,
		`{"metadata":{"ideType":"IDE_UNSPECIFIED","platform":"PLATFORM_UNSPECIFIED","pluginType":"GEMINI"}}`)
	var load struct {
		CurrentTier *struct {
			ID string `json:"id"`
		} `json:"currentTier"`
		Project string `json:"cloudaicompanionProject"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(body, &load) != nil || load.CurrentTier == nil || load.Project == "" {
		r.t.Fatalf("loadCodeAssist = %d %s", resp.StatusCode, body)
	}
	resp, body = r.post("/gemini/v1internal:retrieveUserQuota", r.key, `{"project":"`+load.Project+`"}`)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"buckets"`)) {
		r.t.Fatalf("retrieveUserQuota = %d %s", resp.StatusCode, body)
	}
	resp, body = r.post("/gemini/v1internal:listExperiments", r.key, `{"project":"`+load.Project+
		`","metadata":{"ideName":"IDE_UNSPECIFIED","pluginType":"GEMINI","ideVersion":"0.61.0","platform":"LINUX_AMD64","updateChannel":"stable","duetProject":"`+load.Project+`"}}`)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"experimentIds"`)) {
		r.t.Fatalf("listExperiments = %d %s", resp.StatusCode, body)
	}
	return load.Project
}

func cliEnvelope(model, project string) string {
	return `{"model":"` + model + `","project":"` + project + `","user_prompt_id":"8f3c2a1e-5b7d-4e21-9c0a-3d6f1b2e4a55",` +
		`"request":{"contents":[{"role":"user","parts":[{"text":"Say hello"}]}],"systemInstruction":{"role":"user","parts":[{"text":"You are Gemini CLI."}]},` +
		`"tools":[{"functionDeclarations":[{"name":"read_file","description":"Reads a file","parametersJsonSchema":{"type":"object"}}]}],` +
		`"generationConfig":{"temperature":0,"thinkingConfig":{"includeThoughts":true}},"session_id":"sess-1234"}}`
}

func TestGeminiCodeAssistServedByOAuthAccount(t *testing.T) {
	r := newGeminiRig(t)
	acct, tok := r.oauthAccount("o", 50, "proj-upstream")
	project := r.geminiCLIStart()
	if c := r.fake.Counts(); c.LoadCodeAssist+c.UserQuota+c.Experiments != 0 {
		t.Fatalf("start-up calls went upstream: %+v", c)
	}

	resp, body := r.post("/gemini/v1internal:generateContent", r.key, cliEnvelope("gemini-2.5-flash-lite", project))
	if resp.StatusCode != 200 || caResponseText(t, body) != r.fake.Reply {
		t.Fatalf("generateContent = %d %s", resp.StatusCode, body)
	}
	r.checkUsage(acct.ID, "gemini-2.5-flash-lite")

	resp, body = r.post("/gemini/v1internal:streamGenerateContent?alt=sse", r.key, cliEnvelope("gemini-2.5-pro", project))
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("stream = %d %s", resp.StatusCode, body)
	}
	var text strings.Builder
	events := sseData(t, body)
	for _, d := range events {
		text.WriteString(caResponseText(t, d))
	}
	if text.String() != r.fake.Reply || len(events) != int(r.fake.Words())+1 {
		t.Fatalf("streamed %d events, text %q", len(events), text.String())
	}
	r.checkUsage(acct.ID, "gemini-2.5-pro")

	calls := r.modelCalls(tok)
	if len(calls) != 2 {
		t.Fatalf("upstream calls = %d", len(calls))
	}
	for _, c := range calls {
		var env struct {
			Project, Model string
			UserPromptID   string `json:"user_prompt_id"`
			Request        struct {
				SessionID string `json:"session_id"`
			}
		}
		_ = json.Unmarshal(c.Body, &env)
		if env.Project != "proj-upstream" || env.UserPromptID != "8f3c2a1e-5b7d-4e21-9c0a-3d6f1b2e4a55" || env.Request.SessionID != "sess-1234" {
			t.Fatalf("upstream envelope = %s", c.Body)
		}
		if c.Header.Get("Authorization") != "Bearer "+tok || c.Header.Get("User-Agent") != "GeminiCLI/0.61.0 (linux; x64)" {
			t.Fatalf("upstream headers = %v", c.Header)
		}
	}

	resp, body = r.post("/gemini/v1internal:countTokens", r.key,
		`{"request":{"model":"models/gemini-2.5-flash","contents":[{"role":"user","parts":[{"text":"count me"}]}]}}`)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"totalTokens"`)) {
		t.Fatalf("countTokens = %d %s", resp.StatusCode, body)
	}
}

func TestGeminiCodeAssistServedByAPIKeyAccount(t *testing.T) {
	r := newGeminiRig(t)
	acct, key := r.apiAccount("a", 50)
	project := r.geminiCLIStart()

	resp, body := r.post("/gemini/v1internal:generateContent", r.key, cliEnvelope("gemini-2.5-flash", project))
	if resp.StatusCode != 200 || caResponseText(t, body) != r.fake.Reply {
		t.Fatalf("generateContent = %d %s", resp.StatusCode, body)
	}
	r.checkUsage(acct.ID, "gemini-2.5-flash")

	resp, body = r.post("/gemini/v1internal:streamGenerateContent?alt=sse", r.key, cliEnvelope("gemini-2.5-flash", project))
	var text strings.Builder
	events := sseData(t, body)
	for _, d := range events {
		text.WriteString(caResponseText(t, d))
	}
	if resp.StatusCode != 200 || text.String() != r.fake.Reply || len(events) != int(r.fake.Words())+1 {
		t.Fatalf("stream = %d, %d events, text %q", resp.StatusCode, len(events), text.String())
	}
	r.checkUsage(acct.ID, "gemini-2.5-flash")

	resp, body = r.post("/gemini/v1internal:countTokens", r.key,
		`{"request":{"model":"models/gemini-2.5-flash","contents":[{"role":"user","parts":[{"text":"count me"}]}]}}`)
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"totalTokens"`)) {
		t.Fatalf("countTokens = %d %s", resp.StatusCode, body)
	}

	calls := r.modelCalls(key)
	want := []string{"/v1beta/models/gemini-2.5-flash:generateContent", "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
		"/v1beta/models/gemini-2.5-flash:countTokens"}
	if len(calls) != len(want) {
		t.Fatalf("upstream calls = %d", len(calls))
	}
	for i, c := range calls {
		// The native API refuses Code Assist's session_id: the fake would
		// have answered 400.
		if c.Path != want[i] || c.Status != 200 || bytes.Contains(c.Body, []byte("session_id")) {
			t.Fatalf("upstream call %d = %s %d %s", i, c.Path, c.Status, c.Body)
		}
	}
}

func TestGeminiSDKServedByOAuthAccountDiscoversProject(t *testing.T) {
	r := newGeminiRig(t)
	acct, tok := r.oauthAccount("fresh", 50, "") // not onboarded yet
	resp, err := r.sdk(r.key).Models.GenerateContent(context.Background(), "gemini-2.5-flash", genai.Text("Say hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Text() != r.fake.Reply {
		t.Fatalf("text = %q", resp.Text())
	}
	project := r.fake.Project("fresh@example.com")
	if project == "" || r.fake.Counts().OnboardUser == 0 {
		t.Fatal("the account was not onboarded")
	}
	saved, err := r.store.Get(context.Background(), acct.ID)
	if err != nil || saved.Project != project {
		t.Fatalf("saved project = %q, want %q", saved.Project, project)
	}
	r.checkUsage(acct.ID, "gemini-2.5-flash")
	// The second request uses the saved project without asking again.
	load := r.fake.Counts().LoadCodeAssist
	var n int
	for _, err := range r.sdk(r.key).Models.GenerateContentStream(context.Background(), "gemini-2.5-flash", genai.Text("again"), nil) {
		if err != nil {
			t.Fatal(err)
		}
		n++
	}
	if n == 0 || r.fake.Counts().LoadCodeAssist != load || len(r.modelCalls(tok)) != 2 {
		t.Fatalf("chunks=%d loads=%d calls=%d", n, r.fake.Counts().LoadCodeAssist, len(r.modelCalls(tok)))
	}
	r.checkUsage(acct.ID, "gemini-2.5-flash")
}

func TestGeminiFailoverOn429ThenRecovery(t *testing.T) {
	r := newGeminiRig(t)
	first, key1 := r.apiAccount("first", 10)
	second, key2 := r.apiAccount("second", 20)
	r.fake.Queue(key1, fakegemini.Mode{Status: http.StatusTooManyRequests, RetryDelay: 40 * time.Second})
	c := r.sdk(r.key)
	ctx := context.Background()
	if _, err := c.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), nil); err != nil {
		t.Fatal(err)
	}
	if len(r.modelCalls(key1)) != 1 || len(r.modelCalls(key2)) != 1 {
		t.Fatalf("calls: first=%d second=%d", len(r.modelCalls(key1)), len(r.modelCalls(key2)))
	}
	r.checkUsage(second.ID, "gemini-2.5-flash")
	a, _ := r.store.Get(ctx, first.ID)
	if a.Status(r.clock.Now()) != "rate_limited" || a.State.RateLimitedUntil.Sub(r.clock.Now()) < 39*time.Second {
		t.Fatalf("first account state = %+v", a.State)
	}
	// While paused, the preferred account is skipped without a call.
	for range c.Models.GenerateContentStream(ctx, "gemini-2.5-flash", genai.Text("hi"), nil) {
	}
	if len(r.modelCalls(key1)) != 1 || len(r.modelCalls(key2)) != 2 {
		t.Fatal("a rate-limited account was tried")
	}
	// After the retry delay it serves again.
	r.clock.Advance(41 * time.Second)
	if _, err := c.Models.GenerateContent(ctx, "gemini-2.5-flash", genai.Text("hi"), nil); err != nil {
		t.Fatal(err)
	}
	if len(r.modelCalls(key1)) != 2 {
		t.Fatal("the account did not return after its pause")
	}
	r.checkUsage(first.ID, "gemini-2.5-flash")
}

func TestGeminiFailoverOn5xxAndAllRateLimited(t *testing.T) {
	r := newGeminiRig(t)
	_, tok := r.oauthAccount("o", 10, "proj-o")
	b, key := r.apiAccount("b", 20)
	r.fake.Queue(tok, fakegemini.Mode{Status: http.StatusInternalServerError})
	project := r.geminiCLIStart()
	resp, body := r.post("/gemini/v1internal:streamGenerateContent?alt=sse", r.key, cliEnvelope("gemini-2.5-flash", project))
	if resp.StatusCode != 200 || len(sseData(t, body)) == 0 || len(r.modelCalls(tok)) != 1 || len(r.modelCalls(key)) != 1 {
		t.Fatalf("stream = %d %s", resp.StatusCode, body)
	}
	r.checkUsage(b.ID, "gemini-2.5-flash")

	// Every account rate-limited: a 429 in Google's format with Retry-After.
	r.clock.Advance(31 * time.Second) // the 5xx pause is over
	r.fake.SetMode(tok, fakegemini.Mode{Status: http.StatusTooManyRequests, RetryDelay: 30 * time.Second})
	r.fake.SetMode(key, fakegemini.Mode{Status: http.StatusTooManyRequests, RetryDelay: 30 * time.Second})
	resp, body = r.post("/gemini/v1beta/models/gemini-2.5-flash:generateContent", r.key,
		`{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`)
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("all limited = %d %s", resp.StatusCode, body)
	}
	googleError(t, body, http.StatusTooManyRequests)
	if ev := r.usage.last(t); ev.Status != http.StatusTooManyRequests {
		t.Fatalf("usage event status = %d", ev.Status)
	}
}

func TestGeminiBadInput(t *testing.T) {
	r := newGeminiRig(t)
	_, key := r.apiAccount("a", 50)
	cases := []struct {
		name, path, auth, body string
		status                 int
	}{
		{"malformed json", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", r.key, `{"contents":[`, 400},
		{"missing contents", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", r.key, `{"generationConfig":{}}`, 400},
		{"empty contents", "/gemini/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse", r.key, `{"contents":[]}`, 400},
		{"unknown method", "/gemini/v1beta/models/gemini-2.5-flash:embedContent", r.key, `{"contents":[{"parts":[{"text":"x"}]}]}`, 404},
		{"unknown code assist method", "/gemini/v1internal:fetchAdminControls", r.key, `{}`, 404},
		{"envelope without request", "/gemini/v1internal:generateContent", r.key, `{"model":"gemini-2.5-flash","project":"p"}`, 400},
		{"envelope without model", "/gemini/v1internal:generateContent", r.key, `{"project":"p","request":{"contents":[{"parts":[{"text":"x"}]}]}}`, 400},
		{"malformed setup call", "/gemini/v1internal:loadCodeAssist", r.key, `{"metadata":`, 400},
		{"key without gemini", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", r.claudeKey, `{"contents":[{"parts":[{"text":"x"}]}]}`, 403},
		{"no key", "/gemini/v1internal:loadCodeAssist", "", `{}`, 401},
		{"bad key", "/gemini/v1internal:generateContent", "cr_not-a-key", `{}`, 401},
		{"unknown route", "/gemini/v2/whatever", r.key, `{}`, 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := r.post(tc.path, tc.auth, tc.body)
			if resp.StatusCode != tc.status {
				t.Fatalf("status = %d, want %d: %s", resp.StatusCode, tc.status, body)
			}
			googleError(t, body, tc.status)
		})
	}
	// The SDK (x-goog-api-key) sees the refusal as an APIError.
	_, err := r.sdk(r.claudeKey).Models.GenerateContent(context.Background(), "gemini-2.5-flash", genai.Text("hi"), nil)
	var apiErr genai.APIError
	if !errors.As(err, &apiErr) || apiErr.Code != http.StatusForbidden || apiErr.Status != "PERMISSION_DENIED" {
		t.Fatalf("sdk error = %v", err)
	}
	if n := len(r.modelCalls(key)); n != 0 {
		t.Fatalf("bad input reached the upstream %d times", n)
	}
}

func TestGeminiKeyFromQuery(t *testing.T) {
	r := newGeminiRig(t)
	r.apiAccount("a", 50)
	resp, err := http.Get(r.base + "/gemini/v1beta/models?key=" + r.key)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("?key= status = %d", resp.StatusCode)
	}
}

func TestGeminiStreamAsJSONArrayWithoutAltSSE(t *testing.T) {
	r := newGeminiRig(t)
	r.apiAccount("a", 50)
	resp, body := r.post("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?key="+r.key, "",
		`{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`)
	var list []json.RawMessage
	if resp.StatusCode != 200 || json.Unmarshal(body, &list) != nil || len(list) != int(r.fake.Words())+1 {
		t.Fatalf("array stream = %d %s", resp.StatusCode, body)
	}
}

func TestGeminiGoogleOAuthAdminFlowAndRefresh(t *testing.T) {
	r := newGeminiRig(t)
	adminPost := func(path, body string) (int, []byte) {
		req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := r.admin.Test(req, -1)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	st, body := adminPost("/admin/accounts/oauth/start", `{"kind":"gemini-oauth"}`)
	var start struct {
		SessionID    string `json:"session_id"`
		AuthorizeURL string `json:"authorize_url"`
	}
	if st != 200 || json.Unmarshal(body, &start) != nil || start.SessionID == "" {
		t.Fatalf("start = %d %s", st, body)
	}
	code, err := r.fake.Authorize(start.AuthorizeURL)
	if err != nil {
		t.Fatal(err)
	}
	st, body = adminPost("/admin/accounts/oauth/exchange", `{"session_id":"`+start.SessionID+`","code":"`+code+`","name":"google"}`)
	var created accountView
	if st != http.StatusCreated || json.Unmarshal(body, &created) != nil {
		t.Fatalf("exchange = %d %s", st, body)
	}
	if created.Kind != accounts.KindGeminiOAuth || created.Email == "" || created.Project == "" ||
		created.Project != r.fake.Project(created.Email) || created.TokenExpiresAt.IsZero() {
		t.Fatalf("created = %+v", created.Account)
	}
	if bytes.Contains(body, []byte("ya29.")) || bytes.Contains(body, []byte("1//fake-refresh")) {
		t.Fatal("the admin API showed a token")
	}
	// The account serves Gemini CLI; near expiry its token is refreshed
	// once through the token endpoint.
	project := r.geminiCLIStart()
	r.clock.Advance(58 * time.Minute)
	resp, out := r.post("/gemini/v1internal:generateContent", r.key, cliEnvelope("gemini-2.5-flash", project))
	if resp.StatusCode != 200 || caResponseText(t, out) != r.fake.Reply {
		t.Fatalf("generate = %d %s", resp.StatusCode, out)
	}
	if c := r.fake.Counts(); c.Exchanges != 1 || c.Refreshes != 1 {
		t.Fatalf("counts = %+v", c)
	}
	r.checkUsage(created.ID, "gemini-2.5-flash")
	// A code pasted twice is refused in Google's words.
	st, body = adminPost("/admin/accounts/oauth/exchange", `{"session_id":"`+start.SessionID+`","code":"`+code+`"}`)
	if st != http.StatusNotFound {
		t.Fatalf("reused session = %d %s", st, body)
	}
}
