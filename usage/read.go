package usage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/internal/keyspace"
)

// Totals is what an aggregate hash holds: sums over the requests it counts.
// LastUsed (unix ms) is kept on all-time totals only.
type Totals struct {
	Requests          int64 `json:"requests"`
	Errors            int64 `json:"errors"`
	InputTokens       int64 `json:"input_tokens"`
	OutputTokens      int64 `json:"output_tokens"`
	CacheCreateTokens int64 `json:"cache_create_tokens"`
	CacheReadTokens   int64 `json:"cache_read_tokens"`
	Images            int64 `json:"images"`
	CostNanos         int64 `json:"cost_nanos"`
	Estimated         int64 `json:"estimated"`
	LatencyMsSum      int64 `json:"latency_ms_sum"`
	LastUsed          int64 `json:"last_used,omitempty"`
}

// Tokens is every token counted.
func (t Totals) Tokens() int64 {
	return t.InputTokens + t.OutputTokens + t.CacheCreateTokens + t.CacheReadTokens
}

// CostUSD is the cost in dollars.
func (t Totals) CostUSD() float64 { return float64(t.CostNanos) / NanosPerUSD }

// MarshalJSON adds the derived tokens, cost_usd and avg_latency_ms.
func (t Totals) MarshalJSON() ([]byte, error) {
	type plain Totals
	var avg int64
	if t.Requests > 0 {
		avg = t.LatencyMsSum / t.Requests
	}
	return json.Marshal(struct {
		plain
		Tokens       int64   `json:"tokens"`
		CostUSD      float64 `json:"cost_usd"`
		AvgLatencyMs int64   `json:"avg_latency_ms"`
	}{plain(t), t.Tokens(), t.CostUSD(), avg})
}

// Add adds o to t (LastUsed: the later one).
func (t *Totals) Add(o Totals) {
	t.Requests += o.Requests
	t.Errors += o.Errors
	t.InputTokens += o.InputTokens
	t.OutputTokens += o.OutputTokens
	t.CacheCreateTokens += o.CacheCreateTokens
	t.CacheReadTokens += o.CacheReadTokens
	t.Images += o.Images
	t.CostNanos += o.CostNanos
	t.Estimated += o.Estimated
	t.LatencyMsSum += o.LatencyMsSum
	t.LastUsed = max(t.LastUsed, o.LastUsed)
}

func totalsFrom(h map[string]string) Totals {
	n := func(f string) int64 {
		v, _ := strconv.ParseInt(h[f], 10, 64)
		return v
	}
	return Totals{
		Requests: n(FieldRequests), Errors: n(FieldErrors),
		InputTokens: n(FieldInputTokens), OutputTokens: n(FieldOutputTokens),
		CacheCreateTokens: n(FieldCacheCreateTokens), CacheReadTokens: n(FieldCacheReadTokens),
		Images: n(FieldImages), CostNanos: n(FieldCostNanos), Estimated: n(FieldEstimated),
		LatencyMsSum: n(FieldLatencyMsSum), LastUsed: n(FieldLastUsed),
	}
}

// Reader answers usage queries from the aggregates (hashes and index sorted
// sets); it never scans keys.
type Reader struct {
	rdb redis.UniversalClient
	ks  keyspace.Keyspace
}

// NewReader reads the aggregates under ks through rdb.
func NewReader(rdb redis.UniversalClient, ks keyspace.Keyspace) *Reader {
	return &Reader{rdb: rdb, ks: ks}
}

// ErrBadQuery is wrapped by errors about the query itself (a bad dimension,
// granularity or range), as opposed to Redis failing.
var ErrBadQuery = errors.New("bad usage query")

// Dimensions lists the valid dimensions.
var Dimensions = []string{DimKey, DimModel, DimAccount, DimKeyModel, DimGlobal}

func checkDim(dim string) error {
	for _, d := range Dimensions {
		if d == dim {
			return nil
		}
	}
	return fmt.Errorf("%w: dimension %q is not one of key, model, account, keymodel, global", ErrBadQuery, dim)
}

