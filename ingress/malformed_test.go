package ingress

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/fakeanthropic"
	"github.com/relaydev/relay/internal/fakegemini"
	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/workers"
)

// stubImages answers image jobs at once (the malformed corpus must never
// get that far, but a case that does is answered, not hung).
type stubImages struct{}

func (stubImages) Generate(_ context.Context, r workers.ImageRequest) ([]workers.ImageResult, error) {
	return []workers.ImageResult{{B64: "iVBORw0KGgo="}}, nil
}

func (stubImages) Get(context.Context, string) (string, []byte, error) {
	return "", nil, workers.ErrNoImageFile
}

// fullServer is a relay with every route served: Vertical Studio, Claude,
// Gemini, images and the admin API, on real Redis with fake upstreams.
func fullServer(t *testing.T) (addr, key, admin string) {
	t.Helper()
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	box, err := secretbox.New(strings.Repeat("e", 32))
	if err != nil {
		t.Fatal(err)
	}
	vsFake := fakevs.New(fakevs.Options{})
	vsUp := httptest.NewServer(vsFake)
	t.Cleanup(vsUp.Close)
	claude := fakeanthropic.New()
	claude.AddAPIKey("sk-ant-api03-malformed")
	claudeUp := httptest.NewServer(claude)
	t.Cleanup(claudeUp.Close)
	gem := fakegemini.New()
	gem.AddAPIKey("AIzaSy-malformed")
	gemUp := httptest.NewServer(gem)
	t.Cleanup(gemUp.Close)

	cfg := config.Config{
		Host: "127.0.0.1", ShutdownTimeout: 5 * time.Second, MaxBodyBytes: 1 << 20, StreamHeartbeat: time.Minute,
		KeyCacheTTL: 500 * time.Millisecond, APIKeyPrefix: "cr_", JWTSecret: testJWTSecret, EncryptionKey: strings.Repeat("e", 32),
		Redis: config.Redis{KeyPrefix: env.Prefix}, AdminUsername: "admin",
		Claude: config.Claude{BaseURL: claudeUp.URL, UpstreamTimeout: time.Minute},
		Gemini: config.Gemini{UpstreamTimeout: time.Minute}, Accounts: config.Accounts{MaxAttempts: 2},
	}
	store := accounts.NewStore(env.Client, ks, box, time.Second, nil)
	sched := accounts.NewScheduler(store, env.Client, ks, accounts.Policy{StickyTTL: time.Hour, MaxPause: time.Minute,
		OverloadPause: time.Second, ErrorPause: time.Second, RateLimitDefault: time.Second}, zerolog.Nop())
	ctx := context.Background()
	if _, err := store.Create(ctx, accounts.Account{Name: "c", Kind: accounts.KindClaudeConsole, Enabled: true, Schedulable: true},
		accounts.Credentials{APIKey: "sk-ant-api03-malformed"}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Create(ctx, accounts.Account{Name: "g", Kind: accounts.KindGeminiAPI, Enabled: true, Schedulable: true},
		accounts.Credentials{APIKey: "AIzaSy-malformed"}); err != nil {
		t.Fatal(err)
	}
	vsClient := vs.New(vs.Options{BaseURL: vsUp.URL})
	sess := session.NewVS(session.VSOptions{Redis: env.Client, Keys: ks, Box: box, Client: vsClient,
		Email: "user@example.com", Password: "secret", Log: zerolog.Nop(), Poll: 10 * time.Millisecond})
	if err := sess.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.Stop)
	models, err := vs.LoadModels("", vs.DefaultTextModels)
	if err != nil {
		t.Fatal(err)
	}
	imgModels, err := vs.NewModels(DefaultImageModels)
	if err != nil {
		t.Fatal(err)
	}
	keys := apikeys.NewStore(env.Client, ks, apikeys.Options{CacheTTL: cfg.KeyCacheTTL})
	auth := (&keyRig{cfg: cfg, env: env, ks: ks, clk: &testClock{t: time.Now()}}).auth()
	if err := auth.Bootstrap(ctx, "admin", adminPassword); err != nil {
		t.Fatal(err)
	}
	srv := New(Deps{Config: cfg, Log: zerolog.Nop(), Redis: env.Client, Metrics: metrics.New(), Usage: &claudeUsage{},
		Keys: keys, Admin: auth,
		Scheduler: sched, Anthropic: anthropic.NewClient(claudeUp.URL, time.Minute),
		Gemini: gemini.NewClient(gemUp.URL, gemUp.URL, time.Minute),
		VS: &VerticalStudio{Caller: &vs.Caller{Client: vsClient, Creds: sess}, Models: models,
			Archive: workers.NewArchiveQueue(env.Client, ks), HistoryChars: 100_000},
		Images: &Images{Models: imgModels, Queue: stubImages{}, Files: stubImages{}, Timeout: 5 * time.Second},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	if key, _, err = keys.Create(ctx, apikeys.Key{Name: "malformed", Enabled: true}); err != nil {
		t.Fatal(err)
	}
	return ln.Addr().String(), key, adminToken(t, srv)
}

// rawResponse is what came back for a raw request.
type rawResponse struct {
	status int
	header http.Header
	body   []byte
	err    error
}

// sendRaw writes request bytes as they are (so CR/LF, NUL, odd methods and
// unnormalised paths reach the server) and reads one response. The server
// may answer (413, 431) and close before it read everything, so writing
// runs beside reading.
func sendRaw(addr, request string) rawResponse {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return rawResponse{err: err}
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() { _, _ = c.Write([]byte(request)) }()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return rawResponse{err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawResponse{status: resp.StatusCode, header: resp.Header, body: b, err: err}
}

func rawRequest(method, target string, headers []string, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: relay.test\r\nConnection: close\r\n", method, target)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if body != "" || method == "POST" || method == "PATCH" || method == "PUT" {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.String()
}

// errorShape reports which API's error format body is in ("" for none).
func errorShape(body []byte) string {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	var e map[string]any
	if json.Unmarshal(m["error"], &e) != nil {
		return ""
	}
	msg, _ := e["message"].(string)
	if msg == "" {
		return ""
	}
	switch {
	case string(m["type"]) == `"error"` && e["type"] != nil:
		return "anthropic"
	case e["status"] != nil && e["code"] != nil:
		return "google"
	case e["type"] != nil:
		if _, ok := e["param"]; ok {
			return "openai"
		}
	}
	return ""
}

func dialectName(path string) string {
	switch dialectFor(path) {
	case dialectAnthropic:
		return "anthropic"
	case dialectGoogle:
		return "google"
	}
	return "openai"
}

// route is one client or admin route of the corpus.
type route struct {
	method, path string
	auth         string // "key", "admin" or "" (none needed)
	good         string // a valid body, the corpus mutates it
}

// TestMalformedInputCorpus sends every route bad JSON, wrong types, huge
// bodies, invalid UTF-8, header injection, path tricks and unknown methods:
// each must get a 4xx in the called API's error format, never a 5xx, and
// the server must keep serving.
func TestMalformedInputCorpus(t *testing.T) {
	addr, key, admin := fullServer(t)
	routes := []route{
		{"POST", "/v1/chat/completions", "key", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`},
		{"GET", "/v1/models", "key", ""},
		{"GET", "/v1/models/gpt-4o", "key", ""},
		{"POST", "/v1/images/generations", "key", `{"model":"dall-e-3","prompt":"a cat","n":1}`},
		{"GET", "/v1/images/files/abc.png", "", ""},
		{"GET", "/v1/key-info", "key", ""},
		{"GET", "/api/v1/key-info", "key", ""},
		{"POST", "/api/v1/messages", "key", `{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`},
		{"POST", "/api/v1/messages/count_tokens", "key", `{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"hi"}]}`},
		{"POST", "/claude/v1/messages", "key", `{"model":"claude-sonnet-4-5","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}`},
		{"GET", "/api/v1/models", "key", ""},
		{"POST", "/gemini/v1beta/models/gemini-2.5-pro:generateContent", "key", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`},
		{"POST", "/gemini/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", "key", `{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}`},
		{"POST", "/gemini/v1internal:generateContent", "key", `{"model":"gemini-2.5-pro","request":{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}}`},
		{"GET", "/gemini/v1beta/models", "key", ""},
		{"POST", "/admin/login", "", `{"username":"nobody","password":"wrong"}`},
		{"POST", "/admin/keys", "admin", `{"name":"k"}`},
		{"GET", "/admin/keys?limit=10", "admin", ""},
		{"GET", "/admin/keys/no-such-key", "admin", ""},
		{"PATCH", "/admin/keys/no-such-key", "admin", `{"name":"x"}`},
		{"DELETE", "/admin/keys/no-such-key", "admin", ""},
		{"POST", "/admin/accounts", "admin", `{"name":"a","kind":"claude-console","api_key":"sk-ant-x"}`},
		{"PATCH", "/admin/accounts/no-such-account", "admin", `{"name":"x"}`},
		{"POST", "/admin/password", "admin", `{"current_password":"wrong","new_password":"short"}`},
		{"GET", "/admin/usage/summary?from=yesterday", "admin", ""},
		{"GET", "/admin/usage/series?dim=nope&gran=week", "admin", ""},
		{"GET", "/admin/usage/top?by=nothing&limit=-1", "admin", ""},
		{"GET", "/admin/usage/keys/no-such-key?from=1&to=0", "admin", ""},
	}
	authHeader := func(r route) []string {
		switch r.auth {
		case "key":
			return []string{"Authorization: Bearer " + key, "x-api-key: " + key, "anthropic-version: 2023-06-01"}
		case "admin":
			return []string{"Authorization: Bearer " + admin}
		}
		return nil
	}
	huge := `{"model":"x","messages":[{"role":"user","content":"` + strings.Repeat("a", 3<<20) + `"}]}`

	// Each case must get a 4xx in the error format of the API its path
	// belongs to. Cases marked tolerable may also succeed (the request is
	// odd but readable: extra bytes a lenient JSON reader accepts, a
	// harmless header); they must still never get a 5xx. Cases marked
	// transport fail before the request has a path (header bytes fasthttp
	// refuses): any of the three formats will do.
	type tc struct {
		name, req, path      string
		tolerable, transport bool
	}
	var cases []tc
	for _, r := range routes {
		h := authHeader(r)
		p := r.path
		add := func(name, req string) {
			cases = append(cases, tc{name: r.method + " " + p + ": " + name, req: req, path: p})
		}
		tolerate := func(name, req string) {
			cases = append(cases, tc{name: r.method + " " + p + ": " + name, req: req, path: p, tolerable: true})
		}
		transport := func(name, req string) {
			cases = append(cases, tc{name: r.method + " " + p + ": " + name, req: req, path: p, transport: true})
		}
		if r.method == "POST" || r.method == "PATCH" {
			add("bad JSON", rawRequest(r.method, p, h, `{"model":`))
			add("JSON array", rawRequest(r.method, p, h, `[1,2,3]`))
			add("JSON string", rawRequest(r.method, p, h, `"hello"`))
			add("JSON null", rawRequest(r.method, p, h, `null`))
			add("JSON number", rawRequest(r.method, p, h, `123`))
			add("empty body", rawRequest(r.method, p, h, ``))
			add("wrong types", rawRequest(r.method, p, h, `{"model":1,"messages":"x","max_tokens":"ten","stream":"yes","prompt":7,"n":"two",`+
				`"contents":{},"request":[],"name":5,"kind":true,"api_key":[],"username":{},"password":1,"current_password":2,`+
				`"new_password":[],"limits":"none","permissions":"all"}`))
			add("truncated UTF-8 JSON", rawRequest(r.method, p, h, "{\"\xff\": \xfe}"))
			add("huge body", rawRequest(r.method, p, h, huge))
			add("deep nesting", rawRequest(r.method, p, h, `{"model":`+strings.Repeat("[", 100000)+strings.Repeat("]", 100000)+`}`))
			tolerate("invalid UTF-8 in strings", rawRequest(r.method, p, h, strings.ReplaceAll(r.good, "hi", "\xff\xfe\xc3")))
			tolerate("form content type", strings.Replace(rawRequest(r.method, p, h, r.good), "application/json", "application/x-www-form-urlencoded", 1))
			tolerate("duplicate keys", rawRequest(r.method, p, h, `{"model":"a","model":{"x":1},"messages":[],"messages":{}}`))
		}
		if r.auth != "" {
			add("no credentials", rawRequest(r.method, p, nil, r.good))
			add("key with spaces and unicode", rawRequest(r.method, p, []string{"Authorization: Bearer  cr_é ü  ", "x-api-key: \xff\xfe", "anthropic-version: 2023-06-01"}, r.good))
			transport("CR in the key", rawRequest(r.method, p, []string{"Authorization: Bearer cr_abc\rInjected: yes", "x-api-key: cr_\rx"}, r.good))
			transport("NUL in the key", rawRequest(r.method, p, []string{"Authorization: Bearer cr_\x00abc"}, r.good))
			tolerate("folded header", rawRequest(r.method, p, append([]string{"Authorization: Bearer", " " + key}, h[1:]...), r.good))
		}
		tolerate("CR/LF escaped in the request id", rawRequest(r.method, p, append([]string{"X-Request-Id: abc%0d%0aSet-Cookie:%20x=1"}, h...), r.good))
		tolerate("header name with a space", rawRequest(r.method, p, append([]string{"Bad Header: x"}, h...), r.good))
		transport("oversized header", rawRequest(r.method, p, append([]string{"X-Big: " + strings.Repeat("b", 64<<10)}, h...), r.good))
		add("unknown method", rawRequest("BREW", p, h, r.good))
		add("TRACE", rawRequest("TRACE", p, h, ""))
		add("method PUT", rawRequest("PUT", p, h, r.good))
	}
	tricks := []string{
		"/v1/../admin/keys", "/v1/%2e%2e/admin/keys", "/v1/chat/completions/../../admin/keys", "//v1//chat//completions",
		"/api/v1/messages/..%2f..%2fadmin%2fkeys", "/admin/keys/..%2F..%2Fv1%2Fmodels", "/admin/%2e%2e/%2e%2e/etc/passwd",
		"/v1/images/files/..%2f..%2fadmin", "/v1/images/files/%00", "/gemini/v1beta/models/%2e%2e%2fx:generateContent",
		"/" + strings.Repeat("a", 4000), "/v1/" + strings.Repeat("../", 2000) + "x", "/admin/keys/" + strings.Repeat("x", 6000),
		"/v1/chat/completions%00", "/v1/chat/completions;x=1", "/%ff%fe", "/v1/models/%ff", "/api/v1/messages?x=%zz",
		"/web/assets/..%2f..%2fgo.mod", "/web/assets/%2e%2e%2fserver.go",
	}
	for _, p := range tricks {
		for _, m := range []string{"GET", "POST"} {
			cases = append(cases, tc{name: m + " path trick " + p[:min(len(p), 60)], path: p, transport: true,
				req: rawRequest(m, p, []string{"Authorization: Bearer " + key}, `{}`)})
		}
	}

	for _, c := range cases {
		got := sendRaw(addr, c.req)
		if got.err != nil {
			t.Errorf("%s: no answer: %v", c.name, got.err)
			continue
		}
		if got.header.Get("Injected") != "" || strings.Contains(got.header.Get("Set-Cookie"), "x=1") {
			t.Errorf("%s: a header from the request was injected into the response: %v", c.name, got.header)
		}
		if strings.Contains(string(got.body), key) || strings.Contains(string(got.body), admin) {
			t.Errorf("%s: the answer repeats the caller's credentials: %.300s", c.name, got.body)
		}
		if c.tolerable && got.status < 400 {
			continue
		}
		if got.status < 400 || got.status > 499 {
			t.Errorf("%s: status %d, want a 4xx: %.300s", c.name, got.status, got.body)
			continue
		}
		shape := errorShape(got.body)
		want := dialectName(c.path)
		if shape == "" || !c.transport && shape != want {
			t.Errorf("%s: %d body is not a %s error: %.300s", c.name, got.status, want, got.body)
		}
	}
	t.Logf("%d malformed requests, each answered with a 4xx in its API's error format", len(cases))
	if got := sendRaw(addr, rawRequest("GET", "/health", nil, "")); got.status != 200 {
		t.Fatalf("the server does not answer /health after the corpus: %d %v", got.status, got.err)
	}
}
