package usage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
)

func TestCover(t *testing.T) {
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	names := func(bs []Bucket) string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Gran[:1]+b.Name)
		}
		return strings.Join(out, " ")
	}
	for _, c := range []struct{ from, to, want string }{
		{"2025-03-10T05:00:00Z", "2025-03-10T07:00:00Z", "h2025031005 h2025031006"},
		// from rounds down, to rounds up, to whole hours.
		{"2025-03-10T05:30:00Z", "2025-03-10T06:10:00Z", "h2025031005 h2025031006"},
		{"2025-03-09T22:00:00Z", "2025-03-11T01:00:00Z", "h2025030922 h2025030923 d20250310 h2025031100"},
		{"2025-01-31T23:00:00Z", "2025-04-02T00:00:00Z", "h2025013123 m202502 m202503 d20250401"},
		{"2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "m202502"},
		{"2024-12-30T00:00:00Z", "2025-01-02T00:00:00Z", "d20241230 d20241231 d20250101"},
		// Other zones are converted to UTC.
		{"2025-03-10T05:00:00+05:00", "2025-03-10T06:00:00+05:00", "h2025031000"},
	} {
		bs, err := Cover(at(c.from), at(c.to))
		if err != nil {
			t.Fatalf("%s..%s: %v", c.from, c.to, err)
		}
		if got := names(bs); got != c.want {
			t.Errorf("%s..%s: %s, want %s", c.from, c.to, got, c.want)
		}
		for i := 1; i < len(bs); i++ {
			if !bs[i].Start.Equal(bs[i-1].End) {
				t.Errorf("gap between %v and %v", bs[i-1], bs[i])
			}
		}
	}
	for _, c := range [][2]string{{"2025-03-10T05:00:00Z", "2025-03-10T05:00:00Z"}, {"2025-03-10T06:00:00Z", "2025-03-10T05:00:00Z"}, {"2020-01-01T00:00:00Z", "2025-01-01T00:00:00Z"}} {
		if _, err := Cover(at(c[0]), at(c[1])); !errors.Is(err, ErrBadQuery) {
			t.Errorf("%v: err = %v, want ErrBadQuery", c, err)
		}
	}
}

// readFixture applies known events at known times and returns what it put
// where.
func readFixture(t *testing.T) (*Reader, *Aggregator, time.Time) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	a := newAggregator(t, env.Client, ks)
	// The start of the current hour, so every bucket is still kept.
	h := time.Now().UTC().Truncate(time.Hour)
	evs := []Event{
		{ID: "1", Time: h.Add(-2*time.Hour + time.Minute), KeyID: "alice", AccountID: "acc1", Model: "claude-sonnet-4", InputTokens: 1_000_000, Status: 200, LatencyMs: 100},
		{ID: "2", Time: h.Add(-2*time.Hour + 2*time.Minute), KeyID: "alice", AccountID: "acc1", Model: "claude-opus-4", OutputTokens: 1_000_000, Status: 200, LatencyMs: 300},
		{ID: "3", Time: h.Add(-time.Hour), KeyID: "bob", AccountID: "acc2", Model: "claude-sonnet-4", InputTokens: 2_000_000, OutputTokens: 10, Status: 200},
		{ID: "4", Time: h.Add(time.Minute), KeyID: "bob", Model: "mystery-1", InputTokens: 50_000_000, Status: 502},
		{ID: "5", Time: h.Add(2 * time.Minute), KeyID: "carol", Model: "mystery-2", InputTokens: 5, Status: 200},
		{ID: "6", Time: h.Add(3 * time.Minute), KeyID: "carol", Model: "mystery-2", InputTokens: 5, Status: 200},
	}
	if _, err := a.Apply(context.Background(), evs); err != nil {
		t.Fatal(err)
	}
	return NewReader(env.Client, ks), a, h
}

