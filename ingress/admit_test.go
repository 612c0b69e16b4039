package ingress

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/adminauth"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/usage"
)

// testClock is a settable clock shared by a test's replicas.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// keyRig is one Redis shared by any number of relay replicas (Servers), each
// with its own key cache, as separate processes would have.
type keyRig struct {
	t   *testing.T
	env *testredis.Env
	ks  keyspace.Keyspace
	clk *testClock
	cfg config.Config

	// gate holds requests to the test routes with ?hold=1 until closed.
	gate    chan struct{}
	holding atomic.Int64
}

const testJWTSecret = "test-jwt-secret-0123456789abcdef0123456789"

func newKeyRig(t *testing.T) *keyRig {
	env := testredis.New(t)
	return &keyRig{
		t: t, env: env, ks: keyspace.New(env.Prefix), clk: &testClock{t: time.Now()}, gate: make(chan struct{}),
		cfg: config.Config{
			Host: "127.0.0.1", ShutdownTimeout: 5 * time.Second, MaxBodyBytes: 1 << 20,
			KeyCacheTTL: 500 * time.Millisecond, APIKeyPrefix: "cr_", JWTSecret: testJWTSecret,
			Redis: config.Redis{KeyPrefix: env.Prefix}, AdminUsername: "admin",
		},
	}
}

func (r *keyRig) store() *apikeys.Store {
	return apikeys.NewStore(r.env.Client, r.ks, apikeys.Options{CacheTTL: r.cfg.KeyCacheTTL, Now: r.clk.Now})
}

func (r *keyRig) auth() *adminauth.Auth {
	return adminauth.New(r.env.Client, r.ks, adminauth.Options{Secret: r.cfg.JWTSecret, BcryptCost: 4, Now: r.clk.Now})
}

// server is a new replica with the test routes mounted.
func (r *keyRig) server() *Server {
	s := New(Deps{Config: r.cfg, Log: zerolog.Nop(), Redis: r.env.Client, Metrics: metrics.New(),
		Keys: r.store(), Admin: r.auth()})
	for path, service := range map[string]string{
		"/v1/test": apikeys.ServiceOpenAI, "/api/v1/test": apikeys.ServiceClaude, "/gemini/v1/test": apikeys.ServiceGemini,
	} {
		s.app.Get(path, s.requireKey(service), func(c *fiber.Ctx) error {
			adm, err := s.admit(c, service, c.Query("model"))
			if err != nil {
				return err
			}
			defer adm.Release()
			if c.Query("hold") != "" {
				r.holding.Add(1)
				<-r.gate
				r.holding.Add(-1)
			}
			return c.JSON(fiber.Map{"key_id": adm.KeyID, "window": adm.TokenWindowSec})
		})
	}
	return s
}

func (r *keyRig) key(k apikeys.Key) (string, *apikeys.Key) {
	r.t.Helper()
	if k.Name == "" {
		k.Name = "test"
	}
	k.Enabled = true
	raw, stored, err := r.store().Create(context.Background(), k)
	if err != nil {
		r.t.Fatal(err)
	}
	return raw, stored
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r reply) errObj() map[string]any {
	m, _ := r.body["error"].(map[string]any)
	return m
}