// Bucket is one aggregate time bucket.
type Bucket struct {
	Gran  string    // Hour, Day or Month
	Name  string    // in the granularity's format
	Start time.Time // UTC
	End   time.Time
}

// MaxRange bounds the ranges queries accept.
const MaxRange = 3 * 366 * 24 * time.Hour

// Cover is the fewest buckets that exactly cover [from, to) after rounding
// from down and to up to whole hours (UTC): hours up to the first day
// boundary, days up to the first month boundary, whole months, then days and
// hours again. Hour buckets are kept for 7 days and day buckets for 90, so a
// range reaching further back than that at hour or day precision counts only
// what is still kept.
func Cover(from, to time.Time) ([]Bucket, error) {
	from, to = from.UTC().Truncate(time.Hour), ceilHour(to.UTC())
	if !from.Before(to) {
		return nil, fmt.Errorf("%w: the range is empty (from must be before to)", ErrBadQuery)
	}
	if to.Sub(from) > MaxRange {
		return nil, fmt.Errorf("%w: the range is longer than %d days", ErrBadQuery, MaxRange/(24*time.Hour))
	}
	var out []Bucket
	for cur := from; cur.Before(to); {
		if m := cur.AddDate(0, 1, 0); cur.Equal(monthStart(cur)) && !m.After(to) {
			out = append(out, Bucket{Month, cur.Format(MonthFormat), cur, m})
			cur = m
		} else if d := cur.AddDate(0, 0, 1); cur.Equal(dayStart(cur)) && !d.After(to) {
			out = append(out, Bucket{Day, cur.Format(DayFormat), cur, d})
			cur = d
		} else {
			h := cur.Add(time.Hour)
			out = append(out, Bucket{Hour, cur.Format(HourFormat), cur, h})
			cur = h
		}
	}
	return out, nil
}

func ceilHour(t time.Time) time.Time {
	if tr := t.Truncate(time.Hour); !tr.Equal(t) {
		return tr.Add(time.Hour)
	}
	return t
}

// Range is the totals of one dimension value over [from, to) (see Cover).
func (r *Reader) Range(ctx context.Context, dim, id string, from, to time.Time) (Totals, error) {
	if err := checkDim(dim); err != nil {
		return Totals{}, err
	}
	bs, err := Cover(from, to)
	if err != nil {
		return Totals{}, err
	}
	keys := make([]string, len(bs))
	for i, b := range bs {
		keys[i] = r.ks.UsageBucket(dim, id, b.Gran, b.Name)
	}
	hs, err := r.hashes(ctx, keys)
	if err != nil {
		return Totals{}, err
	}
	var t Totals
	for _, h := range hs {
		t.Add(totalsFrom(h))
	}
	return t, nil
}

// AllTime is the all-time totals of one dimension value.
func (r *Reader) AllTime(ctx context.Context, dim, id string) (Totals, error) {
	if err := checkDim(dim); err != nil {
		return Totals{}, err
	}
	h, err := r.rdb.HGetAll(ctx, r.ks.UsageTotal(dim, id)).Result()
	if err != nil {
		return Totals{}, err
	}
	return totalsFrom(h), nil
}

// Point is one bucket of a series.
type Point struct {
	Start time.Time `json:"start"`
	Totals
}

// MarshalJSON keeps Totals' derived fields next to start.
func (p Point) MarshalJSON() ([]byte, error) {
	b, err := p.Totals.MarshalJSON()
	if err != nil {
		return nil, err
	}
	start, _ := json.Marshal(p.Start)
	return append(append(append([]byte(`{"start":`), start...), ','), b[1:]...), nil
}

// MaxPoints bounds the length of a series.
const MaxPoints = 2400

