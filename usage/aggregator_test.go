package usage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/workers"
)

func newAggregator(t testing.TB, rdb redis.Scripter, ks keyspace.Keyspace) *Aggregator {
	return NewAggregator(rdb, ks, mustPricing(t), AggregatorConfig{}, zerolog.Nop())
}

// model is the test's own account of what the aggregates must hold, built
// without the aggregator's code (bucket names and expiries computed here).
type model struct {
	ks      keyspace.Keyspace
	p       *Pricing
	hashes  map[string]Totals
	expires map[string]int64 // unix seconds; absent: no expiry
	zsets   map[string]map[string]float64
	counter map[string]int64
	seen    map[string]bool
}

func newModel(ks keyspace.Keyspace, p *Pricing) *model {
	return &model{ks: ks, p: p, hashes: map[string]Totals{}, expires: map[string]int64{},
		zsets: map[string]map[string]float64{}, counter: map[string]int64{}, seen: map[string]bool{}}
}

func (m *model) add(ev Event) {
	if m.seen[ev.ID] {
		return
	}
	m.seen[ev.ID] = true
	u := ev.Time.UTC()
	y, mo, d := u.Date()
	h := u.Hour()
	hourStart := time.Date(y, mo, d, h, 0, 0, 0, time.UTC)
	dayS := time.Date(y, mo, d, 0, 0, 0, 0, time.UTC)
	type bk struct {
		gran, name string
		exp        int64
	}
	bks := []bk{
		{Hour, fmt.Sprintf("%04d%02d%02d%02d", y, mo, d, h), hourStart.Add(time.Hour).Add(7 * 24 * time.Hour).Unix()},
		{Day, fmt.Sprintf("%04d%02d%02d", y, mo, d), dayS.Add(24 * time.Hour).Add(90 * 24 * time.Hour).Unix()},
		{Month, fmt.Sprintf("%04d%02d", y, mo), time.Date(y, mo+1, 1, 0, 0, 0, 0, time.UTC).Add(730 * 24 * time.Hour).Unix()},
	}
	cost, priced := m.p.Cost(&ev)
	delta := Totals{Requests: 1, InputTokens: ev.InputTokens, OutputTokens: ev.OutputTokens,
		CacheCreateTokens: ev.CacheCreateTokens, CacheReadTokens: ev.CacheReadTokens, Images: int64(ev.Images),
		CostNanos: cost, LatencyMsSum: ev.LatencyMs}
	if ev.Status >= 400 {
		delta.Errors = 1
	}
	if ev.Estimated {
		delta.Estimated = 1
	}
	dims := [][2]string{{DimGlobal, GlobalID}}
	if ev.KeyID != "" {
		dims = append(dims, [2]string{DimKey, ev.KeyID})
	}
	if ev.Model != "" {
		dims = append(dims, [2]string{DimModel, ev.Model})
		if ev.KeyID != "" {
			dims = append(dims, [2]string{DimKeyModel, ev.KeyID + "|" + ev.Model})
		}
	}
	if ev.AccountID != "" {
		dims = append(dims, [2]string{DimAccount, ev.AccountID})
	}
	zinc := func(key, member string) {
		if m.zsets[key] == nil {
			m.zsets[key] = map[string]float64{}
		}
		m.zsets[key][member]++
	}
	for _, dm := range dims {
		for _, b := range bks {
			k := m.ks.UsageBucket(dm[0], dm[1], b.gran, b.name)
			t := m.hashes[k]
			t.Add(delta)
			m.hashes[k] = t
			m.expires[k] = b.exp
			zk := m.ks.UsageIndex(dm[0], b.gran, b.name)
			zinc(zk, dm[1])
			m.expires[zk] = b.exp
		}
		k := m.ks.UsageTotal(dm[0], dm[1])
		t := m.hashes[k]
		d := delta
		d.LastUsed = ev.Time.UnixMilli()
		t.Add(d)
		m.hashes[k] = t
		zinc(m.ks.UsageTotalIndex(dm[0]), dm[1])
	}
	if ev.KeyID != "" && ev.Model != "" {
		zinc(m.ks.UsageKeyModels(ev.KeyID), ev.Model)
	}
	if !priced {
		zinc(m.ks.UsageUnknownModels(), ev.Model)
	}
	if ev.KeyID != "" && ev.TokenWindowSec > 0 && ev.Total() > 0 {
		start := u.Unix() / ev.TokenWindowSec * ev.TokenWindowSec
		k := m.ks.UsageTokenWindow(ev.KeyID, ev.TokenWindowSec, start)
		m.counter[k] += ev.Total()
		m.expires[k] = start + ev.TokenWindowSec
	}
}

