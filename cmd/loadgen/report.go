package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/relaydev/relay/internal/loadtest"
)

// Report is everything one run measured; it is written as JSON so runs can
// be compared between commits.
type Report struct {
	Meta         Meta               `json:"meta"`
	NonStreaming []RatePoint        `json:"non_streaming"`
	Streaming    *StreamingResult   `json:"streaming,omitempty"`
	OpenStreams  []OpenStreamsPoint `json:"open_streams,omitempty"`
	Images       *ImagesResult      `json:"images,omitempty"`
	Usage        *UsageResult       `json:"usage,omitempty"`
	Sustained    *SustainedResult   `json:"sustained,omitempty"`
	Profile      *ProfileResult     `json:"profile,omitempty"`
	Targets      []TargetCheck      `json:"targets"`
}

// Meta describes the machine and the code under test.
type Meta struct {
	Started    time.Time `json:"started"`
	Elapsed    string    `json:"elapsed"`
	GitCommit  string    `json:"git_commit"`
	GitDirty   bool      `json:"git_dirty"`
	GoVersion  string    `json:"go_version"`
	GOMAXPROCS int       `json:"gomaxprocs"`
	NumCPU     int       `json:"num_cpu"`
	CPUModel   string    `json:"cpu_model"`
	Redis      string    `json:"redis_version"`
	Colocation string    `json:"colocation"`
	RelayEnv   []string  `json:"relay_env"` // settings that differ from the defaults (no secrets)
	Quick      bool      `json:"quick"`
}

// Run is one open-loop run against one target.
type Run struct {
	Target   string              `json:"target"`
	Rate     float64             `json:"rate"`
	Duration string              `json:"duration"`
	Latency  loadtest.Summary    `json:"latency"`
	Sent     int64               `json:"sent"`
	OK       int64               `json:"ok"`
	Errors   int64               `json:"errors"`
	Dropped  int64               `json:"dropped"`
	Achieved float64             `json:"achieved_per_sec"`
	Relay    *loadtest.ProcUsage `json:"relay,omitempty"`
	Redis    *loadtest.ProcUsage `json:"redis,omitempty"`
	Loadgen  *loadtest.ProcUsage `json:"loadgen_and_fake,omitempty"`
	// RedisCmdsPerReq is Redis commands per request in the run (relay
	// runs: including the usage pool's and other background work).
	RedisCmdsPerReq float64 `json:"redis_cmds_per_req,omitempty"`
	// RedisTopCmds are the most called commands, per request.
	RedisTopCmds map[string]float64 `json:"redis_top_cmds_per_req,omitempty"`
	FirstError   string             `json:"first_error,omitempty"`
	// OtherCPUPercent is CPU used by processes outside the benchmark
	// during the run (% of one core): a busy machine skews the numbers.
	OtherCPUPercent float64 `json:"other_cpu_percent"`
}

// Added is relay minus direct, quantile by quantile.
type Added struct {
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
}

func added(direct, relay loadtest.Summary) Added {
	return Added{P50: relay.P50 - direct.P50, P90: relay.P90 - direct.P90, P99: relay.P99 - direct.P99, Max: relay.Max - direct.Max}
}

// RatePoint is scenario 1 at one rate.
type RatePoint struct {
	Rate   float64 `json:"rate"`
	Direct Run     `json:"direct"`
	Relay  Run     `json:"relay"`
	Added  Added   `json:"added"`
}

// StreamSide is streaming fidelity on one path.
type StreamSide struct {
	Streams    int64               `json:"streams"`
	Errors     int64               `json:"errors"`
	Events     int64               `json:"events"`
	WantEvents int64               `json:"want_events"`
	Merged     int64               `json:"merged_events"` // arrived in the same read as an earlier event
	ShortGaps  int64               `json:"short_gaps"`    // gap under half the upstream's spacing
	TTFB       loadtest.Summary    `json:"ttfb"`
	GapDev     loadtest.Summary    `json:"gap_deviation"` // |client gap - upstream gap|
	Total      loadtest.Summary    `json:"total"`
	RelayUsage *loadtest.ProcUsage `json:"relay,omitempty"`
}

