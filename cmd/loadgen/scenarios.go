package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/fakeanthropic"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/loadtest"
	"github.com/relaydev/relay/usage"
	"github.com/relaydev/relay/workers"
)

// bench runs the scenarios against a started rig.
type bench struct {
	r      *rig
	fast   *fastClient
	sc     *streamClient
	direct target
	relay  target
	out    func(format string, args ...any) // progress
}

func newBench(r *rig, progress func(string, ...any)) *bench {
	return &bench{
		r: r, fast: newFastClient(), sc: newStreamClient(), out: progress,
		direct: target{name: "direct", url: r.fakeURL + "/v1/messages", key: r.upstreamKey},
		relay:  target{name: "relay", url: r.relayURL + "/api/v1/messages", key: r.key},
	}
}

// nonStreamingShape is the fake for non-streaming runs: no delay, so the
// difference between the paths is all the relay's.
var nonStreamingShape = fakeanthropic.BenchOptions{ReplyBytes: 1000}

// load runs one open-loop non-streaming run against t, sampling the relay,
// Redis and this process, and counting Redis commands.
func (b *bench) load(ctx context.Context, t target, rate float64, d time.Duration) Run {
	b.r.fake.SetOptions(nonStreamingShape)
	relayS := loadtest.StartSampler(b.r.relayPid(), 100*time.Millisecond)
	redisS := loadtest.StartSampler(b.r.redisPid(), 100*time.Millisecond)
	selfS := loadtest.StartSampler(os.Getpid(), 100*time.Millisecond)
	byCmd0, cmds0 := b.r.redisCommands(ctx)
	sys0, _ := loadtest.SystemCPU()
	t0 := time.Now()
	var firstErr atomic.Pointer[string]
	res := loadtest.Run(ctx, loadtest.Plan{Rate: rate, Duration: d, MaxInFlight: 5000}, func(context.Context) error {
		err := b.fast.do(t)
		if err != nil {
			s := err.Error()
			firstErr.CompareAndSwap(nil, &s)
		}
		return err
	})
	byCmd, cmds := b.r.redisCommands(ctx)
	cmds -= cmds0
	ru, rd, su := relayS.Stop(), redisS.Stop(), selfS.Stop()
	sys1, _ := loadtest.SystemCPU()
	other := sys1 - sys0 - ru.CPU - rd.CPU - su.CPU
	run := Run{Target: t.name, Rate: rate, Duration: d.String(), Latency: res.Latency.Summary(), Sent: res.Sent, OK: res.OK,
		Errors: res.Errors, Dropped: res.Dropped, Achieved: res.Achieved, Relay: &ru, Redis: &rd, Loadgen: &su}
	run.OtherCPUPercent = max(0, 100*other.Seconds()/time.Since(t0).Seconds())
	if t.name == "direct" {
		run.Relay = nil
	}
	if res.Sent > 0 {
		run.RedisCmdsPerReq = float64(cmds) / float64(res.Sent)
		run.RedisTopCmds = topCommands(byCmd0, byCmd, res.Sent, 12)
	}
	if p := firstErr.Load(); p != nil {
		run.FirstError = *p
	}
	b.out("  %-6s %5.0f/s: p50 %s p99 %s max %s ms, %d ok, %d errors, %d dropped", t.name, rate,
		ms(run.Latency.P50), ms(run.Latency.P99), ms(run.Latency.Max), run.OK, run.Errors, run.Dropped)
	return run
}

// warmUp fills connection pools and caches on both paths.
func (b *bench) warmUp(ctx context.Context, d time.Duration) {
	b.r.fake.SetOptions(nonStreamingShape)
	for _, t := range []target{b.direct, b.relay} {
		loadtest.Run(ctx, loadtest.Plan{Rate: 500, Duration: d, MaxInFlight: 5000}, func(context.Context) error { return b.fast.do(t) })
	}
}