// check compares everything under the test's prefix with the model: every
// expected key that has not expired exists with the expected content and
// expiry, and nothing else exists but seen markers.
func (m *model) check(t *testing.T, rdb *redis.Client, prefix string) {
	t.Helper()
	ctx := context.Background()
	now := time.Now().Unix()
	var keys []string
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	seen := 0
	for _, k := range keys {
		found[k] = true
		if strings.Contains(k, ":seen:") {
			seen++
			continue
		}
		_, isHash := m.hashes[k]
		_, isZ := m.zsets[k]
		_, isCounter := m.counter[k]
		if !isHash && !isZ && !isCounter {
			t.Errorf("unexpected key %s", k)
		}
	}
	if seen != len(m.seen) {
		t.Errorf("%d seen markers, want %d", seen, len(m.seen))
	}
	checkExpiry := func(k string) bool {
		exp, ok := m.expires[k]
		if ok && exp <= now+1 {
			if found[k] {
				t.Errorf("%s should have expired (at %d, now %d)", k, exp, now)
			}
			return false
		}
		if !found[k] {
			t.Errorf("missing key %s", k)
			return false
		}
		got := rdb.ExpireTime(ctx, k).Val()
		want := time.Duration(exp) * time.Second
		if !ok {
			want = -1 // no expiry
		}
		if got != want && !(testredis.Embedded() && want > 0 && got >= want-time.Second && got <= want) {
			t.Errorf("%s expires at %v, want %v", k, got, want)
		}
		return true
	}
	for k, want := range m.hashes {
		if !checkExpiry(k) {
			continue
		}
		got := totalsFrom(rdb.HGetAll(ctx, k).Val())
		if got != want {
			t.Errorf("%s:\n got %+v\nwant %+v", k, got, want)
		}
		if fields := rdb.HKeys(ctx, k).Val(); len(fields) > 11 {
			t.Errorf("%s has unexpected fields %v", k, fields)
		}
	}
	for k, want := range m.zsets {
		if !checkExpiry(k) {
			continue
		}
		got := map[string]float64{}
		for _, z := range rdb.ZRangeWithScores(ctx, k, 0, -1).Val() {
			got[z.Member.(string)] = z.Score
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: got %v, want %v", k, got, want)
		}
	}
	for k, want := range m.counter {
		if !checkExpiry(k) {
			continue
		}
		if got, _ := rdb.Get(ctx, k).Int64(); got != want {
			t.Errorf("%s = %d, want %d", k, got, want)
		}
	}
}

