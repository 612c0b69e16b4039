package ingress

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/adminauth"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/usage"
)

const adminPassword = "correct horse battery"

// adminServer is a replica whose admin exists with adminPassword.
func (r *keyRig) adminServer() *Server {
	r.t.Helper()
	if err := r.auth().Bootstrap(context.Background(), "admin", adminPassword); err != nil {
		r.t.Fatal(err)
	}
	return r.server()
}

func login(t *testing.T, s *Server, user, pass string) reply {
	t.Helper()
	b, _ := json.Marshal(map[string]string{"username": user, "password": pass})
	return do(t, s, "POST", "/admin/login", nil, string(b))
}

func adminToken(t *testing.T, s *Server) string {
	t.Helper()
	got := login(t, s, "admin", adminPassword)
	tok, _ := got.body["token"].(string)
	if got.status != 200 || tok == "" {
		t.Fatalf("login: %d %s", got.status, got.raw)
	}
	return tok
}

func TestAdminLoginAndLogout(t *testing.T) {
	r := newKeyRig(t)
	s := r.adminServer()
	got := login(t, s, "admin", adminPassword)
	if got.status != 200 || got.body["username"] != "admin" || got.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("login: %d %s", got.status, got.raw)
	}
	exp, err := time.Parse(time.RFC3339, got.body["expires_at"].(string))
	if err != nil || exp.Sub(r.clk.Now()) > 12*time.Hour+time.Second || exp.Before(r.clk.Now()) {
		t.Fatalf("expires_at %v", got.body["expires_at"])
	}
	tok := got.body["token"].(string)
	if got := do(t, s, "GET", "/admin/session", bearer(tok), ""); got.status != 200 || got.body["username"] != "admin" {
		t.Fatalf("session: %d %s", got.status, got.raw)
	}
	checkError(t, "/admin/login", login(t, s, "admin", "wrong password"), 401, "invalid_credentials")
	checkError(t, "/admin/login", login(t, s, "root", adminPassword), 401, "invalid_credentials")
	checkError(t, "/admin/login", do(t, s, "POST", "/admin/login", nil, `{"user":"admin"}`), 400, "invalid_json")

	// Logout revokes the token, on every replica.
	other := r.server()
	if got := do(t, s, "POST", "/admin/logout", bearer(tok), ""); got.status != 200 {
		t.Fatalf("logout: %d %s", got.status, got.raw)
	}
	checkError(t, "/admin/session", do(t, other, "GET", "/admin/session", bearer(tok), ""), 401, "admin_session_ended")
}

func TestAdminLoginIsThrottled(t *testing.T) {
	r := newKeyRig(t)
	s := r.adminServer()
	// Brute force from one address: five wrong guesses, then even the right
	// password is refused until the window passes.
	for i := 0; i < 5; i++ {
		checkError(t, "/admin/login", login(t, s, "admin", fmt.Sprintf("guess-%d", i)), 401, "invalid_credentials")
	}
	got := login(t, s, "admin", adminPassword)
	checkError(t, "/admin/login", got, 429, "too_many_attempts")
	if n, _ := strconv.Atoi(got.header.Get("Retry-After")); n < 14*60 || n > 15*60 {
		t.Fatalf("Retry-After %q; want about 15 minutes", got.header.Get("Retry-After"))
	}
	if strings.Contains(got.raw, "token") {
		t.Fatalf("a throttled login answered a token: %s", got.raw)
	}
	// The counters are in Redis: another replica throttles too.
	checkError(t, "/admin/login", login(t, r.server(), "admin", adminPassword), 429, "too_many_attempts")
}

func TestAdminLoginThrottlePerUsername(t *testing.T) {
	r := newKeyRig(t)
	if err := r.auth().Bootstrap(context.Background(), "admin", adminPassword); err != nil {
		t.Fatal(err)
	}
	a := r.auth()
	ctx := context.Background()
	// Guesses spread over many addresses still hit the username's limit.
	for i := 0; i < 10; i++ {
		if _, err := a.Login(ctx, fmt.Sprintf("10.0.0.%d", i), "admin", "guess"); err != adminauth.ErrBadCredentials {
			t.Fatalf("guess %d: %v", i, err)
		}
	}
	_, err := a.Login(ctx, "10.0.1.1", "admin", adminPassword)
	if _, ok := err.(*adminauth.Throttled); !ok {
		t.Fatalf("after 10 guesses from 10 addresses: %v", err)
	}
}