// Series is one dimension value per hour or per day over [from, to), one
// point per bucket (zeros included), from rounded down and to rounded up to
// the granularity.
func (r *Reader) Series(ctx context.Context, dim, id, gran string, from, to time.Time) ([]Point, error) {
	if err := checkDim(dim); err != nil {
		return nil, err
	}
	var step func(time.Time) time.Time
	var format string
	from, to = from.UTC(), to.UTC()
	switch gran {
	case Hour:
		from, to = from.Truncate(time.Hour), ceilHour(to)
		step, format = func(t time.Time) time.Time { return t.Add(time.Hour) }, HourFormat
	case Day:
		if d := dayStart(to); !d.Equal(to) {
			to = d.AddDate(0, 0, 1)
		}
		from = dayStart(from)
		step, format = func(t time.Time) time.Time { return t.AddDate(0, 0, 1) }, DayFormat
	default:
		return nil, fmt.Errorf("%w: granularity %q is not hour or day", ErrBadQuery, gran)
	}
	if !from.Before(to) {
		return nil, fmt.Errorf("%w: the range is empty (from must be before to)", ErrBadQuery)
	}
	var starts []time.Time
	var keys []string
	for t := from; t.Before(to); t = step(t) {
		if len(starts) == MaxPoints {
			return nil, fmt.Errorf("%w: more than %d points; shorten the range or use days", ErrBadQuery, MaxPoints)
		}
		starts = append(starts, t)
		keys = append(keys, r.ks.UsageBucket(dim, id, gran, t.Format(format)))
	}
	hs, err := r.hashes(ctx, keys)
	if err != nil {
		return nil, err
	}
	out := make([]Point, len(hs))
	for i, h := range hs {
		out[i] = Point{Start: starts[i], Totals: totalsFrom(h)}
	}
	return out, nil
}

// Ranking orders Top results.
const (
	ByCost     = "cost"
	ByTokens   = "tokens"
	ByRequests = "requests"
)

// Ranked is one dimension value and its totals.
type Ranked struct {
	ID     string `json:"id"`
	Totals Totals `json:"totals"`
}