// genEvents makes n varied events at times around recent hour, day and month
// boundaries (UTC) and in other time zones.
func genEvents(n int, seed uint64, now time.Time) []Event {
	r := rand.New(rand.NewPCG(seed, 1))
	now = now.UTC()
	hour := now.Truncate(time.Hour)
	day := time.Date(now.Year(), now.Month(), now.Day(), 0, 0, 0, 0, time.UTC)
	month := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	times := []time.Time{
		hour.Add(-time.Nanosecond), hour, hour.Add(-time.Hour), day.Add(-time.Nanosecond), day,
		day.Add(-3 * time.Hour), month.Add(-time.Millisecond), month, now.Add(-5 * time.Minute),
		now.Add(-10 * 24 * time.Hour),  // its hour buckets have expired already
		now.Add(-100 * 24 * time.Hour), // so have its day buckets
		day.Add(-time.Minute).In(time.FixedZone("UTC+5", 5*3600)),
	}
	models := []string{"claude-sonnet-4-20250514", "claude-opus-4-5", "gpt-4o", "dall-e-3", "gemini-2.5-pro",
		"mystery-model", "claude-4-sonnet-thinking", ""}
	evs := make([]Event, n)
	for i := range evs {
		ev := Event{
			ID:        fmt.Sprintf("ev-%d-%d", seed, i),
			Time:      times[r.IntN(len(times))],
			KeyID:     fmt.Sprintf("key%d", r.IntN(7)),
			Service:   ServiceClaude,
			Model:     models[r.IntN(len(models))],
			LatencyMs: r.Int64N(5000),
			Status:    200,
		}
		if r.IntN(3) > 0 {
			ev.AccountID = fmt.Sprintf("acct%d", r.IntN(3))
		}
		if r.IntN(10) == 0 {
			ev.KeyID = ""
		}
		if ev.Model == "dall-e-3" {
			ev.Images, ev.ImageSize = 1+r.IntN(3), []string{"1024x1024", "1792x1024"}[r.IntN(2)]
		} else {
			ev.InputTokens, ev.OutputTokens = r.Int64N(100_000), r.Int64N(10_000)
			if r.IntN(2) == 0 {
				ev.CacheCreateTokens, ev.CacheReadTokens = r.Int64N(50_000), r.Int64N(200_000)
			}
		}
		switch r.IntN(8) {
		case 0:
			ev.Status, ev.ErrorClass = 502, "upstream_5xx"
		case 1:
			ev.Status, ev.ErrorClass = 499, "client_gone"
			ev.Estimated = true
		}
		if r.IntN(2) == 0 {
			ev.TokenWindowSec = []int64{60, 3600, 86400}[r.IntN(3)]
		}
		evs[i] = ev
	}
	return evs
}

func entriesOf(evs []Event) []workers.Entry {
	es := make([]workers.Entry, len(evs))
	for i := range evs {
		es[i] = workers.Entry{ID: strconv.Itoa(i) + "-0", Values: map[string]string{StreamField: string(evs[i].AppendJSON(nil))}, Deliveries: 1}
	}
	return es
}

func TestAggregatorExact(t *testing.T) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	a := newAggregator(t, env.Client, ks)
	m := newModel(ks, a.pricing)
	ctx := context.Background()

	evs := genEvents(1000, 1, time.Now())
	for lo := 0; lo < len(evs); lo += 137 {
		batch := evs[lo:min(lo+137, len(evs))]
		if err := a.HandleBatch(ctx, entriesOf(batch)); err != nil {
			t.Fatal(err)
		}
		for _, ev := range batch {
			m.add(ev)
		}
	}
	m.check(t, env.Client, env.Prefix)

	// Spot checks against numbers computed by hand from the events.
	var want Totals
	for _, ev := range evs {
		if ev.KeyID == "key3" {
			want.Requests++
			want.InputTokens += ev.InputTokens
			cost, _ := a.pricing.Cost(&ev)
			want.CostNanos += cost
		}
	}
	got := totalsFrom(env.Client.HGetAll(ctx, ks.UsageTotal(DimKey, "key3")).Val())
	if got.Requests != want.Requests || got.InputTokens != want.InputTokens || got.CostNanos != want.CostNanos {
		t.Errorf("key3 total %+v, want requests %d input %d cost %d", got, want.Requests, want.InputTokens, want.CostNanos)
	}
	if n := env.Client.HGet(ctx, ks.UsageTotal(DimGlobal, GlobalID), FieldRequests).Val(); n != "1000" {
		t.Errorf("global requests %s, want 1000", n)
	}
}

func TestAggregatorIdempotent(t *testing.T) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	a := newAggregator(t, env.Client, ks)
	m := newModel(ks, a.pricing)
	ctx := context.Background()
	evs := genEvents(300, 2, time.Now())
	for _, ev := range evs {
		m.add(ev)
	}

	n, err := a.Apply(ctx, evs[:200])
	if err != nil || n != 200 {
		t.Fatalf("first apply: %d, %v", n, err)
	}
	// The same batch again, an overlapping one, and a batch holding the same
	// event twice.
	if n, err := a.Apply(ctx, evs[:200]); err != nil || n != 0 {
		t.Fatalf("second apply: %d, %v", n, err)
	}
	if n, err := a.Apply(ctx, evs[150:]); err != nil || n != 100 {
		t.Fatalf("overlapping apply: %d, %v", n, err)
	}
	dup := []Event{evs[0], evs[299], evs[299]}
	if n, err := a.Apply(ctx, dup); err != nil || n != 0 {
		t.Fatalf("duplicates: %d, %v", n, err)
	}
	m.check(t, env.Client, env.Prefix)

	fresh := genEvents(2, 3, time.Now())
	if n, err := a.Apply(ctx, []Event{fresh[0], fresh[0], fresh[1]}); err != nil || n != 2 {
		t.Fatalf("a new event twice in one batch: %d, %v", n, err)
	}
	m.add(fresh[0])
	m.add(fresh[1])
	m.check(t, env.Client, env.Prefix)
}

