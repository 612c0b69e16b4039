package apikeys

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/usage"
)

func createKey(t testing.TB, s *Store, l Limits) (string, *Key) {
	t.Helper()
	raw, k, err := s.Create(context.Background(), Key{Name: "k", Enabled: true, Limits: l})
	if err != nil {
		t.Fatal(err)
	}
	return raw, k
}

func denial(t *testing.T, err error, reason string) *Denial {
	t.Helper()
	var d *Denial
	if !errors.As(err, &d) || d.Reason != reason {
		t.Fatalf("got %v, want a %s denial", err, reason)
	}
	return d
}

func TestConcurrencyIsAtomicAcrossReplicas(t *testing.T) {
	env := testredis.New(t)
	stores := []*Store{newStore(t, env, nil), newStore(t, env, nil)}
	_, k := createKey(t, stores[0], Limits{MaxConcurrent: 3})
	ctx := context.Background()

	var (
		wg       sync.WaitGroup
		admitted atomic.Int64
		denied   atomic.Int64
		mu       sync.Mutex
		held     []*Admission
	)
	start := make(chan struct{})
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(s *Store) {
			defer wg.Done()
			<-start
			a, err := s.Admit(ctx, k)
			if err != nil {
				var d *Denial
				if !errors.As(err, &d) || d.Reason != DeniedConcurrency || d.RetryAfter <= 0 {
					t.Errorf("Admit: %v", err)
				}
				denied.Add(1)
				return
			}
			admitted.Add(1)
			mu.Lock()
			held = append(held, a)
			mu.Unlock()
		}(stores[i%2])
	}
	close(start)
	wg.Wait()
	if admitted.Load() != 3 || denied.Load() != 47 {
		t.Fatalf("admitted %d, denied %d; want 3 and 47", admitted.Load(), denied.Load())
	}
	for _, a := range held {
		a.Release()
		a.Release() // twice is harmless
	}
	for i := 0; i < 3; i++ {
		a, err := stores[i%2].Admit(ctx, k)
		if err != nil {
			t.Fatalf("after release: %v", err)
		}
		defer a.Release()
	}
}

