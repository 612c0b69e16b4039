//go:build faults

package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/internal/fakeanthropic"
	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/usage"
)

// Secrets of the run: none of them may appear in any log.
const (
	jwtSecret     = "faults-jwt-secret-0123456789abcdef0123456789"
	encryptionKey = "faults-encryption-key-0123456789abcdef"
	adminPassword = "faults-admin-password-Q7w9"
	vsEmail       = "faults@example.com"
	vsPassword    = "faults-vs-password-K3p1"
	credA         = "sk-ant-api03-faults-account-a-7f3c"
	credB         = "sk-ant-api03-faults-account-b-19de"
	keyPrefix     = "faults:"
	leaseTTL      = 60 * time.Second // apikeys' default lease lifetime
)

// phase is a stretch of the run; each has its own API key, so usage and
// leases can be checked phase by phase.
type phase struct {
	name  string
	raw   string
	keyID string
	start time.Time
}

// kill is one SIGKILL: the replica, and when it was sent and done.
type kill struct {
	replica     string
	sent, after time.Time
}

// setup is everything the run needs.
type setup struct {
	t        *testing.T
	redis    *testredis.Server
	rdb      *redis.Client
	ks       keyspace.Keyspace
	replicas []*replica
	bal      *balancer
	vs       *fakevs.Fake
	anth     *fakeanthropic.Fake
	cookies  *cookieTap
	admin    string // admin token
	secrets  []string
}

func TestFaults(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, seed>>7))
	t.Logf("random seed %d", seed)
	s := newSetup(t)

	var phases []*phase
	var cur atomic.Pointer[phase]
	enter := func(name string) *phase {
		p := &phase{name: name, start: time.Now()}
		p.raw, p.keyID = s.createKey(name)
		phases = append(phases, p)
		cur.Store(p)
		t.Logf("phase %s", name)
		return p
	}
	enter("steady")
	load := &loadGen{client: s.bal.client(), bal: s.bal, phase: func() (string, string, string) {
		p := cur.Load()
		return p.name, p.raw, p.keyID
	}}
	ctx, stopLoad := context.WithCancel(context.Background())
	workers := load.run(ctx, 8)
	defer func() { stopLoad(); workers.Wait() }()
	pause := func(d time.Duration) { time.Sleep(d) }

	pause(2 * time.Second)

	// Upstream errors: Vertical Studio answers 5xx and 429 to a run of chat
	// requests; the Claude accounts answer 429, then 529, then 500.
	enter("upstream-errors")
	s.vs.FailChat(500, 502, 503, 429, 503, 500, 502, 503, 429, 500, 503, 502)
	s.anth.SetMode(credA, fakeanthropic.Mode{Status: 429, ResetAt: time.Now().Add(time.Second)})
	pause(1500 * time.Millisecond)
	s.anth.SetMode(credA, fakeanthropic.Mode{Status: 529})
	s.anth.SetMode(credB, fakeanthropic.Mode{Status: 529})
	pause(time.Second)
	s.anth.SetMode(credA, fakeanthropic.Mode{Status: 500})
	s.anth.SetMode(credB, fakeanthropic.Mode{Status: 503})
	s.vs.FailChat(503, 503, 500, 500)
	pause(time.Second)
	s.anth.SetMode(credA, fakeanthropic.Mode{})
	s.anth.SetMode(credB, fakeanthropic.Mode{})
	s.settle(load, "after the upstream errors")

	// SIGKILL replicas at random moments, and start them again.
	enter("sigkill")
	var kills []kill
	for i := 0; i < 3; i++ {
		pause(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		r := s.replicas[rng.IntN(len(s.replicas))]
		k := kill{replica: r.name, sent: time.Now()}
		r.kill()
		k.after = time.Now()
		kills = append(kills, k)
		pause(time.Duration(100+rng.IntN(400)) * time.Millisecond)
		r.start()
	}
	s.settle(load, "after the SIGKILLs")

	// Restart Redis (append-only file on, as docker-compose runs it).
	enter("redis-restart")
	pause(time.Second)
	s.redis.Stop()
	pause(300 * time.Millisecond)
	if err := s.redis.Start(); err != nil {
		t.Fatalf("redis restart: %v", err)
	}
	for _, r := range s.replicas {
		s.waitHealthy(r)
	}
	s.settle(load, "after the Redis restart")

	// Rolling restart: each replica leaves the balancer, drains and exits on
	// SIGTERM, and is back before the next one goes. Every request started
	// since the load ran clean again must succeed.
	calm := time.Now()
	enter("rolling-restart")
	for _, r := range s.replicas {
		pause(700 * time.Millisecond)
		r.term()
		r.start()
	}
	pause(700 * time.Millisecond)
	rollEnd := time.Now()
	enter("after")
	pause(1500 * time.Millisecond)
	stopLoad()
	workers.Wait()

	s.check(load.all(), phases, kills, calm, rollEnd)
}