func TestAdminTokensForgedExpiredOrRevokedAreRejected(t *testing.T) {
	r := newKeyRig(t)
	s := r.adminServer()
	tok := adminToken(t, s)
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %s", tok)
	}
	sign := func(secret, header, payload string) string {
		h := base64.RawURLEncoding.EncodeToString([]byte(header))
		p := base64.RawURLEncoding.EncodeToString([]byte(payload))
		m := hmac.New(sha256.New, []byte(secret))
		m.Write([]byte(h + "." + p))
		return h + "." + p + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	claims, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c map[string]any
	_ = json.Unmarshal(claims, &c)
	elevated := strings.Replace(string(claims), `"sub":"admin"`, `"sub":"root"`, 1)
	hs256 := `{"alg":"HS256","typ":"JWT"}`
	for name, bad := range map[string]string{
		"other secret":      sign("not-the-relay-secret-0123456789abcdef", hs256, string(claims)),
		"alg none":          base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + ".",
		"payload tampered":  parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(elevated)) + "." + parts[2],
		"signature removed": parts[0] + "." + parts[1] + ".",
		"garbage":           "abc",
		"unknown session":   sign(testJWTSecret, hs256, strings.Replace(string(claims), c["jti"].(string), "00000000-0000-0000-0000-000000000000", 1)),
	} {
		got := do(t, s, "GET", "/admin/session", bearer(bad), "")
		if got.status != 401 {
			t.Fatalf("%s: %d %s", name, got.status, got.raw)
		}
	}
	if got := do(t, s, "GET", "/admin/session", bearer(tok), ""); got.status != 200 {
		t.Fatalf("the real token: %d %s", got.status, got.raw)
	}
	r.clk.Advance(12 * time.Hour)
	checkError(t, "/admin/session", do(t, s, "GET", "/admin/session", bearer(tok), ""), 401, "admin_token_expired")
}

func TestNoAdminRouteAnswersWithoutAValidToken(t *testing.T) {
	r := newKeyRig(t)
	s := r.adminServer()
	n := 0
	for _, rt := range s.App().GetRoutes(true) {
		if !strings.HasPrefix(rt.Path, "/admin") || rt.Method == "HEAD" || rt.Method == "OPTIONS" ||
			rt.Path == "/admin/login" && rt.Method == "POST" {
			continue
		}
		path := strings.ReplaceAll(rt.Path, ":id", "00000000-0000-0000-0000-000000000000")
		for name, h := range map[string]map[string]string{
			"no token": nil, "bad token": bearer("x.y.z"), "api key": bearer("cr_" + strings.Repeat("a", 64)),
		} {
			got := do(t, s, rt.Method, path, h, `{}`)
			if got.status != 401 {
				t.Fatalf("%s %s with %s: %d %s", rt.Method, path, name, got.status, got.raw)
			}
		}
		n++
	}
	if n < 12 {
		t.Fatalf("only %d admin routes found", n)
	}
	// Unknown admin paths do not reveal whether they exist.
	if got := do(t, s, "GET", "/admin/does-not-exist", nil, ""); got.status != 401 {
		t.Fatalf("unknown admin path: %d", got.status)
	}
}

func TestPasswordChangeSurvivesRestartAndIsNotOverwritten(t *testing.T) {
	r := newKeyRig(t)
	s := r.adminServer()
	tok := adminToken(t, s)
	other := adminToken(t, s)
	checkError(t, "/admin/password", do(t, s, "POST", "/admin/password", bearer(tok),
		`{"current_password":"wrong one!!","new_password":"a brand new password"}`), 403, "wrong_password")
	checkError(t, "/admin/password", do(t, s, "POST", "/admin/password", bearer(tok),
		`{"current_password":"`+adminPassword+`","new_password":"short"}`), 400, "weak_password")
	got := do(t, s, "POST", "/admin/password", bearer(tok),
		`{"current_password":"`+adminPassword+`","new_password":"a brand new password"}`)
	if got.status != 200 || got.body["token"] == nil {
		t.Fatalf("change: %d %s", got.status, got.raw)
	}
	fresh := got.body["token"].(string)
	// Every earlier session ended; the one handed back works.
	for _, old := range []string{tok, other} {
		checkError(t, "/admin/session", do(t, s, "GET", "/admin/session", bearer(old), ""), 401, "admin_session_ended")
	}
	if got := do(t, s, "GET", "/admin/session", bearer(fresh), ""); got.status != 200 {
		t.Fatalf("new session: %d", got.status)
	}

	// A restart: new processes, ADMIN_PASSWORD still the old value.
	restarted := r.adminServer()
	checkError(t, "/admin/login", login(t, restarted, "admin", adminPassword), 401, "invalid_credentials")
	if got := login(t, restarted, "admin", "a brand new password"); got.status != 200 {
		t.Fatalf("login with the changed password after restart: %d %s", got.status, got.raw)
	}
	// Only a bcrypt hash is stored.
	raw, _ := r.env.Client.Get(context.Background(), r.ks.AdminCredentials()).Result()
	if strings.Contains(raw, "a brand new password") || !strings.Contains(raw, `"hash":"$2a$`) {
		t.Fatalf("stored credentials: %s", raw)
	}
}

