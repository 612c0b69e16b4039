package ingress

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/usage"
)

// usageAdminServer serves the usage routes under /usage-test (admin auth is
// the /admin group's business and is tested with it), over aggregates of
// known events.
func usageAdminServer(t *testing.T) (*Server, time.Time) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	cfg := config.Config{Host: "127.0.0.1", ShutdownTimeout: time.Second, MaxBodyBytes: 1 << 20,
		Redis: config.Redis{KeyPrefix: env.Prefix}}
	s := New(Deps{Config: cfg, Log: zerolog.Nop(), Redis: env.Client, Metrics: metrics.New()})
	s.usageAdminRoutes(s.app.Group("/usage-test"))

	pricing, err := usage.ParsePricing(nil)
	if err != nil {
		t.Fatal(err)
	}
	agg := usage.NewAggregator(env.Client, ks, pricing, usage.AggregatorConfig{}, zerolog.Nop())
	h := time.Now().UTC().Truncate(time.Hour)
	_, err = agg.Apply(context.Background(), []usage.Event{
		{ID: "1", Time: h, KeyID: "alice", Model: "claude-sonnet-4", InputTokens: 1_000_000, Status: 200},
		{ID: "2", Time: h.Add(time.Minute), KeyID: "bob", Model: "claude-opus-4", OutputTokens: 1_000_000, Status: 200},
		{ID: "3", Time: h.Add(2 * time.Minute), KeyID: "bob", Model: "homebrew-llm", InputTokens: 10, Status: 500},
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, h
}

func getJSON(t *testing.T, s *Server, path string, wantStatus int) map[string]any {
	t.Helper()
	resp, err := s.app.Test(httptest.NewRequest(http.MethodGet, path, nil), 5000)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: %d %s, want %d", path, resp.StatusCode, body, wantStatus)
	}
	var out map[string]any
	if err := json.Unmarshal(body, &out); err != nil {
		t.Fatalf("GET %s: %v in %s", path, err, body)
	}
	return out
}

func TestAdminUsageRoutes(t *testing.T) {
	s, h := usageAdminServer(t)
	from := h.Add(-time.Hour).Format(time.RFC3339)
	to := h.Add(time.Hour).Format(time.RFC3339)

	sum := getJSON(t, s, "/usage-test/usage/summary?from="+from+"&to="+to, 200)
	tot := sum["totals"].(map[string]any)
	// $3 + $75 + nothing for the unknown model.
	if tot["requests"] != 3.0 || tot["errors"] != 1.0 || tot["cost_nanos"] != 78e9 || tot["cost_usd"] != 78.0 {
		t.Errorf("summary totals %v", tot)
	}
	bob := getJSON(t, s, "/usage-test/usage/summary?dim=key&id=bob&from="+from+"&to="+to, 200)
	if bob["totals"].(map[string]any)["requests"] != 2.0 || bob["all_time"].(map[string]any)["requests"] != 2.0 {
		t.Errorf("bob's summary %v", bob)
	}

	series := getJSON(t, s, "/usage-test/usage/series?dim=model&id=claude-sonnet-4&granularity=hour&from="+from+"&to="+to, 200)
	points := series["points"].([]any)
	if len(points) != 2 || points[0].(map[string]any)["requests"] != 0.0 || points[1].(map[string]any)["input_tokens"] != 1e6 {
		t.Errorf("series %v", points)
	}

	top := getJSON(t, s, "/usage-test/usage/top?dim=key&by=cost&from="+from+"&to="+to+"&limit=5", 200)
	items := top["items"].([]any)
	if len(items) != 2 || items[0].(map[string]any)["id"] != "bob" || items[1].(map[string]any)["id"] != "alice" {
		t.Errorf("top keys by cost %v", items)
	}
	allTime := getJSON(t, s, "/usage-test/usage/top?dim=model&by=tokens&from=all", 200)
	if items := allTime["items"].([]any); len(items) != 3 || allTime["from"] != "all" {
		t.Errorf("top models of all time %v", allTime)
	}

	unknown := getJSON(t, s, "/usage-test/usage/unknown-models", 200)
	if models := unknown["models"].([]any); len(models) != 1 || models[0].(map[string]any)["model"] != "homebrew-llm" {
		t.Errorf("unknown models %v", unknown)
	}

	key := getJSON(t, s, "/usage-test/usage/keys/bob", 200)
	if key["total"].(map[string]any)["requests"] != 2.0 || len(key["models"].([]any)) != 2 {
		t.Errorf("key summary %v", key)
	}

	// A date as to covers that whole day.
	day := getJSON(t, s, "/usage-test/usage/summary?from="+h.Format(time.DateOnly)+"&to="+h.Format(time.DateOnly), 200)
	if day["totals"].(map[string]any)["requests"] != 3.0 {
		t.Errorf("summary of today by date %v", day)
	}
}

func TestAdminUsageBadParams(t *testing.T) {
	s, _ := usageAdminServer(t)
	for path, want := range map[string]string{
		"/usage-test/usage/summary?from=yesterday":                                    "from:",
		"/usage-test/usage/summary?from=2025-03-10&to=2025-03-01":                     "must be before",
		"/usage-test/usage/summary?dim=user&id=x":                                     "dim must be one of",
		"/usage-test/usage/summary?dim=key":                                           "id is required",
		"/usage-test/usage/series?dim=key&id=a&granularity=week":                      "granularity must be hour or day",
		"/usage-test/usage/series?dim=key&id=a&from=2020-01-01&to=2025-01-01":         "more than",
		"/usage-test/usage/top?by=latency":                                            "not cost, tokens or requests",
		"/usage-test/usage/top?limit=0":                                               "limit must be",
		"/usage-test/usage/top?dim=global":                                            "global has one value",
		"/usage-test/usage/summary?from=2020-01-01T00:00:00Z&to=2025-01-01T00:00:00Z": "longer than",
	} {
		out := getJSON(t, s, path, 400)
		e, _ := out["error"].(map[string]any)
		if msg, _ := e["message"].(string); !strings.Contains(msg, want) {
			t.Errorf("GET %s: error %v, want a message with %q", path, out, want)
		}
	}
}