// StreamingResult is scenario 2.
type StreamingResult struct {
	Rate        float64       `json:"streams_per_sec"`
	FirstDelay  time.Duration `json:"first_delay_ns"`
	Gap         time.Duration `json:"gap_ns"`
	EventsEach  int           `json:"events_per_stream"`
	Direct      StreamSide    `json:"direct"`
	Relay       StreamSide    `json:"relay"`
	AddedTTFB   Added         `json:"added_ttfb"`
	AddedGapDev Added         `json:"added_gap_deviation"`
}

// OpenStreamsPoint is scenario 3 at one number of streams.
type OpenStreamsPoint struct {
	Want         int     `json:"want"`
	Open         int64   `json:"open"` // streams that got their first event
	Failed       int64   `json:"failed"`
	UpstreamOpen int64   `json:"upstream_open"`
	RSSBefore    int64   `json:"relay_rss_before_bytes"`
	RSSOpen      int64   `json:"relay_rss_open_bytes"`
	PerStream    float64 `json:"relay_bytes_per_stream"`
	CPUPercent   float64 `json:"relay_cpu_percent_while_open"`
	OpenTime     string  `json:"time_to_open"`
}

// ImagesResult is scenario 4: the worker pool's hand-off on the image
// stream's settings with an instant handler.
type ImagesResult struct {
	Note       string           `json:"note"`
	Rate       float64          `json:"rate"`
	Pickup     loadtest.Summary `json:"enqueue_to_pickup"`
	Backlog    int              `json:"backlog"`
	JobsPerSec float64          `json:"jobs_per_sec"`
}

// UsageResult is scenario 5.
type UsageResult struct {
	Rate           float64          `json:"rate"`
	Lag            loadtest.Summary `json:"lag"` // oldest unaggregated event's age, sampled
	LagSamples     int64            `json:"lag_samples"`
	AggregatedRate float64          `json:"aggregated_per_sec_at_rate"`
	Backlog        int              `json:"backlog"`
	MaxEventsSec   float64          `json:"max_events_per_sec"`
}

// SustainedResult is scenario 6.
type SustainedResult struct {
	Steps  []Run   `json:"steps"`
	Best   float64 `json:"best_rate"` // highest rate with p99 <= 10 ms, no errors, nothing dropped
	Direct *Run    `json:"direct_at_best,omitempty"`
}

// ProfileResult is where the relay's profiles under load went.
type ProfileResult struct {
	Rate     float64  `json:"rate"`
	CPU      string   `json:"cpu_profile"`
	Allocs   string   `json:"alloc_profile"`
	TopCPU   []string `json:"top_cpu,omitempty"`
	TopAlloc []string `json:"top_alloc,omitempty"`
}