func TestPasswordSurvivesARedisRestart(t *testing.T) {
	srv := testredis.StartServer(t, true)
	c := testredis.NewClient(srv.Addr)
	defer c.Close()
	r := newKeyRig(t)
	r.env = &testredis.Env{Client: c, Prefix: r.env.Prefix}
	s := r.adminServer()
	tok := adminToken(t, s)
	if got := do(t, s, "POST", "/admin/password", bearer(tok),
		`{"current_password":"`+adminPassword+`","new_password":"kept across restarts"}`); got.status != 200 {
		t.Fatalf("change: %d %s", got.status, got.raw)
	}
	srv.Stop()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	s = r.adminServer()
	if got := login(t, s, "admin", "kept across restarts"); got.status != 200 {
		t.Fatalf("after the Redis restart: %d %s", got.status, got.raw)
	}
}

func TestGeneratedAdminPasswordIsLoggedOnce(t *testing.T) {
	r := newKeyRig(t)
	var first, second syncBuffer
	ctx := context.Background()
	a := adminauth.New(r.env.Client, r.ks, adminauth.Options{Secret: testJWTSecret, BcryptCost: 4, Log: zerolog.New(&first)})
	if err := a.Bootstrap(ctx, "admin", ""); err != nil {
		t.Fatal(err)
	}
	var line struct {
		Level    string `json:"level"`
		Password string `json:"password"`
	}
	if err := json.Unmarshal([]byte(first.String()), &line); err != nil || line.Level != "warn" || len(line.Password) < 20 {
		t.Fatalf("first boot log: %s", first.String())
	}
	b := adminauth.New(r.env.Client, r.ks, adminauth.Options{Secret: testJWTSecret, BcryptCost: 4, Log: zerolog.New(&second)})
	if err := b.Bootstrap(ctx, "admin", ""); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(second.String(), line.Password) {
		t.Fatalf("the password was logged again: %s", second.String())
	}
	if _, err := b.Login(ctx, "127.0.0.1", "admin", line.Password); err != nil {
		t.Fatalf("login with the generated password: %v", err)
	}
}