func newSetup(t *testing.T) *setup {
	dir := t.TempDir()
	bin := buildRelay(t, dir)
	srv := testredis.StartServer(t, true)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr})
	t.Cleanup(func() { rdb.Close() })

	s := &setup{t: t, redis: srv, rdb: rdb, ks: keyspace.New(keyPrefix), cookies: &cookieTap{}}
	s.vs = fakevs.New(fakevs.Options{Email: vsEmail, Password: vsPassword, Delay: 25 * time.Millisecond})
	s.vs.SetImages(fakevs.ImageBehaviour{Delay: 300 * time.Millisecond})
	vsUp := httptest.NewServer(s.cookies.wrap(s.vs))
	t.Cleanup(vsUp.Close)
	s.anth = fakeanthropic.New()
	s.anth.AddAPIKey(credA)
	s.anth.AddAPIKey(credB)
	anthUp := httptest.NewServer(slowFlush(s.anth, 15*time.Millisecond))
	t.Cleanup(anthUp.Close)

	env := []string{
		"REDIS_URL=" + srv.URL, "REDIS_KEY_PREFIX=" + keyPrefix, "JWT_SECRET=" + jwtSecret, "ENCRYPTION_KEY=" + encryptionKey,
		"ADMIN_PASSWORD=" + adminPassword, "VS_EMAIL=" + vsEmail, "VS_PASSWORD=" + vsPassword, "VS_BASE_URL=" + vsUp.URL,
		"ANTHROPIC_BASE_URL=" + anthUp.URL, "SHUTDOWN_TIMEOUT=30s", "IMAGE_TIMEOUT=30s",
		// A job of a killed process is taken over well within IMAGE_TIMEOUT.
		"WORKER_VISIBILITY_TIMEOUT=3s", "LOG_LEVEL=info",
		"ACCOUNT_OVERLOAD_PAUSE=1s", "ACCOUNT_ERROR_PAUSE=1s", "ACCOUNT_RATE_LIMIT_DEFAULT=1s", "ACCOUNT_MAX_PAUSE=2s",
		"ACCOUNT_SYNC_INTERVAL=200ms",
	}
	for _, name := range []string{"A", "B"} {
		r := newReplica(t, name, bin, env)
		r.start()
		s.replicas = append(s.replicas, r)
	}
	s.bal = &balancer{replicas: s.replicas}
	s.secrets = []string{jwtSecret, encryptionKey, adminPassword, vsPassword, credA, credB}

	var login struct{ Token string }
	if code := s.adminDo("POST", "/admin/login", map[string]string{"username": "admin", "password": adminPassword}, &login); code != 200 || login.Token == "" {
		t.Fatalf("admin login: %d", code)
	}
	s.admin = login.Token
	s.secrets = append(s.secrets, s.admin)
	for i, cred := range []string{credA, credB} {
		body := map[string]any{"name": fmt.Sprintf("claude-%d", i), "kind": "claude-console", "api_key": cred, "priority": 10}
		if code := s.adminDo("POST", "/admin/accounts", body, nil); code != 201 && code != 200 {
			t.Fatalf("create account: %d", code)
		}
	}
	return s
}