func TestReaderRangeAndSeries(t *testing.T) {
	rd, _, h := readFixture(t)
	ctx := context.Background()

	// Costs: 1M sonnet input $3; 1M opus output $75; 2M sonnet input $6 +
	// 10 output tokens at $15/M (150,000 nano-dollars).
	all, err := rd.Range(ctx, DimGlobal, GlobalID, h.Add(-3*time.Hour), h.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := Totals{Requests: 6, Errors: 1, InputTokens: 53_000_010, OutputTokens: 1_000_010, CostNanos: 84_000_150_000, LatencyMsSum: 400}
	if all != want {
		t.Errorf("global range:\n got %+v\nwant %+v", all, want)
	}
	alice, _ := rd.Range(ctx, DimKey, "alice", h.Add(-2*time.Hour), h.Add(-time.Hour))
	if alice.Requests != 2 || alice.CostNanos != 78_000_000_000 {
		t.Errorf("alice: %+v", alice)
	}
	none, _ := rd.Range(ctx, DimKey, "alice", h.Add(-time.Hour), h)
	if none != (Totals{}) {
		t.Errorf("alice in an hour without requests: %+v", none)
	}
	acc, _ := rd.Range(ctx, DimAccount, "acc1", h.Add(-24*time.Hour), h.Add(time.Hour))
	if acc.Requests != 2 {
		t.Errorf("acc1: %+v", acc)
	}

	series, err := rd.Series(ctx, DimModel, "claude-sonnet-4", Hour, h.Add(-3*time.Hour), h.Add(30*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range series {
		got = append(got, fmt.Sprintf("%s=%d", p.Start.Format("15"), p.InputTokens))
	}
	wantS := []string{
		h.Add(-3*time.Hour).Format("15") + "=0", h.Add(-2*time.Hour).Format("15") + "=1000000",
		h.Add(-time.Hour).Format("15") + "=2000000", h.Format("15") + "=0",
	}
	if fmt.Sprint(got) != fmt.Sprint(wantS) {
		t.Errorf("hourly series %v, want %v", got, wantS)
	}
	days, err := rd.Series(ctx, DimKey, "bob", Day, h.AddDate(0, 0, -1), h.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var sum int64
	for _, p := range days {
		sum += p.Requests
	}
	if len(days) < 2 || sum != 2 {
		t.Errorf("daily series for bob: %d points, %d requests", len(days), sum)
	}

	all2, _ := rd.AllTime(ctx, DimGlobal, GlobalID)
	if all2.Requests != 6 || all2.LastUsed != h.Add(3*time.Minute).UnixMilli() {
		t.Errorf("all time: %+v", all2)
	}

	for _, q := range []func() error{
		func() error { _, err := rd.Range(ctx, "user", "x", h, h.Add(time.Hour)); return err },
		func() error { _, err := rd.Series(ctx, DimKey, "x", Month, h, h.Add(time.Hour)); return err },
		func() error { _, err := rd.Series(ctx, DimKey, "x", Hour, h, h.AddDate(0, 0, 200)); return err },
		func() error { _, err := rd.Top(ctx, DimKey, "latency", h, h.Add(time.Hour), 5); return err },
		func() error { _, err := rd.Top(ctx, DimKey, ByCost, h, h.Add(time.Hour), 0); return err },
	} {
		if err := q(); !errors.Is(err, ErrBadQuery) {
			t.Errorf("bad query: err = %v", err)
		}
	}
}

func TestReaderTop(t *testing.T) {
	rd, _, h := readFixture(t)
	ctx := context.Background()
	ids := func(rs []Ranked) string {
		var out []string
		for _, r := range rs {
			out = append(out, r.ID)
		}
		return strings.Join(out, ",")
	}
	from, to := h.Add(-3*time.Hour), h.Add(time.Hour)
	byCost, err := rd.Top(ctx, DimKey, ByCost, from, to, 10)
	if err != nil {
		t.Fatal(err)
	}
	// alice $78, bob $6 (mystery-1 is free), carol $0.
	if got := ids(byCost); got != "alice,bob,carol" {
		t.Errorf("top keys by cost: %s", got)
	}
	if byCost[0].Totals.CostNanos != 78_000_000_000 {
		t.Errorf("alice's cost %d", byCost[0].Totals.CostNanos)
	}
	byTokens, _ := rd.Top(ctx, DimKey, ByTokens, from, to, 2)
	if got := ids(byTokens); got != "bob,alice" {
		t.Errorf("top 2 keys by tokens: %s", got)
	}
	models, _ := rd.Top(ctx, DimModel, ByRequests, from, to, 10)
	if got := ids(models); got != "claude-sonnet-4,mystery-2,claude-opus-4,mystery-1" {
		t.Errorf("top models by requests: %s", got)
	}
	// Only the last hour: alice had nothing then.
	recent, _ := rd.Top(ctx, DimKey, ByRequests, h, h.Add(time.Hour), 10)
	if got := ids(recent); got != "carol,bob" {
		t.Errorf("top keys in the current hour: %s", got)
	}
	allTime, _ := rd.Top(ctx, DimKeyModel, ByCost, time.Time{}, time.Time{}, 1)
	if got := ids(allTime); got != "alice|claude-opus-4" {
		t.Errorf("top key-model of all time: %s", got)
	}
}

func TestReaderKeySummaryAndUnknownModels(t *testing.T) {
	rd, _, h := readFixture(t)
	ctx := context.Background()
	s, err := rd.KeySummary(ctx, "bob", h.Add(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if s.Total.Requests != 2 || s.Total.Errors != 1 || s.Total.InputTokens != 52_000_000 {
		t.Errorf("bob total: %+v", s.Total)
	}
	// bob's requests were at h-1h and h+1m: both today, unless h is midnight.
	wantToday, wantMonth := int64(2), int64(2)
	if prev := h.Add(-time.Hour); prev.Day() != h.Day() {
		wantToday = 1
		if prev.Month() != h.Month() {
			wantMonth = 1
		}
	}
	if s.Today.Requests != wantToday || s.Month.Requests != wantMonth {
		t.Errorf("bob today %d, this month %d; want %d, %d", s.Today.Requests, s.Month.Requests, wantToday, wantMonth)
	}
	if len(s.Models) != 2 {
		t.Fatalf("bob's models: %+v", s.Models)
	}
	for _, m := range s.Models {
		if m.Total.Requests != 1 {
			t.Errorf("bob's %s: %+v", m.Model, m.Total)
		}
	}
	empty, err := rd.KeySummary(ctx, "nobody", h)
	if err != nil || empty.Total.Requests != 0 || len(empty.Models) != 0 {
		t.Errorf("unused key: %+v, %v", empty, err)
	}

	unknown, err := rd.UnknownModels(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(unknown) != "[{mystery-2 2} {mystery-1 1}]" {
		t.Errorf("unknown models %v", unknown)
	}
}
