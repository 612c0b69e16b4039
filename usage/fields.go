package usage

import "time"

// Dimensions usage is aggregated by.
const (
	DimKey      = "key"
	DimModel    = "model"
	DimAccount  = "account"
	DimKeyModel = "keymodel" // id is KeyModelID(key, model)
	DimGlobal   = "global"   // id is GlobalID
)

// GlobalID is the one id of the global dimension.
const GlobalID = "all"

// KeyModelID is the id of a key and model pair in DimKeyModel.
func KeyModelID(keyID, model string) string { return keyID + "|" + model }

// Granularities and the UTC time formats of their buckets.
const (
	Hour  = "hour"
	Day   = "day"
	Month = "month"

	HourFormat  = "2006010215"
	DayFormat   = "20060102"
	MonthFormat = "200601"
)

// Fields of an aggregate hash. Cost is in nano-dollars (1e-9 USD), so it adds
// up exactly as an integer.
const (
	FieldRequests          = "requests"
	FieldErrors            = "errors"
	FieldInputTokens       = "input_tokens"
	FieldOutputTokens      = "output_tokens"
	FieldCacheCreateTokens = "cache_create_tokens"
	FieldCacheReadTokens   = "cache_read_tokens"
	FieldImages            = "images"
	FieldCostNanos         = "cost_nanos"
	FieldEstimated         = "estimated" // requests whose tokens were estimated
	FieldLatencyMsSum      = "latency_ms_sum"
	FieldLastUsed          = "last_used" // unix ms of the newest event (total hashes)
)

// NanosPerUSD converts FieldCostNanos to dollars.
const NanosPerUSD = 1e9

// Total is the granularity name of the all-time aggregates.
const Total = "total"

// TokenWindowStart is the start (unix seconds) of the fixed token-limit window
// of windowSec seconds that t falls in. Windows are aligned to the Unix epoch.
// The aggregator adds an event's tokens (Event.Total) to
// keyspace.UsageTokenWindow(key, windowSec, TokenWindowStart(ev.Time,
// windowSec)), which expires when the window ends; a limit check reads the
// window of the current time.
func TokenWindowStart(t time.Time, windowSec int64) int64 {
	if windowSec <= 0 {
		return 0
	}
	s := t.Unix()
	return s - ((s%windowSec)+windowSec)%windowSec
}
