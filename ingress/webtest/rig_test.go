// Package webtest drives the relay's web UI (the admin pages at /web and
// the key holder's stats page) in real headless Chromium, against a relay
// wired like cmd/relay: real Redis, the fake Vertical Studio upstream, the
// usage recorder and the usage pool that aggregates what the pages show.
package webtest

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/ingress"
	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/adminauth"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/fakeanthropic"
	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/usage"
	"github.com/relaydev/relay/workers"
)

func TestMain(m *testing.M) { testredis.Main(m) }

const (
	adminUser     = "admin"
	adminPassword = "correct-horse-battery"
)

// rig is one relay with everything the web UI reads.
type rig struct {
	t      *testing.T
	env    *testredis.Env
	ks     keyspace.Keyspace
	fake   *fakevs.Fake
	claude *fakeanthropic.Fake
	keys   *apikeys.Store
	reader *usage.Reader
	url    string
}

// start runs s now and stops it when the test ends.
func start(t *testing.T, s interface {
	Start(context.Context) error
	Stop()
}) {
	t.Helper()
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
}

func newRig(t *testing.T) *rig {
	t.Helper()
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	log := zerolog.Nop()
	m := metrics.New()
	r := &rig{t: t, env: env, ks: ks, fake: fakevs.New(fakevs.Options{}), reader: usage.NewReader(env.Client, ks)}
	up := httptest.NewServer(r.fake)
	t.Cleanup(up.Close)
	r.claude = fakeanthropic.New()
	claudeUp := httptest.NewServer(r.claude)
	t.Cleanup(claudeUp.Close)

	cfg := config.Config{
		Host: "127.0.0.1", ShutdownTimeout: 5 * time.Second, StreamHeartbeat: time.Second,
		MaxBodyBytes: 32 << 20, KeyCacheTTL: 100 * time.Millisecond, APIKeyPrefix: apikeys.DefaultPrefix,
		Redis: config.Redis{KeyPrefix: env.Prefix}, JWTSecret: strings.Repeat("j", 32),
		EncryptionKey: strings.Repeat("e", 32),
	}
	box, err := secretbox.New(cfg.EncryptionKey)
	if err != nil {
		t.Fatal(err)
	}

	// The parts in cmd/relay's order: keys, admin, accounts, the Vertical
	// Studio session and archive pool, usage recorder and pool, then HTTP.
	r.keys = apikeys.NewStore(env.Client, ks, apikeys.Options{Prefix: cfg.APIKeyPrefix, CacheTTL: cfg.KeyCacheTTL, Log: log})
	start(t, r.keys)
	admin := adminauth.New(env.Client, ks, adminauth.Options{Secret: cfg.JWTSecret, BcryptCost: 4, Log: log})
	if err := admin.Bootstrap(context.Background(), adminUser, adminPassword); err != nil {
		t.Fatal(err)
	}
	acctStore := accounts.NewStore(env.Client, ks, box, time.Second, nil)
	sched := accounts.NewScheduler(acctStore, env.Client, ks, accounts.Policy{}, log)
	claudeOAuth := anthropic.NewOAuth(anthropic.OAuthConfig{ClientID: r.claude.ClientID, AuthorizeURL: "https://claude.ai/oauth/authorize",
		TokenURL: claudeUp.URL + "/v1/oauth/token", RedirectURL: r.claude.RedirectURL, Scopes: "user:profile user:inference"}, nil)

	client := vs.New(vs.Options{BaseURL: up.URL})
	sess := session.NewVS(session.VSOptions{
		Redis: env.Client, Keys: ks, Box: box, Client: client, Email: "user@example.com", Password: "secret",
		Log: log, Poll: 10 * time.Millisecond, BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	start(t, sess)
	archive, err := workers.New(env.Client, workers.ArchivePoolConfig(ks, "web-archive", workers.ArchiveHandler(client, sess), 2, log, m))
	if err != nil {
		t.Fatal(err)
	}
	start(t, archive)
	models, err := vs.LoadModels("", vs.DefaultTextModels)
	if err != nil {
		t.Fatal(err)
	}

	pricing, err := usage.LoadPricing("")
	if err != nil {
		t.Fatal(err)
	}
	recorder := usage.NewRecorder(env.Client, usage.RecorderConfig{Stream: ks.Stream(usage.StreamName), Log: log, Metrics: m})
	start(t, recorder)
	aggregator := usage.NewAggregator(env.Client, ks, pricing, usage.AggregatorConfig{}, log)
	pool, err := workers.New(env.Client, aggregator.PoolConfig("web-usage", log, m))
	if err != nil {
		t.Fatal(err)
	}
	start(t, pool)

	srv := ingress.New(ingress.Deps{
		Config: cfg, Log: log, Redis: env.Client, Metrics: m, Keys: r.keys, Admin: admin, Usage: recorder,
		Health:    []ingress.HealthCheck{{Name: "vertical_studio", Check: sess.Health}},
		Scheduler: sched, ClaudeOAuth: claudeOAuth,
		VS: &ingress.VerticalStudio{
			Caller: &vs.Caller{Client: client, Creds: sess, Backoff: 10 * time.Millisecond},
			Models: models, Archive: workers.NewArchiveQueue(env.Client, ks), HistoryChars: 100_000,
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	r.url = "http://" + ln.Addr().String()
	return r
}

// eventually waits for cond, failing the test after a generous deadline
// (it waits for background work; it does not measure speed).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// todayRequests is the global request count of today from the aggregates.
func (r *rig) todayRequests() int64 {
	now := time.Now().UTC()
	y, m, d := now.Date()
	tot, err := r.reader.Range(context.Background(), usage.DimGlobal, usage.GlobalID, time.Date(y, m, d, 0, 0, 0, 0, time.UTC), now)
	if err != nil {
		r.t.Fatal(fmt.Errorf("read usage: %w", err))
	}
	return tot.Requests
}