// nonStreaming is scenario 1: each rate direct, then through the relay.
// At 1,000 req/s it also samples the usage pipeline's lag.
func (b *bench) nonStreaming(ctx context.Context, rates []float64, d time.Duration, lagAt float64) ([]RatePoint, *UsageResult) {
	var pts []RatePoint
	var ur *UsageResult
	for _, rate := range rates {
		p := RatePoint{Rate: rate}
		p.Direct = b.load(ctx, b.direct, rate, d)
		if rate == lagAt {
			lag := b.startLagSampler(ctx)
			p.Relay = b.load(ctx, b.relay, rate, d)
			ur = lag.stop(rate)
		} else {
			p.Relay = b.load(ctx, b.relay, rate, d)
		}
		p.Added = added(p.Direct.Latency, p.Relay.Latency)
		pts = append(pts, p)
	}
	return pts, ur
}

// streaming is scenario 2: streams direct, then through the relay, and how
// their events arrived.
func (b *bench) streaming(ctx context.Context, rate float64, d time.Duration) *StreamingResult {
	shape := fakeanthropic.BenchOptions{FirstDelay: 200 * time.Millisecond, Events: 45, EventBytes: 24, Gap: 20 * time.Millisecond}
	b.r.fake.SetOptions(shape)
	want := int64(shape.Events + 5) // message_start, block start, deltas, block stop, message_delta, message_stop
	res := &StreamingResult{Rate: rate, FirstDelay: shape.FirstDelay, Gap: shape.Gap, EventsEach: int(want)}
	side := func(t target) StreamSide {
		st := loadtest.NewStreamStats(shape.Gap)
		var relayS *loadtest.Sampler
		if t.name == "relay" {
			relayS = loadtest.StartSampler(b.r.relayPid(), 100*time.Millisecond)
		}
		start := time.Now()
		interval := time.Duration(float64(time.Second) / rate)
		n := int(d / interval)
		var wg sync.WaitGroup
		for i := range n {
			due := start.Add(time.Duration(i) * interval)
			time.Sleep(time.Until(due))
			wg.Go(func() {
				tm, err := b.sc.stream(ctx, t, due, nil)
				st.Add(tm, err)
			})
		}
		wg.Wait()
		s := StreamSide{Streams: st.Streams, Errors: st.Errors, Events: st.Events, WantEvents: want * st.Streams,
			Merged: st.Merged, ShortGaps: st.Short, TTFB: st.TTFB.Summary(), GapDev: st.GapDev.Summary(), Total: st.Total.Summary()}
		if relayS != nil {
			u := relayS.Stop()
			s.RelayUsage = &u
		}
		b.out("  %-6s streams %d: TTFB p50 %s ms, gap deviation p99 %s ms, merged %d, short gaps %d, events %d/%d, errors %d",
			t.name, s.Streams, ms(s.TTFB.P50), ms(s.GapDev.P99), s.Merged, s.ShortGaps, s.Events, s.WantEvents, s.Errors)
		return s
	}
	res.Direct = side(b.direct)
	res.Relay = side(b.relay)
	res.AddedTTFB = added(res.Direct.TTFB, res.Relay.TTFB)
	res.AddedGapDev = added(res.Direct.GapDev, res.Relay.GapDev)
	return res
}

