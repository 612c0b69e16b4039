// Package usage counts what every request used.
//
// The ingress builds one Event per request and hands it to a Recorder; the
// recorder puts it on a Redis stream, and a worker pool folds events into
// aggregates (per key, model, account, key and model, and in total; per hour,
// day and month) with their cost. Dashboards and key limits read those
// aggregates through the read side in this package.
package usage

import "time"

// Services an event can belong to; they match the key permissions.
const (
	ServiceOpenAI = "openai" // the Vertical Studio routes
	ServiceClaude = "claude"
	ServiceGemini = "gemini"
)

// Event is what one request used. It is the unit of usage accounting: every
// request the relay answers produces exactly one, and an event applied twice
// is counted once (by ID).
type Event struct {
	ID        string    `json:"id"`         // unique per request (UUID)
	RequestID string    `json:"request_id"` // the id the request was logged under
	Time      time.Time `json:"time"`       // when the request started

	KeyID     string `json:"key_id"`
	AccountID string `json:"account_id,omitempty"` // upstream account that served it
	Service   string `json:"service"`              // ServiceOpenAI, ServiceClaude, ServiceGemini

	Model         string `json:"model"`                    // the name the client asked for
	UpstreamModel string `json:"upstream_model,omitempty"` // the name the upstream was sent

	InputTokens       int64 `json:"input_tokens"`
	OutputTokens      int64 `json:"output_tokens"`
	CacheCreateTokens int64 `json:"cache_create_tokens,omitempty"` // Anthropic prompt-cache writes
	CacheReadTokens   int64 `json:"cache_read_tokens,omitempty"`   // Anthropic prompt-cache reads
	// Estimated is set when the upstream reported no usage (e.g. a stream cut
	// short) and the tokens were estimated from the text.
	Estimated bool `json:"estimated,omitempty"`

	Images    int    `json:"images,omitempty"`
	ImageSize string `json:"image_size,omitempty"`

	LatencyMs int64 `json:"latency_ms"`        // request start to end of response
	TTFBMs    int64 `json:"ttfb_ms,omitempty"` // request start to first byte sent to the client

	Status     int    `json:"status"`                // HTTP status the client got
	ErrorClass string `json:"error_class,omitempty"` // e.g. upstream_5xx, client_gone, rate_limited

	// TokenWindowSec is the key's token-limit window at request time, so the
	// aggregator can settle the window counter the limit check reads (0: none).
	TokenWindowSec int64 `json:"token_window_sec,omitempty"`
}

// Total is every token the event counts.
func (e Event) Total() int64 {
	return e.InputTokens + e.OutputTokens + e.CacheCreateTokens + e.CacheReadTokens
}

// EstimateTokens estimates the tokens in n bytes of text, for requests whose
// upstream reported no usage (about four bytes a token, rounded up).
func EstimateTokens(n int64) int64 { return (n + 3) / 4 }