func TestAggregatorMalformedEntries(t *testing.T) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	a := newAggregator(t, env.Client, ks)
	ctx := context.Background()
	good := genEvents(2, 4, time.Now())
	es := entriesOf(good)
	es = append(es,
		workers.Entry{ID: "9-0", Values: map[string]string{StreamField: "{not json"}},
		workers.Entry{ID: "9-1", Values: map[string]string{"other": "x"}},
		workers.Entry{ID: "9-2", Values: map[string]string{StreamField: `{"id":"","time":"2025-01-01T00:00:00Z"}`}},
	)
	err := a.HandleBatch(ctx, es)
	if !errors.Is(err, workers.ErrPermanent) {
		t.Fatalf("err = %v, want ErrPermanent", err)
	}
	for _, id := range []string{"9-0", "9-1", "9-2"} {
		if !strings.Contains(err.Error(), id) {
			t.Errorf("error %q does not name entry %s", err, id)
		}
	}
	// The valid entries were counted, once, even though the batch failed.
	if err := a.HandleBatch(ctx, es[:2]); err != nil {
		t.Fatal(err)
	}
	if n := env.Client.HGet(ctx, ks.UsageTotal(DimGlobal, GlobalID), FieldRequests).Val(); n != "2" {
		t.Errorf("global requests %s, want 2", n)
	}
}

// Buckets are UTC hours, days and months; an event a nanosecond before a
// boundary and one at it land in different buckets.
func TestAggregatorBucketBoundaries(t *testing.T) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	a := newAggregator(t, env.Client, ks)
	ctx := context.Background()
	// A fixed moment far enough in the future that no bucket has expired.
	mid := time.Date(time.Now().Year()+1, 3, 1, 0, 0, 0, 0, time.UTC)
	plus5 := time.FixedZone("UTC+5", 5*3600)
	evs := []Event{
		{ID: "a", Time: mid.Add(-time.Nanosecond), KeyID: "k", Model: "gpt-4o", InputTokens: 1, Status: 200},
		{ID: "b", Time: mid, KeyID: "k", Model: "gpt-4o", InputTokens: 10, Status: 200},
		{ID: "c", Time: mid.Add(59*time.Minute + 59*time.Second), KeyID: "k", Model: "gpt-4o", InputTokens: 100, Status: 200},
		// 04:30 at UTC+5 on March 1 is 23:30 UTC on the last day of February.
		{ID: "d", Time: time.Date(mid.Year(), 3, 1, 4, 30, 0, 0, plus5), KeyID: "k", Model: "gpt-4o", InputTokens: 1000, Status: 200},
	}
	if _, err := a.Apply(ctx, evs); err != nil {
		t.Fatal(err)
	}
	lastFeb := mid.Add(-time.Hour) // Feb 28 or 29, 23:00
	y := strconv.Itoa(mid.Year())
	for bucket, want := range map[[2]string]string{
		{Hour, lastFeb.Format("2006010215")}: "1001",
		{Hour, y + "030100"}:                 "110",
		{Day, lastFeb.Format("20060102")}:    "1001",
		{Day, y + "0301"}:                    "110",
		{Month, y + "02"}:                    "1001",
		{Month, y + "03"}:                    "110",
	} {
		got := env.Client.HGet(ctx, ks.UsageBucket(DimKey, "k", bucket[0], bucket[1]), FieldInputTokens).Val()
		if got != want {
			t.Errorf("%s %s: input tokens %q, want %s", bucket[0], bucket[1], got, want)
		}
	}
	if lu := env.Client.HGet(ctx, ks.UsageTotal(DimKey, "k"), FieldLastUsed).Val(); lu != strconv.FormatInt(evs[2].Time.UnixMilli(), 10) {
		t.Errorf("last_used %s, want the newest event's time", lu)
	}
	// An older event applied later does not move last_used back.
	if _, err := a.Apply(ctx, []Event{{ID: "e", Time: mid.Add(-time.Hour), KeyID: "k", Status: 200}}); err != nil {
		t.Fatal(err)
	}
	if lu := env.Client.HGet(ctx, ks.UsageTotal(DimKey, "k"), FieldLastUsed).Val(); lu != strconv.FormatInt(evs[2].Time.UnixMilli(), 10) {
		t.Errorf("last_used moved back to %s", lu)
	}
}