// openStreams is scenario 3: n streams held open through the relay, one
// event a second, and the relay's memory with them open.
func (b *bench) openStreams(ctx context.Context, n int, openRate float64) OpenStreamsPoint {
	b.r.fake.SetOptions(fakeanthropic.BenchOptions{Events: 600, EventBytes: 24, Gap: time.Second})
	p := OpenStreamsPoint{Want: n}
	time.Sleep(500 * time.Millisecond) // let the previous scenario's garbage go
	before, _ := loadtest.ReadProc(b.r.relayPid())
	p.RSSBefore = before.RSS
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var opened, failed atomic.Int64
	all := make(chan struct{})
	var wg sync.WaitGroup
	start := time.Now()
	interval := time.Duration(float64(time.Second) / openRate)
	for i := range n {
		time.Sleep(time.Until(start.Add(time.Duration(i) * interval)))
		wg.Go(func() {
			first := func() {
				if opened.Add(1) == int64(n) {
					close(all)
				}
			}
			if _, err := b.sc.stream(sctx, b.relay, time.Now(), first); err != nil && sctx.Err() == nil {
				if failed.Add(1) == 1 {
					b.out("  first failed stream: %v", err)
				}
			}
		})
	}
	select {
	case <-all:
	case <-time.After(30 * time.Second):
	}
	p.OpenTime = time.Since(start).Round(time.Millisecond).String()
	// Hold them for a few events, then read the relay's memory.
	s := loadtest.StartSampler(b.r.relayPid(), 100*time.Millisecond)
	time.Sleep(3 * time.Second)
	u := s.Stop()
	p.Open, p.Failed, p.UpstreamOpen = opened.Load(), failed.Load(), b.r.fake.Counts().Open
	p.RSSOpen = u.RSSMax
	p.CPUPercent = u.CPUPercent
	if p.Open > 0 {
		p.PerStream = float64(p.RSSOpen-p.RSSBefore) / float64(p.Open)
	}
	b.out("  %d streams: %d open (%d upstream), %d failed, relay RSS %s -> %s MB, %.1f KB/stream", n, p.Open,
		p.UpstreamOpen, p.Failed, mb(p.RSSBefore), mb(p.RSSOpen), p.PerStream/1024)
	cancel()
	wg.Wait()
	// The relay notices the clients left at its next write (the next event,
	// within a second) and cancels the upstream streams.
	deadline := time.Now().Add(15 * time.Second)
	for b.r.fake.Counts().Open > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if o := b.r.fake.Counts().Open; o > 0 {
		b.out("  warning: %d upstream streams still open 15s after their clients left", o)
	}
	return p
}

// sustained is scenario 6: rising rates through the relay until p99 passes
// 10 ms, or requests fail or are dropped.
func (b *bench) sustained(ctx context.Context, rates []float64, d time.Duration) *SustainedResult {
	res := &SustainedResult{}
	for _, rate := range rates {
		r := b.load(ctx, b.relay, rate, d)
		res.Steps = append(res.Steps, r)
		if r.Latency.P99 > 10*time.Millisecond || r.Errors > 0 || r.Dropped > 0 || r.Achieved < 0.95*rate {
			break
		}
		res.Best = rate
		// Let the usage pool catch up, so one step's backlog does not
		// weigh on the next.
		b.waitUsageDrained(ctx, 10*time.Second)
	}
	if res.Best > 0 {
		dr := b.load(ctx, b.direct, res.Best, d)
		res.Direct = &dr
	}
	return res
}

// ---- usage pipeline ----

// lagSampler samples how old the oldest usage event not yet aggregated is.
type lagSampler struct {
	b       *bench
	hist    *loadtest.Histogram
	stopCh  chan struct{}
	done    chan struct{}
	total0  int64
	started time.Time
	errs    int
}

func (b *bench) usageKeys() (stream, total string) {
	ks := keyspace.New(b.r.keyPrefix)
	return ks.Stream(usage.StreamName), ks.UsageTotal(usage.DimGlobal, usage.GlobalID)
}

func (b *bench) aggregatedTotal(ctx context.Context) int64 {
	_, total := b.usageKeys()
	n, _ := b.r.rdb.HGet(ctx, total, usage.FieldRequests).Int64()
	return n
}