func do(t *testing.T, s *Server, method, target string, header map[string]string, body string) reply {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := s.App().Test(req, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	out := reply{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	_ = json.Unmarshal(b, &out.body)
	return out
}

func bearer(key string) map[string]string { return map[string]string{"Authorization": "Bearer " + key} }

// checkError asserts an error reply's status, code and shape in the dialect
// of the route that was called.
func checkError(t *testing.T, path string, got reply, status int, code string) {
	t.Helper()
	if got.status != status {
		t.Fatalf("%s: status %d, want %d (%s)", path, got.status, status, got.raw)
	}
	e := got.errObj()
	if e == nil || e["message"] == "" || e["message"] == nil {
		t.Fatalf("%s: no error message in %s", path, got.raw)
	}
	switch dialectFor(path) {
	case dialectOpenAI:
		if e["code"] != code || e["type"] != openAIType(status) {
			t.Fatalf("%s: OpenAI error %s; want code %s type %s", path, got.raw, code, openAIType(status))
		}
		if _, ok := e["param"]; !ok {
			t.Fatalf("%s: OpenAI error without param: %s", path, got.raw)
		}
	case dialectAnthropic:
		if got.body["type"] != "error" || e["type"] != anthropicType(status) {
			t.Fatalf("%s: Anthropic error %s; want type %s", path, got.raw, anthropicType(status))
		}
	case dialectGoogle:
		if e["code"] != float64(status) || e["status"] != gemini.StatusName(status) {
			t.Fatalf("%s: Google error %s; want status %s", path, got.raw, gemini.StatusName(status))
		}
	}
	if status == http.StatusTooManyRequests {
		if n, err := strconv.Atoi(got.header.Get("Retry-After")); err != nil || n < 1 {
			t.Fatalf("%s: 429 without a Retry-After: %q", path, got.header.Get("Retry-After"))
		}
	}
}

func TestEveryKeyErrorInEachDialect(t *testing.T) {
	r := newKeyRig(t)
	s := r.server()
	ctx := context.Background()
	now := r.clk.Now()
	for _, tc := range []struct {
		path, service string
	}{{"/v1/test", apikeys.ServiceOpenAI}, {"/api/v1/test", apikeys.ServiceClaude}, {"/gemini/v1/test", apikeys.ServiceGemini}} {
		t.Run(tc.service, func(t *testing.T) {
			get := func(key, query string) reply {
				h := map[string]string{}
				if key != "" {
					h = bearer(key)
				}
				return do(t, s, "GET", tc.path+query, h, "")
			}
			good, _ := r.key(apikeys.Key{})
			if got := get(good, ""); got.status != 200 {
				t.Fatalf("a good key: %d %s", got.status, got.raw)
			}

			checkError(t, tc.path, get("", ""), 401, "missing_api_key")
			other, _, _ := apikeys.NewSecret("cr_")
			checkError(t, tc.path, get(other, ""), 401, "invalid_api_key")
			checkError(t, tc.path, get("sk-not-a-relay-key", ""), 401, "invalid_api_key")

			disabled, dk := r.key(apikeys.Key{})
			if _, err := s.keys.Update(ctx, dk.ID, func(k *apikeys.Key) error { k.Enabled = false; return nil }); err != nil {
				t.Fatal(err)
			}
			checkError(t, tc.path, get(disabled, ""), 401, "api_key_disabled")

			expired, _ := r.key(apikeys.Key{Expiry: apikeys.Expiry{Mode: apikeys.ExpiryFixed, At: now.Add(-time.Minute)}})
			got := get(expired, "")
			checkError(t, tc.path, got, 401, "api_key_expired")
			if !strings.Contains(got.raw, now.Add(-time.Minute).UTC().Format(time.RFC3339)) {
				t.Fatalf("the expiry message does not say when: %s", got.raw)
			}

			var others []string
			for _, svc := range apikeys.AllServices {
				if svc != tc.service {
					others = append(others, svc)
				}
			}
			noPerm, _ := r.key(apikeys.Key{Permissions: others})
			checkError(t, tc.path, get(noPerm, ""), 403, "permission_denied")

			denyModel, _ := r.key(apikeys.Key{DenyModels: []string{"big-*"}})
			checkError(t, tc.path, get(denyModel, "?model=big-1"), 403, "model_not_allowed")
			if got := get(denyModel, "?model=small-1"); got.status != 200 {
				t.Fatalf("an allowed model: %d", got.status)
			}

			rate, _ := r.key(apikeys.Key{Limits: apikeys.Limits{WindowSec: 3600, RequestsPerWindow: 1}})
			if got := get(rate, ""); got.status != 200 {
				t.Fatalf("first request: %d %s", got.status, got.raw)
			}
			checkError(t, tc.path, get(rate, ""), 429, "rate_limit_exceeded")

			concRaw, conc := r.key(apikeys.Key{Limits: apikeys.Limits{MaxConcurrent: 1}})
			held, err := s.keys.Admit(ctx, conc) // another request in progress
			if err != nil {
				t.Fatal(err)
			}
			checkError(t, tc.path, get(concRaw, ""), 429, "concurrency_limit_exceeded")
			held.Release()
			if got := get(concRaw, ""); got.status != 200 {
				t.Fatalf("after the other request ended: %d %s", got.status, got.raw)
			}

			tokRaw, tok := r.key(apikeys.Key{Limits: apikeys.Limits{WindowSec: 3600, TokensPerWindow: 100}})
			r.env.Client.IncrBy(ctx, r.ks.UsageTokenWindow(tok.ID, 3600, usage.TokenWindowStart(now, 3600)), 100)
			checkError(t, tc.path, get(tokRaw, ""), 429, "token_limit_exceeded")

			dayRaw, day := r.key(apikeys.Key{Limits: apikeys.Limits{DailyCostNanos: 1e9}})
			r.env.Client.HIncrBy(ctx, r.ks.UsageBucket(usage.DimKey, day.ID, usage.Day, now.UTC().Format(usage.DayFormat)),
				usage.FieldCostNanos, 1e9)
			got = get(dayRaw, "")
			checkError(t, tc.path, got, 402, "daily_cost_limit_exceeded")
			if !strings.Contains(got.raw, "$1.00") {
				t.Fatalf("the budget message does not say the budget: %s", got.raw)
			}

			totRaw, tot := r.key(apikeys.Key{Limits: apikeys.Limits{TotalCostNanos: 5e8}})
			r.env.Client.HIncrBy(ctx, r.ks.UsageTotal(usage.DimKey, tot.ID), usage.FieldCostNanos, 6e8)
			checkError(t, tc.path, get(totRaw, ""), 402, "total_cost_limit_exceeded")
		})
	}
}

func TestKeyIsAcceptedWhereClientsSendIt(t *testing.T) {
	r := newKeyRig(t)
	s := r.server()
	raw, _ := r.key(apikeys.Key{})
	for name, tc := range map[string]struct {
		path   string
		header map[string]string
	}{
		"bearer (Claude Code, OpenAI SDK, Gemini CLI)": {"/api/v1/test", map[string]string{"Authorization": "Bearer " + raw}},
		"x-api-key (Claude Code, Anthropic SDK)":       {"/api/v1/test", map[string]string{"x-api-key": raw}},
		"x-goog-api-key (Gemini SDK)":                  {"/gemini/v1/test", map[string]string{"x-goog-api-key": raw}},
		"api-key (Azure-style clients)":                {"/v1/test", map[string]string{"api-key": raw}},
		"?key= (Gemini SDK)":                           {"/gemini/v1/test?key=" + raw, nil},
		"an unrelated Authorization beside x-api-key":  {"/api/v1/test", map[string]string{"Authorization": "Bearer abc", "x-api-key": raw}},
	} {
		if got := do(t, s, "GET", tc.path, tc.header, ""); got.status != 200 {
			t.Errorf("%s: %d %s", name, got.status, got.raw)
		}
	}
}

func TestRevokedKeyStopsOnEveryReplicaWithinASecond(t *testing.T) {
	r := newKeyRig(t)
	admin, replica := r.server(), r.server()
	raw, k := r.key(apikeys.Key{})
	if got := do(t, replica, "GET", "/v1/test", bearer(raw), ""); got.status != 200 {
		t.Fatalf("before: %d", got.status)
	}
	if _, err := admin.keys.Update(context.Background(), k.ID, func(k *apikeys.Key) error { k.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	checkError(t, "/v1/test", do(t, admin, "GET", "/v1/test", bearer(raw), ""), 401, "api_key_disabled")
	// The replica's cache may answer for at most KEY_CACHE_TTL (config caps
	// it at one second); a second later on its clock the key is refused.
	r.clk.Advance(time.Second)
	checkError(t, "/v1/test", do(t, replica, "GET", "/v1/test", bearer(raw), ""), 401, "api_key_disabled")
}

func TestConcurrencyLimitHoldsAcrossTwoReplicas(t *testing.T) {
	r := newKeyRig(t)
	raw, _ := r.key(apikeys.Key{Limits: apikeys.Limits{MaxConcurrent: 3}})
	var urls []string
	for i := 0; i < 2; i++ {
		s := r.server()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Serve(ln); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
		urls = append(urls, "http://"+ln.Addr().String())
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var (
		wg               sync.WaitGroup
		ok, limited, bad atomic.Int64
		maxHeld          atomic.Int64
	)
	send := func(url string) {
		defer wg.Done()
		req, _ := http.NewRequest("GET", url+"/api/v1/test?hold=1", nil)
		req.Header.Set("x-api-key", raw)
		resp, err := client.Do(req)
		if err != nil {
			t.Error(err)
			bad.Add(1)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case 200:
			ok.Add(1)
		case 429:
			limited.Add(1)
		default:
			bad.Add(1)
		}
	}
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go send(urls[i%2])
	}
	// Every request either holds a slot or has been refused; the holders
	// wait for the gate, so nothing is released while the others arrive.
	deadline := time.Now().Add(30 * time.Second)
	for limited.Load()+bad.Load()+r.holding.Load() < 50 {
		if h := r.holding.Load(); h > maxHeld.Load() {
			maxHeld.Store(h)
		}
		if h := r.holding.Load(); h > 3 {
			t.Fatalf("%d requests in progress; the limit is 3", h)
		}
		if time.Now().After(deadline) {
			t.Fatalf("requests did not settle: %d held, %d refused", r.holding.Load(), limited.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if h := r.holding.Load(); h != 3 || limited.Load() != 47 {
		t.Fatalf("%d held and %d refused; want 3 and 47", h, limited.Load())
	}
	close(r.gate)
	wg.Wait()
	if ok.Load() != 3 || limited.Load() != 47 || bad.Load() != 0 {
		t.Fatalf("ok %d, 429 %d, other %d", ok.Load(), limited.Load(), bad.Load())
	}
	// The slots are free again, on either replica.
	for _, url := range urls {
		req, _ := http.NewRequest("GET", url+"/api/v1/test", nil)
		req.Header.Set("x-api-key", raw)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("after the holders ended: %d", resp.StatusCode)
		}
	}
}

func TestRateWindowResets(t *testing.T) {
	r := newKeyRig(t)
	s := r.server()
	raw, _ := r.key(apikeys.Key{Limits: apikeys.Limits{WindowSec: 60, RequestsPerWindow: 3}})
	for round := 0; round < 3; round++ {
		for i := 0; i < 3; i++ {
			if got := do(t, s, "GET", "/v1/test", bearer(raw), ""); got.status != 200 {
				t.Fatalf("round %d request %d: %d %s", round, i, got.status, got.raw)
			}
		}
		got := do(t, s, "GET", "/v1/test", bearer(raw), "")
		checkError(t, "/v1/test", got, 429, "rate_limit_exceeded")
		if n, _ := strconv.Atoi(got.header.Get("Retry-After")); n > 60 {
			t.Fatalf("Retry-After %d is past the window", n)
		}
		r.clk.Advance(60 * time.Second)
	}
}

func TestCostLimitsStopRequestsOnceSpent(t *testing.T) {
	r := newKeyRig(t)
	s := r.server()
	ctx := context.Background()
	raw, k := r.key(apikeys.Key{Limits: apikeys.Limits{DailyCostNanos: 2e9, TotalCostNanos: 3e9}})
	day := r.ks.UsageBucket(usage.DimKey, k.ID, usage.Day, r.clk.Now().UTC().Format(usage.DayFormat))
	total := r.ks.UsageTotal(usage.DimKey, k.ID)
	spend := func(nanos int64) { // as the usage aggregator settles a request
		r.env.Client.HIncrBy(ctx, day, usage.FieldCostNanos, nanos)
		r.env.Client.HIncrBy(ctx, total, usage.FieldCostNanos, nanos)
	}
	spend(1_999_999_999)
	if got := do(t, s, "GET", "/api/v1/test", bearer(raw), ""); got.status != 200 {
		t.Fatalf("under the daily budget: %d", got.status)
	}
	spend(1)
	checkError(t, "/api/v1/test", do(t, s, "GET", "/api/v1/test", bearer(raw), ""), 402, "daily_cost_limit_exceeded")
	// The next UTC day has a budget again, until the total is spent.
	r.clk.Advance(24 * time.Hour)
	day = r.ks.UsageBucket(usage.DimKey, k.ID, usage.Day, r.clk.Now().UTC().Format(usage.DayFormat))
	if got := do(t, s, "GET", "/api/v1/test", bearer(raw), ""); got.status != 200 {
		t.Fatalf("next day: %d %s", got.status, got.raw)
	}
	spend(1e9)
	checkError(t, "/api/v1/test", do(t, s, "GET", "/api/v1/test", bearer(raw), ""), 402, "total_cost_limit_exceeded")
}

func TestActivationExpiryStartsAtFirstUse(t *testing.T) {
	r := newKeyRig(t)
	s := r.server()
	raw, k := r.key(apikeys.Key{Expiry: apikeys.Expiry{Mode: apikeys.ExpiryActivation, Secs: 3600}})
	r.clk.Advance(48 * time.Hour) // unused keys do not age
	if got := do(t, s, "GET", "/v1/test", bearer(raw), ""); got.status != 200 {
		t.Fatalf("first use: %d %s", got.status, got.raw)
	}
	stored, err := s.keys.Get(context.Background(), k.ID)
	if err != nil || !stored.ActivatedAt.Equal(r.clk.Now().Truncate(time.Millisecond)) {
		t.Fatalf("activated at %v, want %v (%v)", stored.ActivatedAt, r.clk.Now(), err)
	}
	r.clk.Advance(59 * time.Minute)
	if got := do(t, s, "GET", "/v1/test", bearer(raw), ""); got.status != 200 {
		t.Fatalf("within the hour: %d", got.status)
	}
	r.clk.Advance(time.Minute)
	checkError(t, "/v1/test", do(t, s, "GET", "/v1/test", bearer(raw), ""), 401, "api_key_expired")
}

func TestKeyInfoShowsOnlyTheCallersKey(t *testing.T) {
	r := newKeyRig(t)
	s := r.server()
	ctx := context.Background()
	raw, k := r.key(apikeys.Key{Name: "mine", Limits: apikeys.Limits{WindowSec: 3600, RequestsPerWindow: 10, MaxConcurrent: 2,
		DailyCostNanos: 5e9}, BoundAccounts: map[string]string{"claude": "acct-secret-id"}})
	_, other := r.key(apikeys.Key{Name: "theirs"})
	r.env.Client.HIncrBy(ctx, r.ks.UsageTotal(usage.DimKey, k.ID), usage.FieldCostNanos, 1_500_000_000)
	r.env.Client.HIncrBy(ctx, r.ks.UsageTotal(usage.DimKey, other.ID), usage.FieldCostNanos, 9e9)
	do(t, s, "GET", "/api/v1/test", bearer(raw), "")

	for _, path := range []string{"/api/v1/key-info", "/v1/key-info"} {
		got := do(t, s, "GET", path, bearer(raw), "")
		if got.status != 200 || got.body["id"] != k.ID || got.body["name"] != "mine" {
			t.Fatalf("%s: %d %s", path, got.status, got.raw)
		}
		u := got.body["usage"].(map[string]any)
		if u["window_requests"] != 1.0 || u["total_cost_usd"] != 1.5 {
			t.Fatalf("%s: usage %v", path, u)
		}
		lim := got.body["limits"].(map[string]any)
		if lim["requests_per_window"] != 10.0 || lim["daily_cost_usd"] != 5.0 || lim["max_concurrent"] != 2.0 {
			t.Fatalf("%s: limits %v", path, lim)
		}
		for _, secret := range []string{other.ID, "theirs", "acct-secret-id", k.Digest, raw} {
			if strings.Contains(got.raw, secret) {
				t.Fatalf("%s shows %q: %s", path, secret, got.raw)
			}
		}
		checkError(t, path, do(t, s, "GET", path, nil, ""), 401, "missing_api_key")
	}
}

// TestKeyNeverInLogs runs requests with keys in every place and checks the
// relay's log lines.
func TestKeyNeverInLogs(t *testing.T) {
	r := newKeyRig(t)
	var buf syncBuffer
	s := New(Deps{Config: r.cfg, Log: zerolog.New(&buf).Level(zerolog.DebugLevel), Redis: r.env.Client, Metrics: metrics.New(),
		Keys: r.store(), Admin: r.auth()})
	raw, _ := r.key(apikeys.Key{})
	bad, _, _ := apikeys.NewSecret("cr_")
	do(t, s, "GET", "/v1/key-info?key="+raw, nil, "")
	do(t, s, "GET", "/v1/key-info?key="+bad, nil, "")
	do(t, s, "GET", "/v1/key-info", bearer(bad), "")
	do(t, s, "GET", "/v1/nowhere?key="+raw, nil, "")
	if buf.String() == "" {
		t.Fatal("no log lines to check")
	}
	for _, secret := range []string{raw[3:], bad[3:]} {
		if strings.Contains(buf.String(), secret) {
			t.Fatalf("a key reached the log: %s", buf.String())
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