// adminDo calls the admin API on replica A (bounded retries while it
// restarts are not needed: admin calls happen while both are up).
func (s *setup) adminDo(method, path string, in, out any) int {
	s.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://relay.lb"+path, body)
	req.Header.Set("Content-Type", "application/json")
	if s.admin != "" {
		req.Header.Set("Authorization", "Bearer "+s.admin)
	}
	resp, err := s.bal.client().Do(req)
	if err != nil {
		s.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			s.t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
	}
	if resp.StatusCode >= 300 {
		s.t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// createKey makes the API key of one phase, with a concurrency limit so
// every request takes a lease.
func (s *setup) createKey(name string) (raw, id string) {
	var created struct {
		Key  string
		Data struct{ ID string }
	}
	body := map[string]any{"name": "faults-" + name, "limits": map[string]any{"max_concurrent": 100}}
	if code := s.adminDo("POST", "/admin/keys", body, &created); code != 201 || created.Key == "" {
		s.t.Fatalf("create key: %d", code)
	}
	s.secrets = append(s.secrets, created.Key)
	return created.Key, created.Data.ID
}

func (s *setup) waitHealthy(r *replica) {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + r.addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s did not become healthy within 60s", r.name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// settle waits (bounded) until the load runs clean again: the last 16
// answers were all complete.
func (s *setup) settle(load *loadGen, when string) {
	s.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !load.recentAllOK(16) {
		if time.Now().After(deadline) {
			s.t.Fatalf("the load did not run clean again within 60s %s", when)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cookieTap records the session cookies the fake Vertical Studio hands out,
// so the log scan can look for them.
type cookieTap struct {
	mu     sync.Mutex
	values []string
}

func (c *cookieTap) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&tapWriter{ResponseWriter: w, tap: c}, r)
	})
}

func (c *cookieTap) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.values...)
}

type tapWriter struct {
	http.ResponseWriter
	tap  *cookieTap
	seen bool
}

func (w *tapWriter) take() {
	if w.seen {
		return
	}
	w.seen = true
	for _, sc := range w.Header().Values("Set-Cookie") {
		if name, rest, ok := strings.Cut(sc, "="); ok && strings.HasPrefix(name, fakevs.CookieName) {
			v, _, _ := strings.Cut(rest, ";")
			if len(v) >= 16 {
				w.tap.mu.Lock()
				w.tap.values = append(w.tap.values, v)
				w.tap.mu.Unlock()
			}
		}
	}
}

func (w *tapWriter) WriteHeader(code int)        { w.take(); w.ResponseWriter.WriteHeader(code) }
func (w *tapWriter) Write(b []byte) (int, error) { w.take(); return w.ResponseWriter.Write(b) }
func (w *tapWriter) Flush() {
	w.take()
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// slowFlush paces a streaming upstream: every flush waits d first, so
// streams stay open long enough to be drained, cut or killed.
func slowFlush(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&pacedWriter{ResponseWriter: w, d: d}, r)
	})
}

type pacedWriter struct {
	http.ResponseWriter
	d time.Duration
}