func TestAdminKeyLifecycle(t *testing.T) {
	r := newKeyRig(t)
	s := r.adminServer()
	h := bearer(adminToken(t, s))
	ctx := context.Background()

	checkError(t, "/admin/keys", do(t, s, "POST", "/admin/keys", h, `{"name":"x","permisions":["claude"]}`), 400, "invalid_json")
	checkError(t, "/admin/keys", do(t, s, "POST", "/admin/keys", h, `{"name":"x","permissions":[]}`), 400, "invalid_request")
	checkError(t, "/admin/keys", do(t, s, "POST", "/admin/keys", h, `{"name":"x","limits":{"daily_cost_usd":-1}}`), 400, "invalid_request")

	got := do(t, s, "POST", "/admin/keys", h, `{"name":"ci bot","tags":["ci"],"permissions":["claude"],
		"deny_models":["claude-opus-*"],"expiry":{"mode":"activation","duration":"30d"},
		"limits":{"window_sec":3600,"requests_per_window":100,"max_concurrent":2,"daily_cost_usd":2.5,"total_cost_usd":100},
		"bound_accounts":{"claude":"acct-1"}}`)
	if got.status != 201 {
		t.Fatalf("create: %d %s", got.status, got.raw)
	}
	raw := got.body["key"].(string)
	data := got.body["data"].(map[string]any)
	id := data["id"].(string)
	lim := data["limits"].(map[string]any)
	if !apikeys.WellFormed("cr_", raw) || lim["daily_cost_usd"] != 2.5 || data["expiry"].(map[string]any)["duration_sec"] != 30*86400.0 {
		t.Fatalf("created: %s", got.raw)
	}
	if strings.Contains(do(t, s, "GET", "/admin/keys/"+id, h, "").raw, raw) {
		t.Fatal("the key is shown again after creation")
	}
	if got := do(t, s, "GET", "/api/v1/test?model=claude-sonnet-4", bearer(raw), ""); got.status != 200 {
		t.Fatalf("use: %d %s", got.status, got.raw)
	}
	checkError(t, "/v1/test", do(t, s, "GET", "/v1/test", bearer(raw), ""), 403, "permission_denied")

	for _, name := range []string{"alpha", "beta"} {
		if got := do(t, s, "POST", "/admin/keys", h, `{"name":"`+name+`"}`); got.status != 201 {
			t.Fatal(got.raw)
		}
	}
	list := do(t, s, "GET", "/admin/keys?limit=2", h, "")
	if list.body["total"] != 3.0 || len(list.body["data"].([]any)) != 2 {
		t.Fatalf("list: %s", list.raw)
	}
	list = do(t, s, "GET", "/admin/keys?tag=ci", h, "")
	if list.body["total"] != 1.0 || list.body["data"].([]any)[0].(map[string]any)["name"] != "ci bot" {
		t.Fatalf("by tag: %s", list.raw)
	}
	list = do(t, s, "GET", "/admin/keys?q=ALP", h, "")
	if list.body["total"] != 1.0 {
		t.Fatalf("search: %s", list.raw)
	}

	got = do(t, s, "PATCH", "/admin/keys/"+id, h, `{"description":"nightly","limits":{"max_concurrent":5}}`)
	data = got.body["data"].(map[string]any)
	if got.status != 200 || data["description"] != "nightly" || data["limits"].(map[string]any)["max_concurrent"] != 5.0 ||
		data["limits"].(map[string]any)["requests_per_window"] != 100.0 || data["name"] != "ci bot" {
		t.Fatalf("patch: %d %s", got.status, got.raw)
	}
	checkError(t, "/admin/keys", do(t, s, "PATCH", "/admin/keys/"+id, h, `{"permissions":["azure"]}`), 400, "invalid_request")

	if got := do(t, s, "POST", "/admin/keys/"+id+"/disable", h, ""); got.status != 200 {
		t.Fatal(got.raw)
	}
	checkError(t, "/api/v1/test", do(t, s, "GET", "/api/v1/test", bearer(raw), ""), 401, "api_key_disabled")
	if got := do(t, s, "POST", "/admin/keys/"+id+"/enable", h, ""); got.status != 200 {
		t.Fatal(got.raw)
	}

	// Counters as the admin sees them.
	r.env.Client.HIncrBy(ctx, r.ks.UsageTotal(usage.DimKey, id), usage.FieldCostNanos, 250_000_000)
	got = do(t, s, "GET", "/admin/keys/"+id+"/usage", h, "")
	u := got.body["usage"].(map[string]any)
	if got.status != 200 || u["window_requests"] != 1.0 || u["total_cost_usd"] != 0.25 || u["concurrent"] != 0.0 {
		t.Fatalf("usage: %s", got.raw)
	}

	got = do(t, s, "POST", "/admin/keys/"+id+"/regenerate", h, "")
	raw2, _ := got.body["key"].(string)
	if got.status != 200 || raw2 == "" || raw2 == raw {
		t.Fatalf("regenerate: %s", got.raw)
	}
	checkError(t, "/api/v1/test", do(t, s, "GET", "/api/v1/test", bearer(raw), ""), 401, "invalid_api_key")
	if got := do(t, s, "GET", "/api/v1/test", bearer(raw2), ""); got.status != 200 {
		t.Fatalf("regenerated key: %d", got.status)
	}

	if got := do(t, s, "DELETE", "/admin/keys/"+id, h, ""); got.status != 200 {
		t.Fatal(got.raw)
	}
	checkError(t, "/api/v1/test", do(t, s, "GET", "/api/v1/test", bearer(raw2), ""), 401, "invalid_api_key")
	checkError(t, "/admin/keys/x", do(t, s, "GET", "/admin/keys/"+id, h, ""), http.StatusNotFound, "key_not_found")
	checkError(t, "/admin/keys/x", do(t, s, "GET", "/admin/keys/not-a-uuid", h, ""), http.StatusNotFound, "key_not_found")
}
