package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	sdk "github.com/anthropics/anthropic-sdk-go"
	"github.com/anthropics/anthropic-sdk-go/option"
	"github.com/gofiber/fiber/v2"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/fakeanthropic"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/usage"
)

// claudeClock is the accounts' clock, moved by the tests.
type claudeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *claudeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *claudeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// claudeUsage captures usage events.
type claudeUsage struct {
	mu  sync.Mutex
	evs []usage.Event
}

func (u *claudeUsage) Record(_ context.Context, ev usage.Event) error {
	u.mu.Lock()
	u.evs = append(u.evs, ev)
	u.mu.Unlock()
	return nil
}

func (u *claudeUsage) all() []usage.Event {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]usage.Event(nil), u.evs...)
}

func (u *claudeUsage) last(t *testing.T) usage.Event {
	t.Helper()
	all := u.all()
	if len(all) == 0 {
		t.Fatal("no usage event recorded")
	}
	return all[len(all)-1]
}

type claudeRig struct {
	t        *testing.T
	env      *testredis.Env
	fake     *fakeanthropic.Fake
	upstream *httptest.Server
	clock    *claudeClock
	store    *accounts.Store
	srv      *Server
	base     string
	usage    *claudeUsage
	key      string // a relay key with the claude permission
	oaiKey   string // a relay key without it
	admin    *fiber.App
}

func newClaudeRig(t *testing.T) *claudeRig { return newClaudeRigWith(t, nil) }