func (w *pacedWriter) Flush() {
	time.Sleep(w.d)
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// check compares what the clients got with what the relay counted, and
// prints the table.
func (s *setup) check(results []result, phases []*phase, kills []kill, calm, rollEnd time.Time) {
	t := s.t
	ctx := context.Background()
	var report strings.Builder
	var failures []string
	fail := func(format string, args ...any) { failures = append(failures, fmt.Sprintf(format, args...)) }

	// Requests, phase by phase.
	type counts struct{ sent, ok, clean, cut, noConn, unfit int }
	byPhase := map[string]*counts{}
	var total counts
	for _, r := range results {
		c := byPhase[r.phase]
		if c == nil {
			c = &counts{}
			byPhase[r.phase] = c
		}
		for _, c := range []*counts{c, &total} {
			c.sent++
			switch r.outcome {
			case outOK:
				c.ok++
			case outError:
				c.clean++
			case outCut:
				c.cut++
			case outNoConn:
				c.noConn++
			default:
				c.unfit++
			}
		}
	}
	fmt.Fprintf(&report, "\n%-18s %6s %6s %12s %6s %10s %8s\n", "phase", "sent", "ok", "clean error", "cut", "no replica", "unclean")
	for _, p := range phases {
		c := byPhase[p.name]
		if c == nil {
			c = &counts{}
		}
		fmt.Fprintf(&report, "%-18s %6d %6d %12d %6d %10d %8d\n", p.name, c.sent, c.ok, c.clean, c.cut, c.noConn, c.unfit)
	}
	errKinds := map[string]int{}
	for _, r := range results {
		if r.outcome == outError {
			errKinds[fmt.Sprintf("%s %s %d", r.phase, r.kind, r.status)]++
		}
	}
	var errList []string
	for k, n := range errKinds {
		errList = append(errList, fmt.Sprintf("%s ×%d", k, n))
	}
	sort.Strings(errList)
	fmt.Fprintf(&report, "%-18s %6d %6d %12d %6d %10d %8d\n", "total", total.sent, total.ok, total.clean, total.cut, total.noConn, total.unfit)
	fmt.Fprintf(&report, "clean errors (phase kind status ×n): %s\n", strings.Join(errList, ", "))

	// Every failure is explained: unclean answers never; cuts only on a
	// replica SIGKILLed while the request was in flight; nothing failed
	// during the rolling restart.
	cutsOutsideKill, rollFailures := 0, 0
	for _, r := range results {
		switch r.outcome {
		case outUnfit, outNoConn:
			fail("request %s (%s, %s, replica %s): %s: %s", r.id, r.kind, r.phase, r.replica, r.outcome, r.detail)
		case outCut:
			explained := false
			for _, k := range kills {
				if k.replica == r.replica && !r.start.After(k.after) && !r.end.Before(k.sent) {
					explained = true
				}
			}
			if !explained {
				cutsOutsideKill++
				fail("request %s (%s, %s, replica %s) was cut without a SIGKILL: %s", r.id, r.kind, r.phase, r.replica, r.detail)
			}
		}
		if r.outcome != outOK && !r.start.Before(calm) && !r.start.After(rollEnd) {
			rollFailures++
			fail("request %s (%s, replica %s) was in flight during the rolling restart and failed: %s: %s",
				r.id, r.kind, r.replica, r.outcome, r.detail)
		}
	}

	// Usage: wait until the usage pool has taken every event, then compare.
	stream := s.ks.Stream(usage.StreamName)
	deadline := time.Now().Add(60 * time.Second)
	for {
		groups, err := s.rdb.XInfoGroups(ctx, stream).Result()
		if err == nil && len(groups) > 0 && groups[0].Pending == 0 && groups[0].Lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the usage pool did not take every event within 60s: %+v %v", groups, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	entries, err := s.rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	events := map[string]usage.Event{} // by event id
	byRequest := map[string]map[string]bool{}
	for _, e := range entries {
		raw, _ := e.Values[usage.StreamField].(string)
		ev, err := usage.DecodeEvent([]byte(raw))
		if err != nil {
			fail("usage entry %s does not decode: %v", e.ID, err)
			continue
		}
		events[ev.ID] = ev
		if byRequest[ev.RequestID] == nil {
			byRequest[ev.RequestID] = map[string]bool{}
		}
		byRequest[ev.RequestID][ev.ID] = true
	}
	dead, _ := s.rdb.XLen(ctx, s.ks.DeadLetter(usage.StreamName)).Result()
	okCounted, okTokens, evTokensOK, lost, twice, mismatched, errWithEvent, errCount := 0, int64(0), int64(0), 0, 0, 0, 0, 0
	for _, r := range results {
		n := len(byRequest[r.id])
		if n > 1 {
			twice++
			fail("request %s (%s, %s, %s) has %d usage events", r.id, r.kind, r.phase, r.outcome, n)
		}
		switch r.outcome {
		case outOK:
			okTokens += r.tokens.total()
			if n == 0 {
				lost++
				fail("request %s (%s, %s) got a complete answer but has no usage event", r.id, r.kind, r.phase)
				continue
			}
			okCounted++
			for id := range byRequest[r.id] {
				ev := events[id]
				got := tokens{ev.InputTokens, ev.OutputTokens, ev.CacheCreateTokens, ev.CacheReadTokens}
				evTokensOK += ev.Total()
				if got != r.tokens || ev.KeyID != r.key {
					mismatched++
					fail("request %s (%s): client saw %+v, usage event %+v for key %s", r.id, r.kind, r.tokens, got, ev.KeyID)
				}
			}
		case outError:
			errCount++
			if n == 1 {
				errWithEvent++
			}
		}
	}
	// Aggregates: the admin API's per-key totals are the distinct events.
	perKeyOK := 0
	for _, p := range phases {
		var want struct{ requests, tokens int64 }
		for _, ev := range events {
			if ev.KeyID == p.keyID {
				want.requests++
				want.tokens += ev.Total()
			}
		}
		var got struct {
			Usage struct {
				Concurrent    int64 `json:"concurrent"`
				TotalRequests int64 `json:"total_requests"`
				TotalTokens   int64 `json:"total_tokens"`
			} `json:"usage"`
		}
		if code := s.adminDo("GET", "/admin/keys/"+p.keyID+"/usage", nil, &got); code != 200 {
			fail("key usage for %s: status %d", p.name, code)
			continue
		}
		if got.Usage.TotalRequests != want.requests || got.Usage.TotalTokens != want.tokens {
			fail("key %s: /admin usage says %d requests %d tokens; its distinct events are %d requests %d tokens",
				p.name, got.Usage.TotalRequests, got.Usage.TotalTokens, want.requests, want.tokens)
		} else {
			perKeyOK++
		}
	}

	// What the fakes served.
	served := int64(0)
	for _, c := range s.vs.Chats() {
		if c.Finished {
			served += 11 + 7 // fakevs.DefaultReply
		}
	}
	words := int64(len(strings.SplitAfter(s.anth.Reply, " ")))
	u := s.anth.Usage
	for _, c := range s.anth.Calls() {
		if c.Path == "/v1/messages" && c.Status == 200 {
			served += u.Input + u.CacheCreate + u.CacheRead + words
		}
	}
	if okTokens > served {
		fail("clients got %d tokens in complete answers, but the fakes served only %d", okTokens, served)
	}

	// Image jobs: none pending or dead after the load; no prompt generated
	// twice at once, nor twice at all where no process or upstream failed.
	imgStream := s.ks.Stream("images")
	deadline = time.Now().Add(60 * time.Second)
	for {
		groups, err := s.rdb.XInfoGroups(ctx, imgStream).Result()
		if err == nil && len(groups) > 0 && groups[0].Pending == 0 && groups[0].Lag == 0 {
			break
		}
		if time.Now().After(deadline) {
			fail("image jobs still pending 60s after the load: %+v %v", groups, err)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	imgDead, _ := s.rdb.XLen(ctx, s.ks.DeadLetter("images")).Result()
	starts := map[string]int{}
	for _, ir := range s.vs.ImageRequests() {
		starts[ir.Content]++
	}
	imgSent, imgOK, rerun, rerunCalm := 0, 0, 0, 0
	for _, r := range results {
		if r.kind != image {
			continue
		}
		imgSent++
		if r.outcome == outOK {
			imgOK++
			for id := range byRequest[r.id] {
				if events[id].Images != 1 {
					fail("image request %s: usage event counts %d images", r.id, events[id].Images)
				}
			}
		}
		n := 0
		for content, c := range starts {
			if strings.Contains(content, imagePrompt(r.id, r.phase)) {
				n += c
			}
		}
		if n > 1 {
			rerun++
			if r.phase == "steady" || r.phase == "after" {
				rerunCalm++
				fail("image request %s (%s) was generated %d times with no fault to explain it", r.id, r.phase, n)
			}
		}
	}
	ist := s.vs.ImageStats()
	if ist.MaxSamePrompt > 1 {
		fail("one image prompt was generating %d times at once", ist.MaxSamePrompt)
	}

	// Leases: after the load none is held, except those of requests that
	// were in flight on a SIGKILLed process (they expire on their own).
	leftover, unexplained := 0, 0
	now := time.Now()
	for _, p := range phases {
		zs, err := s.rdb.ZRangeByScoreWithScores(ctx, s.ks.APIKeyLeases(p.keyID), &redis.ZRangeBy{
			Min: fmt.Sprint(now.UnixMilli()), Max: "+inf"}).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, z := range zs {
			leftover++
			taken := time.UnixMilli(int64(z.Score)).Add(-leaseTTL)
			ok := false
			for _, k := range kills {
				if !taken.Before(k.sent.Add(-10*time.Second)) && !taken.After(k.after) {
					ok = true
				}
			}
			if !ok {
				unexplained++
				fail("key %s: a lease taken at %s is still held and no SIGKILL explains it", p.name, taken.Format(time.RFC3339Nano))
			}
		}
	}

	// Logs: no panic, no data race, no secret.
	secrets := append(append([]string(nil), s.secrets...), s.cookies.all()...)
	panics, leaks := 0, 0
	panicRE := regexp.MustCompile(`(?m)^panic: |^goroutine \d+ \[running\]|WARNING: DATA RACE|"level":"panic"|"level":"fatal"`)
	for _, r := range s.replicas {
		logs := r.logs.String()
		if m := panicRE.FindAllStringIndex(logs, -1); len(m) > 0 {
			panics += len(m)
			fail("%s logs hold a panic or race:\n%s", r.name, tail(logs[m[0][0]:], 3000))
		}
		for _, sec := range secrets {
			if strings.Contains(logs, sec) {
				leaks++
				fail("%s logs hold a secret (%s…)", r.name, sec[:6])
			}
		}
	}

	fmt.Fprintf(&report, "\n%-58s %s\n", "check", "result")
	row := func(name string, format string, args ...any) {
		fmt.Fprintf(&report, "%-58s %s\n", name, fmt.Sprintf(format, args...))
	}
	row("SIGKILLs / Redis restarts / rolling restarts", "%d / 1 / %d replicas", len(kills), len(s.replicas))
	row("connections refused and retried on the other replica", "%d", s.bal.refused.Load())
	row("cuts not explained by a SIGKILL of the serving replica", "%d of %d cuts", cutsOutsideKill, total.cut)
	row("requests failed during the rolling restart", "%d", rollFailures)
	row("complete answers with exactly one usage event", "%d of %d", okCounted, total.ok)
	row("usage events lost (complete answer, no event)", "%d", lost)
	row("requests counted twice (two distinct events)", "%d", twice)
	row("events whose tokens differ from what the client saw", "%d", mismatched)
	row("clean errors with a usage event", "%d of %d", errWithEvent, errCount)
	row("tokens: complete answers / their events / fakes served", "%d / %d / %d", okTokens, evTokensOK, served)
	row("per-key /admin usage totals equal to distinct events", "%d of %d keys", perKeyOK, len(phases))
	row("usage events in the stream / distinct / dead-lettered", "%d / %d / %d", len(entries), len(events), dead)
	row("leases still held / not explained by a SIGKILL", "%d / %d", leftover, unexplained)
	row("image requests sent / answered with an image", "%d / %d", imgSent, imgOK)
	row("image generations started / finished (fake)", "%d / %d", ist.Started, ist.Finished)
	row("image jobs pending after the load / dead-lettered", "%d / %d", 0, imgDead)
	row("image prompts generated more than once (in calm phases)", "%d (%d)", rerun, rerunCalm)
	row("most generations of one prompt at the same time", "%d", ist.MaxSamePrompt)
	row("panics or data races in logs", "%d", panics)
	row("secrets in logs (of "+fmt.Sprint(len(secrets))+" scanned)", "%d", leaks)
	fmt.Println(report.String())
	t.Log(report.String())

	if dead > 0 {
		fail("%d usage events were dead-lettered", dead)
	}
	sort.Strings(failures)
	for i, f := range failures {
		if i == 40 {
			t.Errorf("… and %d more", len(failures)-40)
			break
		}
		t.Error(f)
	}
}
