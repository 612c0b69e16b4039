package workers

import (
	"context"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/testredis"
)

// BenchmarkPoolThroughput measures entries/s through one stream with a no-op
// handler: b.N entries are queued first, then one pool works them off.
// Run it with a fixed count, e.g. -benchtime=200000x.
func BenchmarkPoolThroughput(b *testing.B) {
	for _, bc := range []struct {
		name        string
		concurrency int
		batch       bool
	}{
		{"handler/concurrency=8", 8, false},
		{"handler/concurrency=32", 32, false},
		{"batch/concurrency=4x100", 4, true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			env := testredis.New(b)
			s := newStreams(env)
			publishN(b, env.Client, s.stream, b.N)
			var handled atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			note := func(n int) {
				if handled.Add(int64(n)) == target {
					close(done)
				}
			}
			cfg := s.config("bench", zerolog.Nop())
			cfg.Concurrency = bc.concurrency
			if bc.batch {
				cfg.BatchHandler = func(_ context.Context, es []Entry) error { note(len(es)); return nil }
			} else {
				cfg.Handler = func(context.Context, Entry) error { note(1); return nil }
			}
			p, err := New(env.Client, cfg)
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			if err := p.Start(context.Background()); err != nil {
				b.Fatal(err)
			}
			<-done
			elapsed := time.Since(start)
			b.StopTimer()
			p.Stop()
			if pc := pendingCount(b, env.Client, s); pc != 0 {
				b.Fatalf("%d entries left unacknowledged", pc)
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "entries/s")
		})
	}
}

// BenchmarkEnqueueToPickup measures the time from XADD until the handler of
// a waiting pool starts on the entry, one entry at a time.
func BenchmarkEnqueueToPickup(b *testing.B) {
	env := testredis.New(b)
	s := newStreams(env)
	picked := make(chan time.Time, 1)
	cfg := s.config("bench", zerolog.Nop())
	cfg.Handler = func(context.Context, Entry) error { picked <- time.Now(); return nil }
	p := startPool(b, env.Client, cfg)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		if _, err := Publish(ctx, env.Client, s.stream, map[string]string{"n": strconv.Itoa(i)}); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, (<-picked).Sub(start))
	}
	b.StopTimer()
	p.Stop()
	slices.Sort(lat)
	pct := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds())
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}