func TestLeasesOfACrashedProcessExpire(t *testing.T) {
	env := testredis.New(t)
	clk := newClock()
	s := NewStore(env.Client, keyspace.New(env.Prefix), Options{Now: clk.Now, LeaseTTL: time.Minute})
	_, k := createKey(t, s, Limits{MaxConcurrent: 1})
	ctx := context.Background()
	a, err := s.Admit(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.timer.Stop() // the process "crashes": no renewal, no release
	a.mu.Unlock()
	_, err = s.Admit(ctx, k)
	denial(t, err, DeniedConcurrency)
	clk.Advance(time.Minute)
	b, err := s.Admit(ctx, k)
	if err != nil {
		t.Fatalf("after the lease expired: %v", err)
	}
	b.Release()
}

func TestLeaseIsRenewedUntilRelease(t *testing.T) {
	env := testredis.New(t)
	s := NewStore(env.Client, keyspace.New(env.Prefix), Options{LeaseTTL: 300 * time.Millisecond})
	_, k := createKey(t, s, Limits{MaxConcurrent: 1})
	ctx := context.Background()
	a, err := s.Admit(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	leases := s.ks.APIKeyLeases(k.ID)
	first := env.Client.ZScore(ctx, leases, a.member).Val()
	// Wait for renewals to carry the lease past its first expiry.
	for env.Client.ZScore(ctx, leases, a.member).Val() <= first+300 {
		time.Sleep(20 * time.Millisecond)
	}
	a.Release()
	if n := env.Client.ZCard(ctx, leases).Val(); n != 0 {
		t.Fatalf("%d leases after release", n)
	}
	// A renewal due after the release does not bring the lease back.
	time.Sleep(250 * time.Millisecond)
	if n := env.Client.ZCard(ctx, leases).Val(); n != 0 {
		t.Fatalf("%d leases after a late renewal", n)
	}
}

func TestBackgroundReleaserFreesLeases(t *testing.T) {
	env := testredis.New(t)
	s := newStore(t, env, nil)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	_, k := createKey(t, s, Limits{MaxConcurrent: 2})
	ctx := context.Background()
	for i := 0; i < 20; i++ {
		a, err := s.Admit(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		a.Release()
	}
	s.Stop() // flushes what is queued
	s.Stop()
	if n := env.Client.ZCard(ctx, s.ks.APIKeyLeases(k.ID)).Val(); n != 0 {
		t.Fatalf("%d leases left", n)
	}
}

func TestRequestWindowResets(t *testing.T) {
	env := testredis.New(t)
	clk := &clock{t: time.Unix(time.Now().Unix()/60*60+60, 0)} // the start of a minute, ahead of now
	s := newStore(t, env, clk)
	_, k := createKey(t, s, Limits{WindowSec: 60, RequestsPerWindow: 2})
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		if _, err := s.Admit(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	clk.Advance(15 * time.Second)
	_, err := s.Admit(ctx, k)
	d := denial(t, err, DeniedRate)
	if d.RetryAfter != 45*time.Second || d.Limit != 2 {
		t.Fatalf("denial %+v; want retry in 45s", d)
	}
	clk.Advance(45 * time.Second)
	if _, err := s.Admit(ctx, k); err != nil {
		t.Fatalf("next window: %v", err)
	}
}

func TestTokenAndCostLimits(t *testing.T) {
	env := testredis.New(t)
	clk := newClock()
	s := newStore(t, env, clk)
	ks := keyspace.New(env.Prefix)
	ctx := context.Background()
	_, k := createKey(t, s, Limits{WindowSec: 3600, RequestsPerWindow: 100, TokensPerWindow: 1000,
		MaxConcurrent: 5, DailyCostNanos: 2e9, TotalCostNanos: 10e9})
	now := clk.Now()
	tokwin := ks.UsageTokenWindow(k.ID, 3600, usage.TokenWindowStart(now, 3600))
	day := ks.UsageBucket(usage.DimKey, k.ID, usage.Day, now.UTC().Format(usage.DayFormat))
	total := ks.UsageTotal(usage.DimKey, k.ID)
	reqwin := ks.APIKeyRequestWindow(k.ID, 3600, usage.TokenWindowStart(now, 3600))

	a, err := s.Admit(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	a.Release()

	// Written the way the usage aggregator settles a request.
	env.Client.IncrBy(ctx, tokwin, 1000)
	_, err = s.Admit(ctx, k)
	denial(t, err, DeniedTokens)
	env.Client.Del(ctx, tokwin)

	env.Client.HIncrBy(ctx, day, usage.FieldCostNanos, 2e9)
	_, err = s.Admit(ctx, k)
	d := denial(t, err, DeniedDailyCost)
	if d.ResetAt.Hour() != 0 || !d.ResetAt.After(now) {
		t.Fatalf("daily reset at %v", d.ResetAt)
	}
	env.Client.Del(ctx, day)

	env.Client.HIncrBy(ctx, total, usage.FieldCostNanos, 10e9)
	_, err = s.Admit(ctx, k)
	denial(t, err, DeniedTotalCost)

	// Refused requests gave back their slot and lease.
	if n, _ := env.Client.Get(ctx, reqwin).Int(); n != 1 {
		t.Fatalf("request window counts %d; want only the admitted request", n)
	}
	if n := env.Client.ZCard(ctx, ks.APIKeyLeases(k.ID)).Val(); n != 0 {
		t.Fatalf("%d leases held after refusals", n)
	}
	env.Client.HSet(ctx, total, usage.FieldCostNanos, strconv.FormatInt(9e9, 10))
	a, err = s.Admit(ctx, k)
	if err != nil {
		t.Fatalf("under budget again: %v", err)
	}
	a.Release()
}

func TestNoLimitsNoRedis(t *testing.T) {
	env := testredis.New(t)
	s := newStore(t, env, nil)
	raw, _ := createKey(t, s, Limits{})
	n := countRoundTrips(env.Client)
	ctx := context.Background()
	k, err := s.Authenticate(ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	before := n.Load()
	for i := 0; i < 10; i++ {
		k, _ = s.Authenticate(ctx, raw)
		a, err := s.Admit(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		a.Release()
	}
	if got := n.Load() - before; got != 0 {
		t.Fatalf("%d round trips for a key without limits, cached", got)
	}
}

func TestAllLimitsOneRoundTrip(t *testing.T) {
	env := testredis.New(t)
	s := newStore(t, env, nil)
	raw, _ := createKey(t, s, Limits{WindowSec: 60, RequestsPerWindow: 1e6, TokensPerWindow: 1e9,
		MaxConcurrent: 100, DailyCostNanos: 1e12, TotalCostNanos: 1e12})
	n := countRoundTrips(env.Client)
	ctx := context.Background()
	if _, err := s.Authenticate(ctx, raw); err != nil { // fills the cache
		t.Fatal(err)
	}
	a, err := s.Admit(ctx, mustAuth(t, s, raw)) // loads the script
	if err != nil {
		t.Fatal(err)
	}
	a.Release()
	before := n.Load()
	k := mustAuth(t, s, raw)
	a, err = s.Admit(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Load() - before; got != 1 {
		t.Fatalf("cached auth + admission took %d round trips; want 1", got)
	}
	a.Release()
}

func mustAuth(t testing.TB, s *Store, raw string) *Key {
	k, err := s.Authenticate(context.Background(), raw)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// roundTrips counts commands and pipelines sent (a pipeline is one trip);
// onPath counts those whose context is marked as the request's.
type roundTrips struct{ n, onPath *atomic.Int64 }

type requestPath struct{}

func (h roundTrips) count(ctx context.Context) {
	h.n.Add(1)
	if ctx.Value(requestPath{}) != nil {
		h.onPath.Add(1)
	}
}

func (h roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { h.count(ctx); return next(ctx, cmd) }
}
func (h roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { h.count(ctx); return next(ctx, cmds) }
}

func countRoundTrips(c *redis.Client) *atomic.Int64 {
	n, _ := countTrips(c)
	return n
}

func countTrips(c *redis.Client) (all, onPath *atomic.Int64) {
	h := roundTrips{new(atomic.Int64), new(atomic.Int64)}
	c.AddHook(h)
	return h.n, h.onPath
}

// BenchmarkAuthAndAdmit is the per-request cost of authentication and every
// limit (concurrency, request and token windows, daily and total cost) plus
// the release, against the test Redis, with the key cache warm as in steady
// state. It reports Redis round trips per request on the request path
// (Authenticate + Admit) and in all (with the batched lease releases), and
// the p50 and p99 of the request-path part.
func BenchmarkAuthAndAdmit(b *testing.B) {
	env := testredis.New(b)
	s := newStore(b, env, nil)
	if err := s.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer s.Stop()
	raw, _ := createKey(b, s, Limits{WindowSec: 3600, RequestsPerWindow: 1 << 40, TokensPerWindow: 1 << 40,
		MaxConcurrent: 1 << 20, DailyCostNanos: 1 << 50, TotalCostNanos: 1 << 50})
	ctx := context.WithValue(context.Background(), requestPath{}, true)
	a, err := s.Admit(ctx, mustAuth(b, s, raw))
	if err != nil {
		b.Fatal(err)
	}
	a.Release()
	n, onPath := countTrips(env.Client)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		k, err := s.Authenticate(ctx, raw)
		if err != nil {
			b.Fatal(err)
		}
		a, err := s.Admit(ctx, k)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
		a.Release()
	}
	b.StopTimer()
	s.Stop() // the batched releases are sent now; count them too
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(onPath.Load())/float64(b.N), "path-trips/op")
	b.ReportMetric(float64(n.Load())/float64(b.N), "all-trips/op")
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}