// TargetCheck is one line of DESIGN.md's performance targets.
type TargetCheck struct {
	Measure  string `json:"measure"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Pass     bool   `json:"pass"`
	Missing  bool   `json:"missing,omitempty"` // not measured in this run
}

// table writes rows under a header, columns padded to their widest cell.
// The first column is left-aligned, the others right-aligned.
func table(w io.Writer, header []string, rows [][]string) {
	width := make([]int, len(header))
	for i, h := range header {
		width[i] = len([]rune(h))
	}
	for _, r := range rows {
		for i, c := range r {
			if i < len(width) {
				width[i] = max(width[i], len([]rune(c)))
			}
		}
	}
	line := func(cells []string) {
		var sb strings.Builder
		for i := range width {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			pad := strings.Repeat(" ", width[i]-len([]rune(c)))
			if i == 0 {
				sb.WriteString(c + pad)
			} else {
				sb.WriteString("  " + pad + c)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(sb.String(), " "))
	}
	line(header)
	sep := make([]string, len(width))
	for i := range sep {
		sep[i] = strings.Repeat("-", width[i])
	}
	line(sep)
	for _, r := range rows {
		line(r)
	}
}

// ms formats a duration in milliseconds with enough digits for µs.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	switch {
	case v >= 100 || v <= -100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10 || v <= -10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func mb(b int64) string { return fmt.Sprintf("%.0f", float64(b)/(1<<20)) }

func usageCells(u *loadtest.ProcUsage) (cpu, rss string) {
	if u == nil {
		return "-", "-"
	}
	return fmt.Sprintf("%.0f", u.CPUPercent), mb(u.RSSMax)
}

// print writes the human-readable tables.
func (rep *Report) print(w io.Writer) {
	m := rep.Meta
	fmt.Fprintf(w, "\nrelay benchmark  commit %s%s  %s  GOMAXPROCS=%d  %s  redis %s\n", short(m.GitCommit), dirty(m.GitDirty),
		m.GoVersion, m.GOMAXPROCS, m.CPUModel, m.Redis)
	fmt.Fprintf(w, "%s\n", m.Colocation)
	fmt.Fprintf(w, "latencies in ms; CPU in %% of one core; RSS in MB (peak during the run); other CPU: processes outside the benchmark\n")

	if len(rep.NonStreaming) > 0 {
		fmt.Fprintf(w, "\n1. Non-streaming chat, Anthropic route (auth, limits, usage event), open loop\n")
		var rows [][]string
		for _, p := range rep.NonStreaming {
			for _, r := range []Run{p.Direct, p.Relay} {
				cpu, rss := usageCells(r.Relay)
				rows = append(rows, []string{fmt.Sprintf("%.0f/s %s", p.Rate, r.Target), ms(r.Latency.P50), ms(r.Latency.P90),
					ms(r.Latency.P99), ms(r.Latency.Max), fmt.Sprintf("%.0f", r.Achieved), fmt.Sprint(r.Errors + r.Dropped), cpu, rss,
					cmds(r.RedisCmdsPerReq), fmt.Sprintf("%.0f", r.OtherCPUPercent)})
			}
			rows = append(rows, []string{fmt.Sprintf("%.0f/s added", p.Rate), ms(p.Added.P50), ms(p.Added.P90), ms(p.Added.P99),
				ms(p.Added.Max), "", "", "", "", "", ""})
		}
		table(w, []string{"rate/target", "p50", "p90", "p99", "max", "req/s", "errors", "relay CPU", "relay RSS", "redis cmd/req", "other CPU"}, rows)
		for _, p := range rep.NonStreaming {
			if p.Rate == 1000 && len(p.Relay.RedisTopCmds) > 0 {
				fmt.Fprintf(w, "Redis calls per request at 1000/s (incl. inside Lua scripts and background work): %s\n", topLine(p.Relay.RedisTopCmds))
			}
		}
	}
	if s := rep.Streaming; s != nil {
		fmt.Fprintf(w, "\n2. Streaming fidelity: %.0f streams/s, first event after %v, then %d events %v apart\n",
			s.Rate, s.FirstDelay, s.EventsEach, s.Gap)
		row := func(name string, d StreamSide) []string {
			return []string{name, ms(d.TTFB.P50), ms(d.TTFB.P99), ms(d.GapDev.P50), ms(d.GapDev.P99), ms(d.GapDev.Max),
				fmt.Sprintf("%d/%d", d.Events, d.WantEvents), fmt.Sprint(d.Merged), fmt.Sprint(d.ShortGaps), fmt.Sprint(d.Errors)}
		}
		table(w, []string{"path", "TTFB p50", "TTFB p99", "gap dev p50", "gap dev p99", "gap dev max", "events", "merged", "short gaps", "errors"},
			[][]string{row("direct", s.Direct), row("relay", s.Relay),
				{"added", ms(s.AddedTTFB.P50), ms(s.AddedTTFB.P99), ms(s.AddedGapDev.P50), ms(s.AddedGapDev.P99), ms(s.AddedGapDev.Max), "", "", "", ""}})
	}
	if len(rep.OpenStreams) > 0 {
		fmt.Fprintf(w, "\n3. Concurrent open streams through the relay (one event a second)\n")
		var rows [][]string
		for _, p := range rep.OpenStreams {
			rows = append(rows, []string{fmt.Sprint(p.Want), fmt.Sprint(p.Open), fmt.Sprint(p.Failed), fmt.Sprint(p.UpstreamOpen),
				mb(p.RSSBefore), mb(p.RSSOpen), fmt.Sprintf("%.1f", p.PerStream/1024), fmt.Sprintf("%.0f", p.CPUPercent), p.OpenTime})
		}
		table(w, []string{"streams", "open", "failed", "upstream open", "RSS before", "RSS open", "KB/stream", "relay CPU", "time to open"}, rows)
	}
	if im := rep.Images; im != nil {
		fmt.Fprintf(w, "\n4. Image job hand-off (%s)\n", im.Note)
		table(w, []string{"measure", "p50", "p90", "p99", "max", "jobs/s"}, [][]string{
			{fmt.Sprintf("enqueue->pickup at %.0f/s", im.Rate), ms(im.Pickup.P50), ms(im.Pickup.P90), ms(im.Pickup.P99), ms(im.Pickup.Max), ""},
			{fmt.Sprintf("backlog of %d", im.Backlog), "", "", "", "", fmt.Sprintf("%.0f", im.JobsPerSec)},
		})
	}
	if u := rep.Usage; u != nil {
		fmt.Fprintf(w, "\n5. Usage pipeline (real Redis)\n")
		table(w, []string{"measure", "p50", "p90", "p99", "max", "events/s"}, [][]string{
			{fmt.Sprintf("lag at %.0f req/s (%d samples)", u.Rate, u.LagSamples), ms(u.Lag.P50), ms(u.Lag.P90), ms(u.Lag.P99), ms(u.Lag.Max),
				fmt.Sprintf("%.0f", u.AggregatedRate)},
			{fmt.Sprintf("backlog of %d, usage pool", u.Backlog), "", "", "", "", fmt.Sprintf("%.0f", u.MaxEventsSec)},
		})
	}
	if s := rep.Sustained; s != nil {
		fmt.Fprintf(w, "\n6. Sustained throughput through the relay, no-delay fake (pass: p99 <= 10 ms, no errors or drops)\n")
		var rows [][]string
		for _, r := range s.Steps {
			cpu, rss := usageCells(r.Relay)
			rows = append(rows, []string{fmt.Sprintf("%.0f/s", r.Rate), ms(r.Latency.P50), ms(r.Latency.P99), ms(r.Latency.Max),
				fmt.Sprintf("%.0f", r.Achieved), fmt.Sprint(r.Errors), fmt.Sprint(r.Dropped), cpu, rss, fmt.Sprintf("%.0f", r.OtherCPUPercent)})
		}
		table(w, []string{"rate", "p50", "p99", "max", "req/s", "errors", "dropped", "relay CPU", "relay RSS", "other CPU"}, rows)
		fmt.Fprintf(w, "highest passing rate: %.0f req/s\n", s.Best)
	}
	if p := rep.Profile; p != nil {
		fmt.Fprintf(w, "\nProfiles of the relay at %.0f req/s: %s, %s\n", p.Rate, p.CPU, p.Allocs)
		if len(p.TopCPU) > 0 {
			fmt.Fprintf(w, "top CPU (flat):\n  %s\n", strings.Join(p.TopCPU, "\n  "))
		}
	}
	if len(rep.Targets) > 0 {
		fmt.Fprintf(w, "\nTargets (DESIGN.md)\n")
		var rows [][]string
		for _, t := range rep.Targets {
			verdict := "FAIL"
			switch {
			case t.Missing:
				verdict = "n/a"
			case t.Pass:
				verdict = "ok"
			}
			rows = append(rows, []string{t.Measure, t.Target, t.Measured, verdict})
		}
		table(w, []string{"measure", "target", "measured", ""}, rows)
	}
}

func cmds(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f", v)
}

func short(c string) string {
	if len(c) > 10 {
		return c[:10]
	}
	return c
}

func dirty(d bool) string {
	if d {
		return "+dirty"
	}
	return ""
}

// checkTargets compares the report with DESIGN.md's performance targets.
func (rep *Report) checkTargets() []TargetCheck {
	var out []TargetCheck
	missing := func(measure, target string) {
		out = append(out, TargetCheck{Measure: measure, Target: target, Missing: true, Measured: "not measured"})
	}
	{
		const m, t = "added latency, non-streaming, 1,000 req/s", "p50 <= 0.3 ms, p99 <= 1.5 ms"
		var p *RatePoint
		for i := range rep.NonStreaming {
			if rep.NonStreaming[i].Rate == 1000 {
				p = &rep.NonStreaming[i]
			}
		}
		if p == nil {
			missing(m, t)
		} else {
			out = append(out, TargetCheck{Measure: m, Target: t,
				Measured: fmt.Sprintf("p50 %s ms, p99 %s ms", ms(p.Added.P50), ms(p.Added.P99)),
				Pass:     p.Added.P50 <= 300*time.Microsecond && p.Added.P99 <= 1500*time.Microsecond && p.Relay.Errors == 0})
		}
	}
	if s := rep.Streaming; s != nil {
		out = append(out, TargetCheck{Measure: "added time to first byte, streaming", Target: "p50 <= 0.5 ms",
			Measured: ms(s.AddedTTFB.P50) + " ms", Pass: s.AddedTTFB.P50 <= 500*time.Microsecond})
		out = append(out, TargetCheck{Measure: "chunk timing", Target: "no merged events, gaps within 1 ms",
			Measured: fmt.Sprintf("%d merged, %d short gaps, added gap deviation p99 %s ms", s.Relay.Merged, s.Relay.ShortGaps, ms(s.AddedGapDev.P99)),
			Pass: s.Relay.Merged <= s.Direct.Merged && s.Relay.ShortGaps <= s.Direct.ShortGaps &&
				s.AddedGapDev.P99 <= time.Millisecond && s.Relay.Events == s.Relay.WantEvents})
	} else {
		missing("added time to first byte, streaming", "p50 <= 0.5 ms")
		missing("chunk timing", "no merged events, gaps within 1 ms")
	}
	{
		const m, t = "open streams", "5,000 with RSS <= 200 MB"
		var p *OpenStreamsPoint
		for i := range rep.OpenStreams {
			if rep.OpenStreams[i].Want == 5000 {
				p = &rep.OpenStreams[i]
			}
		}
		if p == nil {
			missing(m, t)
		} else {
			out = append(out, TargetCheck{Measure: m, Target: t, Measured: fmt.Sprintf("%d open, RSS %s MB", p.Open, mb(p.RSSOpen)),
				Pass: p.Open == 5000 && p.RSSOpen <= 200<<20})
		}
	}
	if u := rep.Usage; u != nil {
		out = append(out, TargetCheck{Measure: "usage pipeline", Target: ">= 20,000 events/s; lag <= 1 s at 1,000 req/s",
			Measured: fmt.Sprintf("%.0f events/s; lag p99 %s ms, max %s ms", u.MaxEventsSec, ms(u.Lag.P99), ms(u.Lag.Max)),
			Pass:     u.MaxEventsSec >= 20_000 && u.Lag.Max <= time.Second && u.LagSamples > 0})
	} else {
		missing("usage pipeline", ">= 20,000 events/s; lag <= 1 s at 1,000 req/s")
	}
	if im := rep.Images; im != nil {
		out = append(out, TargetCheck{Measure: "image job hand-off", Target: "enqueue to pick-up p99 <= 5 ms",
			Measured: ms(im.Pickup.P99) + " ms", Pass: im.Pickup.P99 <= 5*time.Millisecond && im.Pickup.Count > 0})
	} else {
		missing("image job hand-off", "enqueue to pick-up p99 <= 5 ms")
	}
	if s := rep.Sustained; s != nil {
		out = append(out, TargetCheck{Measure: "sustained throughput, full path, no-delay fake", Target: ">= 4,000 req/s with p99 <= 10 ms",
			Measured: fmt.Sprintf("%.0f req/s", s.Best), Pass: s.Best >= 4000})
	} else {
		missing("sustained throughput, full path, no-delay fake", ">= 4,000 req/s with p99 <= 10 ms")
	}
	{
		const m, t = "Redis commands per request", "<= 10 (incl. background)"
		var worst float64
		for _, p := range rep.NonStreaming {
			if p.Rate >= 500 {
				worst = max(worst, p.Relay.RedisCmdsPerReq)
			}
		}
		if worst == 0 {
			missing(m, t)
		} else {
			out = append(out, TargetCheck{Measure: m, Target: t, Measured: fmt.Sprintf("%.1f", worst), Pass: worst <= 10})
		}
	}
	return out
}

// topCommands is the n commands called most between two INFO commandstats
// readings, in calls per request.
func topCommands(before, after map[string]int64, requests int64, n int) map[string]float64 {
	if requests <= 0 {
		return nil
	}
	type kv struct {
		name  string
		calls int64
	}
	var all []kv
	for name, c := range after {
		if d := c - before[name]; d > 0 {
			all = append(all, kv{name, d})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].calls != all[j].calls {
			return all[i].calls > all[j].calls
		}
		return all[i].name < all[j].name
	})
	out := map[string]float64{}
	for _, e := range all[:min(n, len(all))] {
		out[e.name] = float64(e.calls) / float64(requests)
	}
	return out
}

// topLine lists commands by calls, most first: "hset 19.9, zadd 20.8".
func topLine(m map[string]float64) string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool {
		if m[names[i]] != m[names[j]] {
			return m[names[i]] > m[names[j]]
		}
		return names[i] < names[j]
	})
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = fmt.Sprintf("%s %.1f", n, m[n])
	}
	return strings.Join(parts, ", ")
}