func newClaudeRigWith(t *testing.T, tweak func(*config.Config)) *claudeRig {
	t.Helper()
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	fake := fakeanthropic.New()
	up := httptest.NewServer(fake)
	t.Cleanup(up.Close)
	cfg := config.Config{
		Host: "127.0.0.1", ShutdownTimeout: 5 * time.Second, MaxBodyBytes: 4 << 20, StreamHeartbeat: time.Minute,
		KeyCacheTTL: 500 * time.Millisecond, APIKeyPrefix: "cr_", JWTSecret: strings.Repeat("j", 40),
		Redis:    config.Redis{KeyPrefix: env.Prefix},
		Claude:   config.Claude{BaseURL: up.URL, UpstreamTimeout: time.Minute},
		Accounts: config.Accounts{MaxAttempts: 3},
	}
	if tweak != nil {
		tweak(&cfg)
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
	oauth := anthropic.NewOAuth(anthropic.OAuthConfig{ClientID: fake.ClientID, AuthorizeURL: "https://claude.ai/oauth/authorize",
		TokenURL: up.URL + "/v1/oauth/token", RedirectURL: fake.RedirectURL, Scopes: "user:profile user:inference"}, nil)
	tokens := session.NewClaude(session.ClaudeOptions{Redis: env.Client, Keys: ks, Store: store, OAuth: oauth, Log: zerolog.Nop()})
	keys := apikeys.NewStore(env.Client, ks, apikeys.Options{CacheTTL: cfg.KeyCacheTTL})
	rec := &claudeUsage{}
	srv := New(Deps{Config: cfg, Log: zerolog.Nop(), Redis: env.Client, Metrics: metrics.New(), Usage: rec, Keys: keys,
		Scheduler: sched, Anthropic: anthropic.NewClient(up.URL, time.Minute), ClaudeOAuth: oauth, ClaudeTokens: tokens})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	r := &claudeRig{t: t, env: env, fake: fake, upstream: up, clock: clock, store: store, srv: srv,
		base: "http://" + ln.Addr().String(), usage: rec}
	ctx := context.Background()
	if r.key, _, err = keys.Create(ctx, apikeys.Key{Name: "claude", Enabled: true, Permissions: []string{apikeys.ServiceClaude}}); err != nil {
		t.Fatal(err)
	}
	if r.oaiKey, _, err = keys.Create(ctx, apikeys.Key{Name: "oai", Enabled: true, Permissions: []string{apikeys.ServiceOpenAI}}); err != nil {
		t.Fatal(err)
	}
	// The admin routes, mounted without admin auth (the lead mounts them
	// behind it).
	r.admin = fiber.New(fiber.Config{ErrorHandler: srv.handleError})
	srv.accountAdminRoutes(r.admin.Group("/admin"))
	return r
}

// console adds a Console account whose key the fake accepts.
func (r *claudeRig) console(name string, prio int) accounts.Account {
	r.t.Helper()
	key := "sk-ant-api03-" + name
	r.fake.AddAPIKey(key)
	a, err := r.store.Create(context.Background(), accounts.Account{Name: name, Kind: accounts.KindClaudeConsole,
		Priority: prio, Enabled: true, Schedulable: true}, accounts.Credentials{APIKey: key})
	if err != nil {
		r.t.Fatal(err)
	}
	return a
}

func (r *claudeRig) client(key string) sdk.Client {
	return sdk.NewClient(option.WithBaseURL(r.base+"/api/"), option.WithAuthToken(key), option.WithMaxRetries(0))
}

func params(text string) sdk.MessageNewParams {
	return sdk.MessageNewParams{Model: sdk.Model("claude-sonnet-4-5"), MaxTokens: 1024,
		Messages: []sdk.MessageParam{sdk.NewUserMessage(sdk.NewTextBlock(text))}}
}

func (r *claudeRig) post(path, key, body string, hdr map[string]string) (*http.Response, []byte) {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, r.base+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// calls are the fake's Messages calls made with cred.
func (r *claudeRig) calls(cred string) int {
	n := 0
	for _, c := range r.fake.Calls() {
		if c.Cred == cred && c.Path == "/v1/messages" {
			n++
		}
	}
	return n
}

func stripHeartbeats(b []byte) []byte {
	return bytes.ReplaceAll(b, heartbeatFrame, nil)
}

func TestClaudeStreamingEndToEnd(t *testing.T) {
	r := newClaudeRig(t)
	acct := r.console("main", 50)
	c := r.client(r.key)
	stream := c.Messages.NewStreaming(context.Background(), params("Say hello"))
	var types []string
	var text strings.Builder
	for stream.Next() {
		ev := stream.Current()
		types = append(types, ev.Type)
		if ev.Type == "content_block_delta" {
			text.WriteString(ev.Delta.Text)
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	words := len(strings.SplitAfter(r.fake.Reply, " "))
	// (The SDK does not surface ping events; the byte comparison below
	// covers them.)
	want := []string{"message_start", "content_block_start"}
	for i := 0; i < words; i++ {
		want = append(want, "content_block_delta")
	}
	want = append(want, "content_block_stop", "message_delta", "message_stop")
	if strings.Join(types, ",") != strings.Join(want, ",") {
		t.Fatalf("events %v\nwant %v", types, want)
	}
	if text.String() != r.fake.Reply {
		t.Fatalf("text %q", text.String())
	}
	ev := r.usage.last(t)
	if ev.InputTokens != 25 || ev.OutputTokens != int64(words) || ev.CacheCreateTokens != 12 || ev.CacheReadTokens != 340 ||
		ev.AccountID != acct.ID || ev.Status != 200 || ev.Service != usage.ServiceClaude || ev.Estimated ||
		ev.Model != "claude-sonnet-4-5" || ev.KeyID == "" || ev.ErrorClass != "" {
		t.Fatalf("usage event %+v", ev)
	}

	// The bytes the client gets are the bytes the fake wrote.
	resp, body := r.post("/api/v1/messages", r.key,
		`{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`, nil)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	calls := r.fake.Calls()
	upstream := calls[len(calls)-1].Response
	if !bytes.Equal(stripHeartbeats(body), upstream) || !bytes.Contains(body, []byte("event: ping\n")) {
		t.Fatalf("client bytes differ from upstream bytes:\n%q\n%q", body, upstream)
	}
	if len(r.usage.all()) != 2 {
		t.Fatalf("%d usage events for 2 requests", len(r.usage.all()))
	}
}

func TestClaudeNonStreamingAndCountTokens(t *testing.T) {
	r := newClaudeRig(t)
	r.console("main", 50)
	c := r.client(r.key)
	msg, err := c.Messages.New(context.Background(), params("Say hello"))
	if err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 1 || msg.Content[0].Text != r.fake.Reply || msg.Usage.CacheReadInputTokens != 340 {
		t.Fatalf("message %+v", msg)
	}
	ev := r.usage.last(t)
	if ev.InputTokens != 25 || ev.CacheCreateTokens != 12 || ev.CacheReadTokens != 340 || ev.OutputTokens == 0 || ev.Status != 200 {
		t.Fatalf("usage %+v", ev)
	}
	n, err := c.Messages.CountTokens(context.Background(), sdk.MessageCountTokensParams{
		Model: sdk.Model("claude-sonnet-4-5"), Messages: []sdk.MessageParam{sdk.NewUserMessage(sdk.NewTextBlock("count me"))}})
	if err != nil {
		t.Fatal(err)
	}
	if n.InputTokens <= 0 || r.fake.Counts().CountTokens != 1 {
		t.Fatalf("count_tokens %+v, upstream calls %d", n, r.fake.Counts().CountTokens)
	}
	if len(r.usage.all()) != 1 {
		t.Fatal("count_tokens produced a usage event")
	}
	// Also under /claude and with an x-api-key header.
	resp, body := r.post("/claude/v1/messages", "", `{"model":"claude-haiku-4-5","max_tokens":8,"messages":[{"role":"user","content":"x"}]}`,
		map[string]string{"x-api-key": r.key})
	if resp.StatusCode != 200 || !bytes.Contains(body, []byte(`"type":"message"`)) {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	req, _ := http.NewRequest(http.MethodGet, r.base+"/api/v1/models", nil)
	req.Header.Set("x-api-key", r.key)
	mresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var models struct {
		Data []anthropic.Model `json:"data"`
	}
	_ = json.NewDecoder(mresp.Body).Decode(&models)
	mresp.Body.Close()
	if mresp.StatusCode != 200 || len(models.Data) == 0 || models.Data[0].Type != "model" {
		t.Fatalf("models %d %+v", mresp.StatusCode, models)
	}
}

func TestClaudeFailoverAndRecovery(t *testing.T) {
	r := newClaudeRig(t)
	first := r.console("first", 10)
	second := r.console("second", 20)
	keyA, keyB := "sk-ant-api03-first", "sk-ant-api03-second"
	c := r.client(r.key)
	ctx := context.Background()

	// 529 on the first: the request succeeds on the second.
	r.fake.SetMode(keyA, fakeanthropic.Mode{Status: 529})
	if _, err := c.Messages.New(ctx, params("one")); err != nil {
		t.Fatal(err)
	}
	if r.calls(keyA) != 1 || r.calls(keyB) != 1 || r.usage.last(t).AccountID != second.ID {
		t.Fatalf("calls a=%d b=%d", r.calls(keyA), r.calls(keyB))
	}
	a, _ := r.store.Get(ctx, first.ID)
	if a.Status(r.clock.Now()) != "overloaded" || !strings.Contains(a.State.PauseReason, "529") {
		t.Fatalf("first account state %+v", a.State)
	}
	// While paused it is not asked again; streaming works from the second.
	stream := c.Messages.NewStreaming(ctx, params("two"))
	for stream.Next() {
	}
	if err := stream.Err(); err != nil || r.calls(keyA) != 1 {
		t.Fatalf("stream err %v, calls to the paused account %d", err, r.calls(keyA))
	}
	// After the pause it serves again.
	r.fake.SetMode(keyA, fakeanthropic.Mode{})
	r.clock.Advance(2 * time.Minute)
	if _, err := c.Messages.New(ctx, params("three")); err != nil {
		t.Fatal(err)
	}
	if r.calls(keyA) != 2 || r.usage.last(t).AccountID != first.ID {
		t.Fatalf("first account did not return: calls %d", r.calls(keyA))
	}

	// 429 with a reset time: rate-limited until then.
	reset := r.clock.Now().Add(10 * time.Minute).Truncate(time.Second)
	r.fake.Queue(keyA, fakeanthropic.Mode{Status: 429, ResetAt: reset})
	stream = c.Messages.NewStreaming(ctx, params("four"))
	for stream.Next() {
	}
	if err := stream.Err(); err != nil || r.usage.last(t).AccountID != second.ID {
		t.Fatalf("stream after 429: %v", err)
	}
	a, _ = r.store.Get(ctx, first.ID)
	if !a.State.RateLimitedUntil.Equal(reset) {
		t.Fatalf("rate limited until %v, want %v", a.State.RateLimitedUntil, reset)
	}
	r.clock.Advance(5 * time.Minute)
	if _, err := c.Messages.New(ctx, params("five")); err != nil || r.usage.last(t).AccountID != second.ID {
		t.Fatalf("before the reset: %v", err)
	}
	r.clock.Advance(6 * time.Minute)
	if _, err := c.Messages.New(ctx, params("six")); err != nil || r.usage.last(t).AccountID != first.ID {
		t.Fatalf("first account not back after its reset: %v", err)
	}

	// Both rate-limited: the client is told so, with a Retry-After.
	r.fake.SetMode(keyA, fakeanthropic.Mode{Status: 429, ResetAt: r.clock.Now().Add(3 * time.Minute)})
	r.fake.SetMode(keyB, fakeanthropic.Mode{Status: 429, ResetAt: r.clock.Now().Add(4 * time.Minute)})
	resp, body := r.post("/api/v1/messages", r.key, `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"x"}]}`, nil)
	var e struct {
		Type  string `json:"type"`
		Error struct{ Type, Message string }
	}
	_ = json.Unmarshal(body, &e)
	if resp.StatusCode != 429 || e.Type != "error" || e.Error.Type != "rate_limit_error" ||
		!strings.Contains(e.Error.Message, "rate-limited") || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("%d %s (Retry-After %q)", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if ev := r.usage.last(t); ev.Status != 429 || ev.ErrorClass == "" || ev.Total() != 0 {
		t.Fatalf("usage for the refused request %+v", ev)
	}
}

func TestClaudeStickyConversation(t *testing.T) {
	r := newClaudeRig(t)
	r.console("a", 50)
	r.console("b", 50)
	body := func(session, text string) string {
		uid, _ := json.Marshal(`{"device_id":"d","account_uuid":"","session_id":"` + session + `"}`)
		return `{"model":"claude-sonnet-4-5","max_tokens":8,"metadata":{"user_id":` + string(uid) +
			`},"messages":[{"role":"user","content":"` + text + `"}]}`
	}
	var accts []string
	for i := 0; i < 4; i++ {
		r.clock.Advance(time.Millisecond)
		resp, b := r.post("/api/v1/messages", r.key, body("conv-1", "turn"), nil)
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		accts = append(accts, r.usage.last(t).AccountID)
	}
	for _, a := range accts[1:] {
		if a != accts[0] {
			t.Fatalf("conversation moved between accounts: %v", accts)
		}
	}
	// Another conversation goes to the other (least recently used) account.
	r.clock.Advance(time.Millisecond)
	r.post("/api/v1/messages", r.key, body("conv-2", "hello"), nil)
	if r.usage.last(t).AccountID == accts[0] {
		t.Fatal("a new conversation did not go to the least recently used account")
	}
}

func TestClaudeMidStreamErrorReachesTheClient(t *testing.T) {
	r := newClaudeRig(t)
	acct := r.console("main", 50)
	r.fake.Queue("sk-ant-api03-main", fakeanthropic.Mode{MidStreamError: true})
	c := r.client(r.key)
	stream := c.Messages.NewStreaming(context.Background(), params("hi"))
	n := 0
	for stream.Next() {
		n++
	}
	err := stream.Err()
	if err == nil || !strings.Contains(err.Error(), "Overloaded") {
		t.Fatalf("stream error %v after %d events", err, n)
	}
	ev := r.usage.last(t)
	if !ev.Estimated || ev.InputTokens != 25 || ev.OutputTokens == 0 || !strings.Contains(ev.ErrorClass, "overloaded_error") ||
		ev.AccountID != acct.ID {
		t.Fatalf("usage %+v", ev)
	}
	// Raw: the error event is forwarded unchanged, then the stream ends.
	r.fake.Queue("sk-ant-api03-main", fakeanthropic.Mode{MidStreamError: true})
	r.clock.Advance(2 * time.Minute) // past the overload pause the error event caused
	resp, body := r.post("/api/v1/messages", r.key, `{"model":"claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"x"}]}`, nil)
	calls := r.fake.Calls()
	if resp.StatusCode != 200 || !bytes.Equal(stripHeartbeats(body), calls[len(calls)-1].Response) ||
		!bytes.HasSuffix(body, []byte("event: error\ndata: {\"error\":{\"message\":\"Overloaded\",\"type\":\"overloaded_error\"},\"type\":\"error\"}\n\n")) {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
}

func TestClaudeBadInputNeverReachesUpstream(t *testing.T) {
	r := newClaudeRig(t)
	r.console("main", 50)
	for name, tc := range map[string]struct {
		key, body string
		status    int
		typ       string
	}{
		"malformed json":   {r.key, `{"model": "claude-sonnet-4-5",`, 400, "invalid_request_error"},
		"missing model":    {r.key, `{"max_tokens":8,"messages":[]}`, 400, "invalid_request_error"},
		"missing msgs":     {r.key, `{"model":"claude-sonnet-4-5","max_tokens":8}`, 400, "invalid_request_error"},
		"missing max":      {r.key, `{"model":"claude-sonnet-4-5","messages":[]}`, 400, "invalid_request_error"},
		"wrong permission": {r.oaiKey, `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`, 403, "permission_error"},
		"no key":           {"", `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`, 401, "authentication_error"},
		"bad key":          {"cr_nope", `{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[]}`, 401, "authentication_error"},
	} {
		resp, body := r.post("/api/v1/messages", tc.key, tc.body, nil)
		var e struct {
			Type  string `json:"type"`
			Error struct{ Type, Message string }
		}
		if err := json.Unmarshal(body, &e); err != nil || resp.StatusCode != tc.status || e.Type != "error" ||
			e.Error.Type != tc.typ || e.Error.Message == "" {
			t.Errorf("%s: %d %s", name, resp.StatusCode, body)
		}
	}
	resp, _ := r.post("/api/v1/messages/count_tokens", r.key, `{"model":"claude-sonnet-4-5"}`, nil)
	if resp.StatusCode != 400 {
		t.Errorf("count_tokens without messages: %d", resp.StatusCode)
	}
	if n := r.fake.Counts(); n.Messages != 0 || n.CountTokens != 0 {
		t.Fatalf("bad input reached the upstream: %+v", n)
	}
}

func TestClaudeCodeRequestPassesThroughUnchanged(t *testing.T) {
	r := newClaudeRig(t)
	// An OAuth account: the relay sends its token and the OAuth beta.
	r.fake.AddAccessToken("sk-ant-oat01-acct")
	if _, err := r.store.Create(context.Background(), accounts.Account{Name: "oauth", Kind: accounts.KindClaudeOAuth,
		Enabled: true, Schedulable: true, TokenExpiresAt: time.Now().Add(8 * time.Hour)},
		accounts.Credentials{AccessToken: "sk-ant-oat01-acct", RefreshToken: "r"}); err != nil {
		t.Fatal(err)
	}
	body := `{"model":"claude-sonnet-4-5","max_tokens":128000,"stream":true,` +
		`"system":[{"type":"text","text":"You are Claude Code."}],` +
		`"messages":[{"role":"user","content":[{"type":"text","text":"Say hello"}]},{"role":"system","content":"per-turn note"},` +
		`{"role":"user","content":"go on"}],` +
		`"tools":[{"name":"Bash","description":"run","input_schema":{"type":"object"}}],` +
		`"metadata":{"user_id":"{\"device_id\":\"0a1b\",\"account_uuid\":\"\",\"session_id\":\"9c3f2d1e-0000-4000-8000-000000000001\"}"},` +
		`"thinking":{"type":"adaptive","display":"omitted"},"context_management":{"edits":[{"type":"clear_thinking_20251015","keep":"all"}]},` +
		`"output_config":{"effort":"medium"},"a_future_field":{"x":[1,2,3]}}`
	beta := "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,per-turn-control-2026-07-01"
	resp, out := r.post("/api/v1/messages?beta=true", r.key, body, map[string]string{
		"anthropic-version": "2023-06-01", "anthropic-beta": beta, "x-app": "cli",
		"anthropic-dangerous-direct-browser-access": "true", "User-Agent": "claude-cli/2.1.330 (external, sdk-cli)",
		"X-Claude-Code-Session-Id": "9c3f2d1e-0000-4000-8000-000000000001", "X-Stainless-Retry-Count": "0",
		"X-Stainless-Timeout": "600", "Accept-Encoding": "gzip, deflate, br, zstd",
	})
	if resp.StatusCode != 200 || !bytes.Contains(out, []byte("event: message_stop")) {
		t.Fatalf("%d %s", resp.StatusCode, out)
	}
	calls := r.fake.Calls()
	got := calls[len(calls)-1]
	if string(got.Body) != body {
		t.Fatalf("body changed on the way:\n%s\n%s", got.Body, body)
	}
	h := got.Header
	switch {
	case got.Query != "beta=true":
		t.Errorf("query %q", got.Query)
	case h.Get("anthropic-version") != "2023-06-01":
		t.Errorf("anthropic-version %q", h.Get("anthropic-version"))
	case h.Get("anthropic-beta") != beta+","+anthropic.OAuthBeta:
		t.Errorf("anthropic-beta %q", h.Get("anthropic-beta"))
	case h.Get("Authorization") != "Bearer sk-ant-oat01-acct" || h.Get("x-api-key") != "":
		t.Errorf("upstream credential headers wrong")
	case h.Get("x-app") != "cli" || h.Get("User-Agent") != "claude-cli/2.1.330 (external, sdk-cli)" ||
		h.Get("X-Stainless-Timeout") != "600" || h.Get("X-Claude-Code-Session-Id") == "":
		t.Errorf("client headers not passed: %v", h)
	case strings.Contains(strings.Join(h.Values("Authorization"), " "), r.key):
		t.Errorf("the relay key went upstream")
	}
	// The same session sticks (one OAuth account here, but the mapping is
	// written under the session id from metadata.user_id).
	ks := keyspace.New(r.env.Prefix)
	if n, _ := r.env.Client.Exists(context.Background(), ks.StickySession("claude", "s_9c3f2d1e-0000-4000-8000-000000000001")).Result(); n != 1 {
		t.Fatal("no sticky mapping for the Claude Code session")
	}
}

func TestClaudeAdminAccountsAndOAuth(t *testing.T) {
	r := newClaudeRig(t)
	call := func(method, path string, in any) (int, map[string]any, string) {
		t.Helper()
		var body io.Reader
		if in != nil {
			b, _ := json.Marshal(in)
			body = bytes.NewReader(b)
		}
		req := httptest.NewRequest(method, path, body)
		req.Header.Set("Content-Type", "application/json")
		resp, err := r.admin.Test(req, 10000)
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(raw, &m)
		return resp.StatusCode, m, string(raw)
	}
	// OAuth: start, sign in at the (fake) page, paste the code.
	st, start, raw := call("POST", "/admin/accounts/oauth/start", map[string]any{})
	if st != 200 {
		t.Fatalf("start %d %s", st, raw)
	}
	authURL, _ := start["authorize_url"].(string)
	pasted, err := r.fake.Authorize(authURL)
	if err != nil {
		t.Fatalf("authorize URL refused: %v (%s)", err, authURL)
	}
	st, acct, raw := call("POST", "/admin/accounts/oauth/exchange", map[string]any{
		"session_id": start["session_id"], "code": pasted, "name": "team-max", "priority": 5})
	if st != 201 || acct["kind"] != "claude-oauth" || acct["status"] != "active" || acct["email"] == "" {
		t.Fatalf("exchange %d %s", st, raw)
	}
	if strings.Contains(raw, "sk-ant-o") || strings.Contains(raw, "verifier") {
		t.Fatalf("the admin API returned a secret: %s", raw)
	}
	// The session is single-use.
	if st, _, _ := call("POST", "/admin/accounts/oauth/exchange", map[string]any{"session_id": start["session_id"], "code": pasted}); st != 404 {
		t.Fatalf("second exchange %d", st)
	}
	// The new account serves requests.
	c := r.client(r.key)
	if _, err := c.Messages.New(context.Background(), params("hi")); err != nil {
		t.Fatal(err)
	}
	id, _ := acct["id"].(string)
	if r.usage.last(t).AccountID != id {
		t.Fatal("the OAuth account did not serve")
	}
	// A forced refresh goes to the token endpoint once.
	before := r.fake.Counts().Refreshes
	if st, _, raw := call("POST", "/admin/accounts/"+id+"/refresh", nil); st != 200 || r.fake.Counts().Refreshes != before+1 {
		t.Fatalf("refresh %d %s", st, raw)
	}

	// Console account CRUD; credentials are write-only.
	st, con, raw := call("POST", "/admin/accounts", map[string]any{"name": "console", "kind": "claude-console",
		"api_key": "sk-ant-api03-secret", "base_url": r.upstream.URL, "proxy": "http://u:pw@127.0.0.1:3128", "models": []string{"claude-*"}})
	if st != 201 || strings.Contains(raw, "sk-ant-api03-secret") || strings.Contains(raw, ":pw@") {
		t.Fatalf("create %d %s", st, raw)
	}
	cid, _ := con["id"].(string)
	if st, _, raw := call("POST", "/admin/accounts", map[string]any{"name": "x", "kind": "claude-console"}); st != 400 ||
		!strings.Contains(raw, "api_key is required") {
		t.Fatalf("invalid create %d %s", st, raw)
	}
	if st, m, _ := call("POST", "/admin/accounts/"+cid+"/pause", map[string]any{"note": "maintenance"}); st != 200 || m["status"] != "paused" {
		t.Fatalf("pause %d %v", st, m)
	}
	if st, m, _ := call("POST", "/admin/accounts/"+cid+"/resume", nil); st != 200 || m["status"] != "active" {
		t.Fatalf("resume %d %v", st, m)
	}
	if st, m, _ := call("PATCH", "/admin/accounts/"+cid, map[string]any{"priority": 7, "proxy": ""}); st != 200 || m["priority"] != float64(7) || m["proxy"] != nil {
		t.Fatalf("patch %d %v", st, m)
	}
	if st, m, _ := call("GET", "/admin/accounts", nil); st != 200 || len(m["accounts"].([]any)) != 2 {
		t.Fatalf("list %d %v", st, m)
	}
	if st, _, _ := call("DELETE", "/admin/accounts/"+cid, nil); st != 204 {
		t.Fatalf("delete %d", st)
	}
	if st, _, _ := call("GET", "/admin/accounts/"+cid, nil); st != 404 {
		t.Fatalf("get deleted %d", st)
	}
}

func TestClaudeClientDisconnectCancelsUpstream(t *testing.T) {
	r := newClaudeRigWith(t, func(c *config.Config) { c.StreamHeartbeat = 20 * time.Millisecond })
	acct := r.console("main", 50)
	hold := make(chan struct{})
	defer close(hold)
	r.fake.Queue("sk-ant-api03-main", fakeanthropic.Mode{Hold: hold})
	req, _ := http.NewRequest(http.MethodPost, r.base+"/api/v1/messages",
		strings.NewReader(`{"model":"claude-sonnet-4-5","max_tokens":8,"stream":true,"messages":[{"role":"user","content":"x"}]}`))
	req.Header.Set("Authorization", "Bearer "+r.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	// Read until the first text delta arrived, then leave.
	buf := make([]byte, 4096)
	var got []byte
	for !bytes.Contains(got, []byte("content_block_delta")) {
		n, err := resp.Body.Read(buf)
		if err != nil {
			t.Fatalf("stream ended early: %v", err)
		}
		got = append(got, buf[:n]...)
	}
	resp.Body.Close()
	// The upstream request is cancelled (the fake's handler returns and
	// records the call) and the usage event says the client left.
	deadline := time.Now().Add(10 * time.Second)
	for len(r.fake.Calls()) == 0 || len(r.usage.all()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the upstream request was not cancelled after the client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ev := r.usage.last(t)
	if ev.ErrorClass != "client_gone" || !ev.Estimated || ev.InputTokens != 25 || ev.OutputTokens == 0 || ev.AccountID != acct.ID {
		t.Fatalf("usage %+v", ev)
	}
}
