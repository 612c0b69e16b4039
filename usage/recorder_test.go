package usage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/workers"
)

func startRecorder(t testing.TB, rdb redis.UniversalClient, cfg RecorderConfig) *Recorder {
	t.Helper()
	if cfg.Log.GetLevel() == zerolog.DebugLevel { // the zero logger: keep tests quiet
		cfg.Log = zerolog.Nop()
	}
	r := NewRecorder(rdb, cfg)
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// streamEvents reads every event on the stream.
func streamEvents(t testing.TB, rdb redis.UniversalClient, stream string) ([]Event, []workers.Entry) {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	evs := make([]Event, len(msgs))
	es := make([]workers.Entry, len(msgs))
	for i, m := range msgs {
		raw, _ := m.Values[StreamField].(string)
		ev, err := DecodeEvent([]byte(raw))
		if err != nil {
			t.Fatalf("entry %s: %v", m.ID, err)
		}
		evs[i] = ev
		es[i] = workers.Entry{ID: m.ID, Values: map[string]string{StreamField: raw}, Deliveries: 1}
	}
	return evs, es
}

func testEvent(id string) Event {
	return Event{ID: id, Time: time.Now(), KeyID: "k", Service: ServiceClaude, Model: "claude-sonnet-4", InputTokens: 3, OutputTokens: 4, Status: 200}
}

// Record returns only once its event is on the stream.
func TestRecorderDurableOnReturn(t *testing.T) {
	env := testredis.New(t)
	stream := keyspace.New(env.Prefix).Stream(StreamName)
	r := startRecorder(t, env.Client, RecorderConfig{Stream: stream})
	ctx := context.Background()

	if err := r.Record(ctx, testEvent("first")); err != nil {
		t.Fatal(err)
	}
	evs, _ := streamEvents(t, env.Client, stream)
	if len(evs) != 1 || evs[0].ID != "first" {
		t.Fatalf("stream after one Record: %+v", evs)
	}

	// Many concurrent callers: each one's event is there when it returns.
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := range 40 {
		wg.Go(func() {
			for i := range 50 {
				id := fmt.Sprintf("g%d-%d", g, i)
				if err := r.Record(ctx, testEvent(id)); err != nil {
					errs <- err
					return
				}
				n, err := env.Client.XLen(ctx, stream).Result()
				if err != nil || n < int64(1+i+1) {
					errs <- fmt.Errorf("after Record(%s) the stream has %d entries (%v)", id, n, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	evs, _ = streamEvents(t, env.Client, stream)
	ids := map[string]int{}
	for _, ev := range evs {
		ids[ev.ID]++
	}
	if len(evs) != 2001 || len(ids) != 2001 {
		t.Fatalf("%d entries, %d distinct ids; want 2001 of each", len(evs), len(ids))
	}

	// An event without an id gets a UUID.
	if err := r.Record(ctx, testEvent("")); err != nil {
		t.Fatal(err)
	}
	evs, _ = streamEvents(t, env.Client, stream)
	if _, err := uuid.Parse(evs[len(evs)-1].ID); err != nil {
		t.Errorf("filled id %q is not a UUID", evs[len(evs)-1].ID)
	}
	if r.Pending() != 0 {
		t.Errorf("pending %d after every Record returned", r.Pending())
	}
}

// While Redis is down, events are held and Records time out; once it is back
// every event is written, and the aggregates count each exactly once.
func TestRecorderHoldsEventsWhileRedisIsDown(t *testing.T) {
	srv := testredis.StartServer(t, true)
	rdb := testredis.NewClient(srv.Addr)
	t.Cleanup(func() { rdb.Close() })
	ks := keyspace.New("rec:")
	stream := ks.Stream(StreamName)
	m := metrics.New()
	r := startRecorder(t, rdb, RecorderConfig{Stream: stream, Metrics: m})
	ctx := context.Background()

	var want []string
	for i := range 100 {
		id := fmt.Sprintf("before-%d", i)
		want = append(want, id)
		if err := r.Record(ctx, testEvent(id)); err != nil {
			t.Fatal(err)
		}
	}

	srv.Stop()

	// Records with short deadlines return the context's error; their events
	// stay buffered.
	var wg sync.WaitGroup
	for i := range 300 {
		id := fmt.Sprintf("down-%d", i)
		want = append(want, id)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			if err := r.Record(ctx, testEvent(id)); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Record while redis is down: %v, want deadline exceeded", err)
			}
		})
	}
	wg.Wait()
	if n := r.Pending(); n != 300 {
		t.Fatalf("pending %d, want 300", n)
	}
	if g := metricValue(m.UsagePending); g != 300 {
		t.Errorf("pending gauge %v, want 300", g)
	}
	// Records with time to wait, and a flush that has failed, before Redis
	// comes back.
	waiters := make(chan error, 50)
	for i := range 50 {
		id := fmt.Sprintf("waiting-%d", i)
		want = append(want, id)
		go func() { waiters <- r.Record(ctx, testEvent(id)) }()
	}
	waitFor(t, "a failed flush", func() bool { return metricValue(m.UsageFlushes.WithLabelValues("error")) >= 1 })

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	for range 50 {
		if err := <-waiters; err != nil {
			t.Errorf("Record waiting across the outage: %v", err)
		}
	}
	waitFor(t, "the buffer to drain", func() bool { return r.Pending() == 0 })
	if g := metricValue(m.UsagePending); g != 0 {
		t.Errorf("pending gauge %v after the drain", g)
	}

	evs, es := streamEvents(t, rdb, stream)
	got := map[string]bool{}
	for _, ev := range evs {
		got[ev.ID] = true
	}
	for _, id := range want {
		if !got[id] {
			t.Errorf("event %s lost", id)
		}
	}
	a := newAggregator(t, rdb, ks)
	if err := a.HandleBatch(ctx, es); err != nil {
		t.Fatal(err)
	}
	if n := rdb.HGet(ctx, ks.UsageTotal(DimGlobal, GlobalID), FieldRequests).Val(); n != fmt.Sprint(len(want)) {
		t.Errorf("aggregated %s requests, want %d", n, len(want))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop writes what is buffered when Redis is back by then.
func TestRecorderStopFlushes(t *testing.T) {
	srv := testredis.StartServer(t, false)
	rdb := testredis.NewClient(srv.Addr)
	t.Cleanup(func() { rdb.Close() })
	stream := keyspace.New("rec:").Stream(StreamName)
	r := startRecorder(t, rdb, RecorderConfig{Stream: stream})
	srv.Stop()
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		_ = r.Record(ctx, testEvent(fmt.Sprint("s", i)))
		cancel()
	}
	if r.Pending() != 20 {
		t.Fatalf("pending %d, want 20", r.Pending())
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	r.Stop()
	r.Stop() // idempotent
	if evs, _ := streamEvents(t, rdb, stream); len(evs) != 20 {
		t.Errorf("%d events on the stream after Stop, want 20", len(evs))
	}
	if err := r.Record(context.Background(), testEvent("late")); !errors.Is(err, ErrStopped) {
		t.Errorf("Record after Stop: %v, want ErrStopped", err)
	}
}

// deadRedis is a client of an address nothing listens on.
func deadRedis(t *testing.T) *redis.Client {
	srv := testredis.StartServer(t, false)
	rdb := testredis.NewClient(srv.Addr)
	srv.Stop()
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// When Redis stays down, Stop gives up after StopTimeout: the waiting
// Records learn it, and the loss is counted.
func TestRecorderStopGivesUp(t *testing.T) {
	m := metrics.New()
	r := startRecorder(t, deadRedis(t), RecorderConfig{Stream: "s", StopTimeout: 300 * time.Millisecond, Metrics: m})
	errs := make(chan error, 5)
	for i := range 5 {
		go func() { errs <- r.Record(context.Background(), testEvent(fmt.Sprint(i))) }()
	}
	waitFor(t, "five buffered events", func() bool { return r.Pending() == 5 })
	r.Stop()
	for range 5 {
		if err := <-errs; !errors.Is(err, ErrStopped) {
			t.Errorf("Record: %v, want ErrStopped", err)
		}
	}
	if n := metricValue(m.UsageLost.WithLabelValues("shutdown")); n != 5 {
		t.Errorf("lost counter %v, want 5", n)
	}
	if g := metricValue(m.UsagePending); g != 0 {
		t.Errorf("pending gauge %v after Stop", g)
	}
}

func TestRecorderBufferFull(t *testing.T) {
	m := metrics.New()
	r := startRecorder(t, deadRedis(t), RecorderConfig{Stream: "s", Capacity: 5, StopTimeout: 100 * time.Millisecond, Metrics: m})
	for i := range 5 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		if err := r.Record(ctx, testEvent(fmt.Sprint(i))); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Record %d: %v", i, err)
		}
		cancel()
	}
	err := r.Record(context.Background(), testEvent("sixth"))
	if !errors.Is(err, ErrBufferFull) || !strings.Contains(err.Error(), "not recorded") {
		t.Fatalf("Record into a full buffer: %v", err)
	}
	if n := metricValue(m.UsageLost.WithLabelValues("buffer_full")); n != 1 {
		t.Errorf("lost counter %v, want 1", n)
	}
}

func TestRecorderNeverStarted(t *testing.T) {
	env := testredis.New(t)
	stream := keyspace.New(env.Prefix).Stream(StreamName)
	r := NewRecorder(env.Client, RecorderConfig{Stream: stream, Log: zerolog.Nop()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := r.Record(ctx, testEvent("early")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Record before Start: %v", err)
	}
	r.Stop() // writes what was queued
	if evs, _ := streamEvents(t, env.Client, stream); len(evs) != 1 {
		t.Errorf("%d events after Stop of a recorder never started, want 1", len(evs))
	}
	if err := r.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded")
	}
}

func BenchmarkRecorder(b *testing.B) {
	env := testredis.New(b)
	stream := keyspace.New(env.Prefix).Stream(StreamName)
	r := startRecorder(b, env.Client, RecorderConfig{Stream: stream})
	ev := testEvent("")
	ctx := context.Background()
	b.SetParallelism(32) // many requests at once, as the ingress has
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e := ev
			e.ID = uuid.NewString()
			if err := r.Record(ctx, e); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// metricValue reads a gauge or counter.
func metricValue(c prometheus.Metric) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		panic(err)
	}
	if g := d.GetGauge(); g != nil {
		return g.GetValue()
	}
	return d.GetCounter().GetValue()
}