func TestAggregatorTTLs(t *testing.T) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	a := NewAggregator(env.Client, ks, mustPricing(t), AggregatorConfig{SeenTTL: 50 * time.Hour}, zerolog.Nop())
	ctx := context.Background()
	at := time.Now().UTC().Add(10 * time.Minute) // so its 600s token window cannot end during the test
	ev := Event{ID: "x", Time: at, KeyID: "k", Model: "gpt-4o", InputTokens: 5, OutputTokens: 7, Status: 200, TokenWindowSec: 600}
	if _, err := a.Apply(ctx, []Event{ev}); err != nil {
		t.Fatal(err)
	}
	hour := at.Truncate(time.Hour)
	day := time.Date(at.Year(), at.Month(), at.Day(), 0, 0, 0, 0, time.UTC)
	month := time.Date(at.Year(), at.Month(), 1, 0, 0, 0, 0, time.UTC)
	for key, want := range map[string]time.Time{
		ks.UsageBucket(DimModel, "gpt-4o", Hour, hour.Format(HourFormat)):    hour.Add(time.Hour + 7*24*time.Hour),
		ks.UsageBucket(DimModel, "gpt-4o", Day, day.Format(DayFormat)):       day.AddDate(0, 0, 1).Add(90 * 24 * time.Hour),
		ks.UsageBucket(DimModel, "gpt-4o", Month, month.Format(MonthFormat)): month.AddDate(0, 1, 0).Add(730 * 24 * time.Hour),
		ks.UsageIndex(DimKey, Day, day.Format(DayFormat)):                    day.AddDate(0, 0, 1).Add(90 * 24 * time.Hour),
		ks.UsageTokenWindow("k", 600, at.Unix()/600*600):                     time.Unix(at.Unix()/600*600+600, 0),
	} {
		if got := env.Client.ExpireTime(ctx, key).Val(); got != time.Duration(want.Unix())*time.Second {
			t.Errorf("%s expires at %v, want %v", key, time.Unix(int64(got/time.Second), 0).UTC(), want)
		}
	}
	for _, key := range []string{ks.UsageTotal(DimKey, "k"), ks.UsageTotalIndex(DimModel), ks.UsageKeyModels("k")} {
		if got := env.Client.TTL(ctx, key).Val(); got != -1 {
			t.Errorf("%s has TTL %v, want none", key, got)
		}
	}
	if ttl := env.Client.TTL(ctx, ks.UsageSeen("x")).Val(); ttl <= 49*time.Hour || ttl > 50*time.Hour {
		t.Errorf("seen marker TTL %v, want 50h", ttl)
	}
	if got, _ := env.Client.Get(ctx, ks.UsageTokenWindow("k", 600, TokenWindowStart(at, 600))).Int64(); got != 12 {
		t.Errorf("token window %d, want 12", got)
	}
}

func TestTokenWindowStart(t *testing.T) {
	at := time.Unix(1_700_000_123, 0)
	for w, want := range map[int64]int64{60: 1_700_000_100, 3600: 1_699_999_200, 1: 1_700_000_123, 0: 0} {
		if got := TokenWindowStart(at, w); got != want {
			t.Errorf("window %d: %d, want %d", w, got, want)
		}
	}
	if got := TokenWindowStart(time.Unix(-30, 0), 60); got != -60 {
		t.Errorf("before the epoch: %d, want -60", got)
	}
}
