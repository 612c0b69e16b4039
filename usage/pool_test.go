package usage

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/workers"
)

// Through the real pool: events recorded, a consumer that applied part of
// its batch and crashed before acknowledging, and a second consumer that
// reclaims the entries. Every event is counted exactly once, and a malformed
// entry ends up in the dead-letter stream.
func TestPoolCountsRedeliveredEventsOnce(t *testing.T) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	ctx := context.Background()
	a := newAggregator(t, env.Client, ks)
	m := newModel(ks, a.pricing)
	stream := ks.Stream(StreamName)

	rec := startRecorder(t, env.Client, RecorderConfig{Stream: stream})
	evs := genEvents(600, 7, time.Now())
	for _, ev := range evs {
		if err := rec.Record(ctx, ev); err != nil {
			t.Fatal(err)
		}
		m.add(ev)
	}
	if _, err := env.Client.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{StreamField, "garbage"}}).Result(); err != nil {
		t.Fatal(err)
	}

	// The consumer that crashes: reads everything, applies the first 250,
	// acknowledges nothing.
	if err := env.Client.XGroupCreateMkStream(ctx, stream, StreamGroup, "0").Err(); err != nil {
		t.Fatal(err)
	}
	res, err := env.Client.XReadGroup(ctx, &redis.XReadGroupArgs{Group: StreamGroup, Consumer: "crashed", Streams: []string{stream, ">"}, Count: 1000}).Result()
	if err != nil {
		t.Fatal(err)
	}
	var es []workers.Entry
	for _, msg := range res[0].Messages {
		raw, _ := msg.Values[StreamField].(string)
		es = append(es, workers.Entry{ID: msg.ID, Values: map[string]string{StreamField: raw}, Deliveries: 1})
	}
	if len(es) != 601 {
		t.Fatalf("read %d entries, want 601", len(es))
	}
	if err := a.HandleBatch(ctx, es[:250]); err != nil {
		t.Fatal(err)
	}

	cfg := a.PoolConfig("survivor", zerolog.Nop(), nil)
	cfg.VisibilityTimeout = 300 * time.Millisecond
	cfg.Backoff = func(int64) time.Duration { return 10 * time.Millisecond }
	pool, err := workers.New(env.Client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Stop)

	waitFor(t, "the stream to be consumed", func() bool {
		p, err := env.Client.XPending(ctx, stream, StreamGroup).Result()
		dead := env.Client.XLen(ctx, ks.DeadLetter(StreamName)).Val()
		return err == nil && p.Count == 0 && dead == 1
	})
	pool.Stop()
	m.check(t, env.Client, env.Prefix+"usage:")
	dead, _ := env.Client.XRange(ctx, ks.DeadLetter(StreamName), "-", "+").Result()
	if len(dead) != 1 || dead[0].Values[StreamField] != "garbage" {
		t.Errorf("dead letters: %v", dead)
	}
	if n := env.Client.HGet(ctx, ks.UsageTotal(DimGlobal, GlobalID), FieldRequests).Val(); n != fmt.Sprint(len(evs)) {
		t.Errorf("global requests %s, want %d", n, len(evs))
	}
}