// Top is the dimension values with the highest cost, tokens or requests over
// [from, to), at most limit of them. The candidates are the members of the
// dimension's index sorted sets of the buckets covering the range; their
// numbers come from the bucket hashes. A zero from means all time (the
// all-time index and totals).
func (r *Reader) Top(ctx context.Context, dim, by string, from, to time.Time, limit int) ([]Ranked, error) {
	if err := checkDim(dim); err != nil {
		return nil, err
	}
	var metric func(Totals) int64
	switch by {
	case ByCost:
		metric = func(t Totals) int64 { return t.CostNanos }
	case ByTokens:
		metric = Totals.Tokens
	case ByRequests:
		metric = func(t Totals) int64 { return t.Requests }
	default:
		return nil, fmt.Errorf("%w: by %q is not cost, tokens or requests", ErrBadQuery, by)
	}
	if limit <= 0 || limit > 1000 {
		return nil, fmt.Errorf("%w: limit must be from 1 to 1000", ErrBadQuery)
	}

	var indexes []string
	var bucketKey func(id string) []string
	if from.IsZero() {
		indexes = []string{r.ks.UsageTotalIndex(dim)}
		bucketKey = func(id string) []string { return []string{r.ks.UsageTotal(dim, id)} }
	} else {
		bs, err := Cover(from, to)
		if err != nil {
			return nil, err
		}
		for _, b := range bs {
			indexes = append(indexes, r.ks.UsageIndex(dim, b.Gran, b.Name))
		}
		bucketKey = func(id string) []string {
			ks := make([]string, len(bs))
			for i, b := range bs {
				ks[i] = r.ks.UsageBucket(dim, id, b.Gran, b.Name)
			}
			return ks
		}
	}

	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(indexes))
	for i, k := range indexes {
		cmds[i] = pipe.ZRange(ctx, k, 0, -1)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	seen := map[string]bool{}
	var ids []string
	for _, c := range cmds {
		for _, id := range c.Val() {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}

	ranked := make([]Ranked, 0, len(ids))
	const chunk = 200
	for lo := 0; lo < len(ids); lo += chunk {
		part := ids[lo:min(lo+chunk, len(ids))]
		var keys []string
		per := 0
		for _, id := range part {
			ks := bucketKey(id)
			per = len(ks)
			keys = append(keys, ks...)
		}
		hs, err := r.hashes(ctx, keys)
		if err != nil {
			return nil, err
		}
		for i, id := range part {
			var t Totals
			for _, h := range hs[i*per : (i+1)*per] {
				t.Add(totalsFrom(h))
			}
			if t.Requests > 0 {
				ranked = append(ranked, Ranked{ID: id, Totals: t})
			}
		}
	}
	sort.Slice(ranked, func(i, j int) bool {
		a, b := metric(ranked[i].Totals), metric(ranked[j].Totals)
		if a != b {
			return a > b
		}
		return ranked[i].ID < ranked[j].ID
	})
	if len(ranked) > limit {
		ranked = ranked[:limit]
	}
	return ranked, nil
}

// KeySummary is one key's usage, for the key's own stats page.
type KeySummary struct {
	KeyID  string       `json:"key_id"`
	Today  Totals       `json:"today"`
	Month  Totals       `json:"month"`
	Total  Totals       `json:"total"`
	Models []ModelUsage `json:"models"`
}

// ModelUsage is one model's share of a key's usage.
type ModelUsage struct {
	Model string `json:"model"`
	Today Totals `json:"today"`
	Month Totals `json:"month"`
	Total Totals `json:"total"`
}

// maxKeyModels bounds the per-model breakdown of a key summary.
const maxKeyModels = 200

// KeySummary is keyID's usage today, this month (UTC, as of now) and in
// total, overall and per model (most requested first).
func (r *Reader) KeySummary(ctx context.Context, keyID string, now time.Time) (KeySummary, error) {
	now = now.UTC()
	day, month := now.Format(DayFormat), now.Format(MonthFormat)
	models, err := r.rdb.ZRevRange(ctx, r.ks.UsageKeyModels(keyID), 0, maxKeyModels-1).Result()
	if err != nil {
		return KeySummary{}, err
	}
	keys := []string{
		r.ks.UsageBucket(DimKey, keyID, Day, day),
		r.ks.UsageBucket(DimKey, keyID, Month, month),
		r.ks.UsageTotal(DimKey, keyID),
	}
	for _, m := range models {
		id := KeyModelID(keyID, m)
		keys = append(keys,
			r.ks.UsageBucket(DimKeyModel, id, Day, day),
			r.ks.UsageBucket(DimKeyModel, id, Month, month),
			r.ks.UsageTotal(DimKeyModel, id))
	}
	hs, err := r.hashes(ctx, keys)
	if err != nil {
		return KeySummary{}, err
	}
	s := KeySummary{KeyID: keyID, Today: totalsFrom(hs[0]), Month: totalsFrom(hs[1]), Total: totalsFrom(hs[2]),
		Models: make([]ModelUsage, len(models))}
	for i, m := range models {
		h := hs[3+3*i:]
		s.Models[i] = ModelUsage{Model: m, Today: totalsFrom(h[0]), Month: totalsFrom(h[1]), Total: totalsFrom(h[2])}
	}
	return s, nil
}

// UnknownModel is a model that had no price when it was used.
type UnknownModel struct {
	Model    string `json:"model"`
	Requests int64  `json:"requests"`
}

// UnknownModels lists the models counted at zero cost because the pricing
// table had no price for them, most requested first.
func (r *Reader) UnknownModels(ctx context.Context) ([]UnknownModel, error) {
	zs, err := r.rdb.ZRevRangeWithScores(ctx, r.ks.UsageUnknownModels(), 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]UnknownModel, len(zs))
	for i, z := range zs {
		out[i] = UnknownModel{Model: fmt.Sprint(z.Member), Requests: int64(z.Score)}
	}
	return out, nil
}

// hashes reads many hashes in one pipeline; a missing one is empty.
func (r *Reader) hashes(ctx context.Context, keys []string) ([]map[string]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := r.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGetAll(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, err
	}
	out := make([]map[string]string, len(keys))
	for i, c := range cmds {
		out[i] = c.Val()
	}
	return out, nil
}