// oldestUnaggregated is the stream ID time of the oldest usage entry not yet
// acknowledged by the usage group (pending, or not delivered yet); zero if
// none.
func (b *bench) oldestUnaggregated(ctx context.Context) (time.Time, error) {
	stream, _ := b.usageKeys()
	groups, err := b.r.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		return time.Time{}, err
	}
	var oldest string
	for _, g := range groups {
		if g.Name != usage.StreamGroup {
			continue
		}
		if g.Pending > 0 {
			if p, err := b.r.rdb.XPending(ctx, stream, g.Name).Result(); err == nil && p.Count > 0 {
				oldest = p.Lower
			}
		}
		if oldest == "" {
			if next, err := b.r.rdb.XRangeN(ctx, stream, "("+g.LastDeliveredID, "+", 1).Result(); err == nil && len(next) > 0 {
				oldest = next[0].ID
			}
		}
	}
	if oldest == "" {
		return time.Time{}, nil
	}
	msStr, _, _ := strings.Cut(oldest, "-")
	v, err := strconv.ParseInt(msStr, 10, 64)
	if err != nil {
		return time.Time{}, err
	}
	return time.UnixMilli(v), nil
}

func (b *bench) startLagSampler(ctx context.Context) *lagSampler {
	l := &lagSampler{b: b, hist: loadtest.NewHistogram(), stopCh: make(chan struct{}), done: make(chan struct{}),
		total0: b.aggregatedTotal(ctx), started: time.Now()}
	go func() {
		defer close(l.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-l.stopCh:
				return
			case <-tick.C:
				at, err := b.oldestUnaggregated(ctx)
				if err != nil {
					if l.errs++; l.errs == 1 {
						b.out("  usage lag: %v", err)
					}
					continue
				}
				lag := time.Duration(0)
				if !at.IsZero() {
					lag = max(time.Since(at), 0)
				}
				l.hist.Record(lag)
			}
		}
	}()
	return l
}

func (l *lagSampler) stop(rate float64) *UsageResult {
	close(l.stopCh)
	<-l.done
	elapsed := time.Since(l.started)
	agg := l.b.aggregatedTotal(context.Background()) - l.total0
	return &UsageResult{Rate: rate, Lag: l.hist.Summary(), LagSamples: l.hist.Count(), AggregatedRate: float64(agg) / elapsed.Seconds()}
}

