package usage

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func mustPricing(t testing.TB) *Pricing {
	t.Helper()
	p, err := ParsePricing(nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPricingResolve(t *testing.T) {
	p := mustPricing(t)
	for in, want := range map[string]string{
		"claude-sonnet-4":                "claude-sonnet-4",
		"claude-sonnet-4-20250514":       "claude-sonnet-4",
		"Claude-Sonnet-4-5-20250929":     "claude-sonnet-4-5",
		"claude-opus-4-1-20250805":       "claude-opus-4-1",
		"claude-opus-4-5-20251101":       "claude-opus-4-5",
		"claude-haiku-4-5-20251001":      "claude-haiku-4-5",
		"claude-3-5-haiku@20241022":      "claude-3-5-haiku",
		"claude-3-7-sonnet-20250219":     "claude-3-7-sonnet",
		"claude-4-sonnet-thinking":       "claude-4-sonnet-thinking",
		"claude-4-opus-20250514":         "claude-4-opus",
		"claude-3-7-sonnet-thinking":     "claude-3-7-sonnet-thinking",
		"claude-sonnet-4-5-thinking":     "claude-sonnet-4-5",
		"gemini-2.5-flash-preview-04-17": "gemini-2.5-flash-preview",
		"gemini-2.5-pro-preview-05-06":   "gemini-2.5-pro-preview",
		"models/gemini-2.5-pro":          "gemini-2.5-pro",
		"gemini-2.5-flash-lite":          "gemini-2.5-flash-lite",
		"gemini-3-pro-preview":           "gemini-3-pro-preview",
		"gpt-4o-mini-2024-07-18":         "gpt-4o-mini",
		"gpt-4.1-mini":                   "gpt-4.1-mini",
		"deepseek-reasoner":              "deepseek-reasoner",
		"dall-e-3-vs":                    "dall-e-3-vs",
		"dall-e-3":                       "dall-e-3",
	} {
		got, ok := p.Resolve(in)
		if !ok || got != want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "llama-3", "claude-sonnet", "gpt-4o0", "claude-sonnet-4x", "my-claude-sonnet-4"} {
		if got, ok := p.Resolve(in); ok {
			t.Errorf("Resolve(%q) = %q, want unknown", in, got)
		}
	}
}

func TestPricingCost(t *testing.T) {
	p := mustPricing(t)
	cases := []struct {
		ev     Event
		nanos  int64
		priced bool
	}{
		// 1000 in at $3/M = $0.003; 500 out at $15/M = $0.0075; 2000 cache
		// write at $3.75/M = $0.0075; 10000 cache read at $0.30/M = $0.003.
		{Event{Model: "claude-sonnet-4-20250514", InputTokens: 1000, OutputTokens: 500, CacheCreateTokens: 2000,
			CacheReadTokens: 10000}, 3_000_000 + 7_500_000 + 7_500_000 + 3_000_000, true},
		// $0.028/M cache read: one token is 2.8e-8 USD, 28 nano-dollars.
		{Event{Model: "deepseek-chat", CacheReadTokens: 1}, 28, true},
		{Event{Model: "deepseek-chat", CacheReadTokens: 1000, OutputTokens: 3}, 28_000 + 3*420, true},
		// $0.075/M: 7 tokens are 525 nano-dollars.
		{Event{Model: "gemini-2.0-flash-lite", InputTokens: 7}, 525, true},
		{Event{Model: "dall-e-3", Images: 2, ImageSize: "1024x1792"}, 160_000_000, true},
		{Event{Model: "dall-e-3-vs", Images: 3, ImageSize: "999x999"}, 120_000_000, true},
		// The client name is unknown, the upstream name is priced.
		{Event{Model: "my-alias", UpstreamModel: "claude-opus-4-20250514", OutputTokens: 1_000_000}, 75_000_000_000, true},
		{Event{Model: "llama-3", InputTokens: 100}, 0, false},
		{Event{InputTokens: 100}, 0, true},
	}
	for _, c := range cases {
		nanos, priced := p.Cost(&c.ev)
		if nanos != c.nanos || priced != c.priced {
			t.Errorf("Cost(%s/%s) = %d, %v; want %d, %v", c.ev.Model, c.ev.UpstreamModel, nanos, priced, c.nanos, c.priced)
		}
	}
}

// The shipped table covers the models the relay serves, each with a price.
func TestShippedPricingCoversServedModels(t *testing.T) {
	p := mustPricing(t)
	for _, m := range []string{
		// Vertical Studio client and upstream names (reference 4.1).
		"claude-3-7-sonnet-thinking", "claude-4-sonnet-thinking", "claude-4-opus-thinking", "deepseek-r1",
		"deepseek-v3", "gemini-2.5-flash-preview", "gemini-2.5-pro-preview", "gpt-4.1", "gpt-4.1-mini", "gpt-4o",
		"o3", "o4-mini", "grok-3", "claude-3-7-sonnet-20250219", "claude-4-sonnet-20250514",
		"claude-4-opus-20250514", "deepseek-reasoner", "deepseek-chat", "gemini-2.5-flash-preview-04-17",
		"gemini-2.5-pro-preview-05-06",
		// Anthropic.
		"claude-opus-4-5", "claude-opus-4-1", "claude-opus-4", "claude-sonnet-4-5", "claude-sonnet-4",
		"claude-haiku-4-5", "claude-3-5-haiku",
		// Gemini.
		"gemini-2.0-flash", "gemini-2.5-pro", "gemini-2.5-flash", "gemini-3-pro-preview", "gemini-3-flash-preview",
	} {
		nanos, priced := p.Cost(&Event{Model: m, InputTokens: 1_000_000, OutputTokens: 1_000_000})
		if !priced || nanos <= 0 {
			t.Errorf("%s: cost %d, priced %v", m, nanos, priced)
		}
	}
	for _, m := range []string{"dall-e-3", "dall-e-3-vs"} {
		if nanos, priced := p.Cost(&Event{Model: m, Images: 1}); !priced || nanos <= 0 {
			t.Errorf("%s: image cost %d, priced %v", m, nanos, priced)
		}
	}
}

func TestPricingOverrideFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "prices.json")
	if err := os.WriteFile(path, []byte(`{"models":{"claude-sonnet-4":{"input":1,"output":2},"Team-Model":{"input":0.5}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPricing(path)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := p.Cost(&Event{Model: "claude-sonnet-4-20250514", InputTokens: 1_000_000, OutputTokens: 1_000_000}); n != 3_000_000_000 {
		t.Errorf("overridden price: %d nanos, want 3e9", n)
	}
	if n, ok := p.Cost(&Event{Model: "team-model-v2", InputTokens: 2_000_000}); !ok || n != 1_000_000_000 {
		t.Errorf("added model: %d, %v", n, ok)
	}
	if n, _ := p.Cost(&Event{Model: "gpt-4o", InputTokens: 1_000_000}); n != 2_500_000_000 {
		t.Errorf("shipped price kept: %d", n)
	}

	for name, body := range map[string]string{
		"typo":      `{"models":{"x":{"inptu":1}}}`,
		"negative":  `{"models":{"x":{"input":-1}}}`,
		"no models": `{}`,
		"not json":  `models: x`,
	} {
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadPricing(path); err == nil || !strings.Contains(err.Error(), "PRICING_FILE") {
			t.Errorf("%s: err = %v, want a PRICING_FILE error", name, err)
		}
	}
	if _, err := LoadPricing(filepath.Join(dir, "missing.json")); err == nil {
		t.Error("missing file accepted")
	}
}
