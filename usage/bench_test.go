package usage

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/workers"
)

// benchEvents is n events of a busy hour: 200 keys, 8 models, 3 accounts,
// a token window on half the keys, a few errors.
func benchEvents(n int, run string) []Event { return benchMix(n, run, 200, 8) }

// benchMix is n events over keys keys and models models.
func benchMix(n int, run string, keys, models int) []Event {
	r := rand.New(rand.NewPCG(uint64(n), 9))
	names := []string{"claude-sonnet-4-20250514", "claude-opus-4-5", "claude-haiku-4-5", "gpt-4o", "gpt-4.1",
		"gemini-2.5-pro", "claude-4-sonnet-thinking", "deepseek-chat"}[:models]
	now := time.Now()
	evs := make([]Event, n)
	for i := range evs {
		key := r.IntN(keys)
		evs[i] = Event{
			ID: fmt.Sprintf("%s-%d", run, i), RequestID: "r", Time: now.Add(-time.Duration(r.IntN(600)) * time.Second),
			KeyID: fmt.Sprintf("key%03d", key), AccountID: fmt.Sprintf("acct%d", r.IntN(3)), Service: ServiceClaude,
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

var benchRun int

// BenchmarkAggregate applies events in batches of 200 with four batches in
// flight, as the usage pool does, against the package's real Redis. The cost
// of a batch grows with the distinct keys and key-model pairs in it (each
// has four hashes), so it runs with a busy mix (200 keys, 8 models) and a
// small team's (20 keys, 4 models).
func BenchmarkAggregate(b *testing.B) {
	for _, mix := range []struct{ keys, models int }{{200, 8}, {20, 4}} {
		b.Run(fmt.Sprintf("keys=%d,models=%d", mix.keys, mix.models), func(b *testing.B) {
			benchAggregate(b, mix.keys, mix.models)
		})
	}
}

func benchAggregate(b *testing.B, keys, models int) {
	env := testredis.New(b)
	a := NewAggregator(env.Client, keyspace.New(env.Prefix), mustPricing(b), AggregatorConfig{}, zerolog.Nop())
	benchRun++
	evs := benchMix(b.N, fmt.Sprint("agg", benchRun), keys, models)
	ctx := context.Background()
	batches := make(chan []Event, b.N/200+1)
	for lo := 0; lo < len(evs); lo += 200 {
		batches <- evs[lo:min(lo+200, len(evs))]
	}
	close(batches)
	b.ResetTimer()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for batch := range batches {
				if _, err := a.Apply(ctx, batch); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkAggregatePool is the whole consumer side: b.N entries already on
// the stream (the small team's mix), consumed by a started usage pool until
// every one is counted.
func BenchmarkAggregatePool(b *testing.B) {
	env := testredis.New(b)
	ks := keyspace.New(env.Prefix)
	a := NewAggregator(env.Client, ks, mustPricing(b), AggregatorConfig{}, zerolog.Nop())
	benchRun++
	evs := benchMix(b.N, fmt.Sprint("pool", benchRun), 20, 4)
	ctx := context.Background()
	stream := ks.Stream(StreamName)
	for lo := 0; lo < len(evs); lo += 1000 {
		pipe := env.Client.Pipeline()
		for i := lo; i < min(lo+1000, len(evs)); i++ {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{StreamField, evs[i].AppendJSON(nil)}})
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	pool, err := workers.New(env.Client, a.PoolConfig("bench", zerolog.Nop(), nil))
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if err := pool.Start(ctx); err != nil {
		b.Fatal(err)
	}
	total := ks.UsageTotal(DimGlobal, GlobalID)
	for {
		n, _ := env.Client.HGet(ctx, total, FieldRequests).Int()
		if n >= b.N {
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	pool.Stop()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