// waitUsageDrained waits until the usage group has nothing left to do.
func (b *bench) waitUsageDrained(ctx context.Context, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		at, err := b.oldestUnaggregated(ctx)
		if err == nil && at.IsZero() {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// usageBacklog measures the aggregation rate: n events (20 keys, 4 models)
// already on a stream of their own, worked off by a usage pool in this
// process against the run's Redis.
func (b *bench) usageBacklog(ctx context.Context, n int) (float64, error) {
	ks := keyspace.New("loadgen-usage:")
	pricing, err := usage.LoadPricing("")
	if err != nil {
		return 0, err
	}
	stream := ks.Stream(usage.StreamName)
	evs := usageMix(n, 20, 4)
	for lo := 0; lo < n; lo += 1000 {
		pipe := b.r.rdb.Pipeline()
		for i := lo; i < min(lo+1000, n); i++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{usage.StreamField, evs[i].AppendJSON(nil)}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return 0, err
		}
	}
	agg := usage.NewAggregator(b.r.rdb, ks, pricing, usage.AggregatorConfig{}, zerolog.Nop())
	pool, err := workers.New(b.r.rdb, agg.PoolConfig("loadgen", zerolog.Nop(), nil))
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := pool.Start(ctx); err != nil {
		return 0, err
	}
	defer pool.Stop()
	total := ks.UsageTotal(usage.DimGlobal, usage.GlobalID)
	deadline := start.Add(60 * time.Second)
	for {
		got, _ := b.r.rdb.HGet(ctx, total, usage.FieldRequests).Int()
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("only %d of %d events aggregated in 60s", got, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// usageMix is n events of a small team: keys keys, models models, a token
// window on half the keys, a few errors.
func usageMix(n, keys, models int) []usage.Event {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	names := []string{"claude-sonnet-4-5", "claude-opus-4-5", "claude-haiku-4-5", "gpt-4o"}[:models]
	run := strconv.FormatInt(time.Now().UnixNano(), 36)
	now := time.Now()
	evs := make([]usage.Event, n)
	for i := range evs {
		key := r.IntN(keys)
		evs[i] = usage.Event{
			ID: run + "-" + strconv.Itoa(i), RequestID: "loadgen", Time: now.Add(-time.Duration(r.IntN(600)) * time.Second),
			KeyID: "key" + strconv.Itoa(key), AccountID: "acct" + strconv.Itoa(r.IntN(3)), Service: usage.ServiceClaude,
			Model: names[r.IntN(len(names))], InputTokens: r.Int64N(20_000), OutputTokens: r.Int64N(2_000),
			CacheReadTokens: r.Int64N(50_000), LatencyMs: r.Int64N(3000), Status: 200,
		}
		if key%2 == 0 {
			evs[i].TokenWindowSec = 3600
		}
		if r.IntN(20) == 0 {
			evs[i].Status = 529
		}
	}
	return evs
}

// ---- image jobs ----

// images is scenario 4 on the worker pool runtime with the image stream's
// settings and an instant handler: enqueue-to-pickup latency at a steady
// rate, then jobs/s on a backlog.
func (b *bench) images(ctx context.Context, rate float64, d time.Duration, backlog int, concurrency int) (*ImagesResult, error) {
	ks := keyspace.New("loadgen-images:")
	res := &ImagesResult{Rate: rate, Backlog: backlog,
		Note: fmt.Sprintf("workers pool on the images stream settings, %d handlers, instant handler, real Redis", concurrency)}
	cfg := func(stream string, h workers.Handler) workers.Config {
		return workers.Config{Stream: ks.Stream(stream), Group: "images", Consumer: "loadgen", DeadLetter: ks.DeadLetter(stream),
			Handler: h, Concurrency: concurrency, Log: zerolog.Nop()}
	}
	hist := loadtest.NewHistogram()
	pool, err := workers.New(b.r.rdb, cfg(workers.ImageStream, func(_ context.Context, e workers.Entry) error {
		if ns, err := strconv.ParseInt(e.Values["t"], 10, 64); err == nil {
			hist.Record(time.Since(time.Unix(0, ns)))
		}
		return nil
	}))
	if err != nil {
		return nil, err
	}
	if err := pool.Start(ctx); err != nil {
		return nil, err
	}
	stream := ks.Stream(workers.ImageStream)
	loadtest.Run(ctx, loadtest.Plan{Rate: rate, Duration: d, MaxInFlight: 1000}, func(ctx context.Context) error {
		_, err := workers.Publish(ctx, b.r.rdb, stream, map[string]string{"t": strconv.FormatInt(time.Now().UnixNano(), 10)})
		return err
	})
	time.Sleep(200 * time.Millisecond)
	pool.Stop()
	res.Pickup = hist.Summary()

	// Throughput on a backlog.
	bstream := ks.Stream("images-backlog")
	for lo := 0; lo < backlog; lo += 1000 {
		pipe := b.r.rdb.Pipeline()
		for i := lo; i < min(lo+1000, backlog); i++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: bstream, Values: []any{"t", "0"}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, err
		}
	}
	var handled atomic.Int64
	done := make(chan struct{})
	bp, err := workers.New(b.r.rdb, cfg("images-backlog", func(context.Context, workers.Entry) error {
		if handled.Add(1) == int64(backlog) {
			close(done)
		}
		return nil
	}))
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := bp.Start(ctx); err != nil {
		return nil, err
	}
	select {
	case <-done:
		res.JobsPerSec = float64(backlog) / time.Since(start).Seconds()
	case <-time.After(60 * time.Second):
		res.JobsPerSec = float64(handled.Load()) / time.Since(start).Seconds()
	}
	bp.Stop()
	b.out("  pickup p50 %s p99 %s ms at %.0f/s; %.0f jobs/s on a backlog of %d", ms(res.Pickup.P50), ms(res.Pickup.P99),
		rate, res.JobsPerSec, backlog)
	return res, nil
}
