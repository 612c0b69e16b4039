package apikeys

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/usage"
)

// Counters are a key's current counters, as the limits see them.
type Counters struct {
	Concurrent int64 `json:"concurrent"` // leases in use (counted only for keys with a concurrency limit)

	WindowStart    time.Time `json:"window_start,omitzero"`
	WindowEnd      time.Time `json:"window_end,omitzero"`
	WindowRequests int64     `json:"window_requests"` // counted only for keys with a request limit
	WindowTokens   int64     `json:"window_tokens"`

	Day            string `json:"day"` // UTC, YYYYMMDD
	TodayCostNanos int64  `json:"today_cost_nanos"`
	TodayRequests  int64  `json:"today_requests"`

	TotalCostNanos int64     `json:"total_cost_nanos"`
	TotalRequests  int64     `json:"total_requests"`
	TotalTokens    int64     `json:"total_tokens"`
	LastUsed       time.Time `json:"last_used,omitzero"`
}

// Counters reads k's counters in one round trip.
func (s *Store) Counters(ctx context.Context, k *Key) (Counters, error) {
	now := s.now()
	c := Counters{Day: now.UTC().Format(usage.DayFormat)}
	var winStart int64
	if k.Limits.WindowSec > 0 {
		start, end := window(now, k.Limits.WindowSec)
		c.WindowStart, c.WindowEnd, winStart = start.UTC(), end.UTC(), start.Unix()
	}
	pipe := s.rdb.Pipeline()
	conc := pipe.ZCount(ctx, s.ks.APIKeyLeases(k.ID), strconv.FormatInt(now.UnixMilli(), 10), "+inf")
	var reqs, toks *redis.StringCmd
	if k.Limits.WindowSec > 0 {
		reqs = pipe.Get(ctx, s.ks.APIKeyRequestWindow(k.ID, k.Limits.WindowSec, winStart))
		toks = pipe.Get(ctx, s.ks.UsageTokenWindow(k.ID, k.Limits.WindowSec, winStart))
	}
	day := pipe.HMGet(ctx, s.ks.UsageBucket(usage.DimKey, k.ID, usage.Day, c.Day), usage.FieldCostNanos, usage.FieldRequests)
	total := pipe.HMGet(ctx, s.ks.UsageTotal(usage.DimKey, k.ID), usage.FieldCostNanos, usage.FieldRequests,
		usage.FieldInputTokens, usage.FieldOutputTokens, usage.FieldCacheCreateTokens, usage.FieldCacheReadTokens,
		usage.FieldLastUsed)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return Counters{}, fmt.Errorf("read api key counters: %w", err)
	}
	c.Concurrent = conc.Val()
	if reqs != nil {
		c.WindowRequests, c.WindowTokens = counter(reqs), counter(toks)
	}
	dv := day.Val()
	c.TodayCostNanos, c.TodayRequests = field(dv, 0), field(dv, 1)
	tv := total.Val()
	c.TotalCostNanos, c.TotalRequests = field(tv, 0), field(tv, 1)
	c.TotalTokens = field(tv, 2) + field(tv, 3) + field(tv, 4) + field(tv, 5)
	if ms := field(tv, 6); ms > 0 {
		c.LastUsed = time.UnixMilli(ms).UTC()
	}
	return c, nil
}

func field(vals []any, i int) int64 {
	if i >= len(vals) {
		return 0
	}
	v, _ := vals[i].(string)
	n, _ := strconv.ParseInt(v, 10, 64)
	return n
}
