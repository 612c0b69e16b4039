package usage

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/workers"
)

// Stream, group and entry field of the usage pipeline: the recorder adds one
// entry per event to keyspace.Stream(StreamName), with the event's JSON in
// field StreamField; the usage pool reads it with group StreamGroup.
const (
	StreamName  = "usage"
	StreamGroup = "usage"
	StreamField = "ev"
)

// How long aggregates are kept after their bucket ends.
const (
	HourRetention  = 7 * 24 * time.Hour
	DayRetention   = 90 * 24 * time.Hour
	MonthRetention = 2 * 365 * 24 * time.Hour
)

// DefaultSeenTTL is how long an applied event's id is remembered. It must
// exceed the usage stream's trim age (workers.Config.TrimAge, 24h by default):
// an entry can only be delivered again while it is still in the stream.
const DefaultSeenTTL = 72 * time.Hour

// AggregatorConfig configures an Aggregator. Zero values take the defaults.
type AggregatorConfig struct {
	SeenTTL time.Duration // default DefaultSeenTTL
}

// Aggregator folds usage events into the aggregates: it is the usage pool's
// batch handler. Applying a batch is one Lua script, so it is atomic, and it
// is idempotent by event id, so redelivered entries are counted once.
type Aggregator struct {
	rdb     redis.Scripter
	ks      keyspace.Keyspace
	pricing *Pricing
	seenTTL int64
	log     zerolog.Logger
}

// NewAggregator returns an aggregator that writes through rdb under ks,
// pricing events with pricing.
func NewAggregator(rdb redis.Scripter, ks keyspace.Keyspace, pricing *Pricing, cfg AggregatorConfig, log zerolog.Logger) *Aggregator {
	if cfg.SeenTTL <= 0 {
		cfg.SeenTTL = DefaultSeenTTL
	}
	return &Aggregator{rdb: rdb, ks: ks, pricing: pricing, seenTTL: int64(cfg.SeenTTL / time.Second), log: log}
}

// HandleBatch is the workers.BatchHandler of the usage pool. Entries that do
// not hold a valid event are reported with workers.ErrPermanent (the runtime
// then retries the batch entry by entry, so only they are dead-lettered); the
// valid ones are applied first, so a retry finds them already counted.
func (a *Aggregator) HandleBatch(ctx context.Context, es []workers.Entry) error {
	evs := make([]Event, 0, len(es))
	var bad []string
	for _, e := range es {
		raw, ok := e.Values[StreamField]
		if !ok {
			bad = append(bad, e.ID+": no "+StreamField+" field")
			continue
		}
		ev, err := DecodeEvent([]byte(raw))
		if err != nil {
			bad = append(bad, e.ID+": "+err.Error())
			continue
		}
		evs = append(evs, ev)
	}
	if len(evs) > 0 {
		if _, err := a.Apply(ctx, evs); err != nil {
			return err
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", workers.ErrPermanent, strings.Join(bad, "; "))
	}
	return nil
}

// Apply counts the events that were not counted before and returns how many
// that was.
func (a *Aggregator) Apply(ctx context.Context, evs []Event) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	b := newScriptArgs(len(evs), a.seenTTL)
	for i := range evs {
		if err := evs[i].validate(); err != nil {
			return 0, fmt.Errorf("event %q: %w", evs[i].ID, err)
		}
		a.add(b, &evs[i])
	}
	n, err := applyScript.Run(ctx, a.rdb, b.keys, b.finish()...).Int()
	if err != nil {
		return 0, fmt.Errorf("apply usage batch: %w", err)
	}
	return n, nil
}

// Field numbers in the script's FIELDS table.
const (
	fRequests = iota + 1
	fErrors
	fInput
	fOutput
	fCacheCreate
	fCacheRead
	fImages
	fCost
	fEstimated
	fLatency
)

// add appends one event to the script arguments.
func (a *Aggregator) add(b *scriptArgs, ev *Event) {
	t := ev.Time.UTC()
	cost, priced := a.pricing.Cost(ev)

	b.argv = append(b.argv, b.key(a.ks.UsageSeen(ev.ID), 0))

	// Field deltas; requests always first and always 1 (the script relies
	// on it to tell a new hash).
	deltas := b.argv
	nfAt := len(deltas)
	deltas = append(deltas, 0, fRequests, 1)
	nf := 1
	for _, d := range [...]struct {
		f int
		v int64
	}{
		{fErrors, boolInt(ev.Status >= 400)},
		{fInput, ev.InputTokens}, {fOutput, ev.OutputTokens},
		{fCacheCreate, ev.CacheCreateTokens}, {fCacheRead, ev.CacheReadTokens},
		{fImages, int64(ev.Images)}, {fCost, cost}, {fEstimated, boolInt(ev.Estimated)},
		{fLatency, ev.LatencyMs},
	} {
		if d.v != 0 {
			deltas = append(deltas, d.f, d.v)
			nf++
		}
	}
	deltas[nfAt] = nf
	b.argv = deltas

	// The dimension values this event counts under.
	var dims [5]struct{ dim, id string }
	nd := 0
	put := func(dim, id string) { dims[nd].dim, dims[nd].id = dim, id; nd++ }
	put(DimGlobal, GlobalID)
	if ev.KeyID != "" {
		put(DimKey, ev.KeyID)
	}
	if ev.Model != "" {
		put(DimModel, ev.Model)
		if ev.KeyID != "" {
			put(DimKeyModel, KeyModelID(ev.KeyID, ev.Model))
		}
	}
	if ev.AccountID != "" {
		put(DimAccount, ev.AccountID)
	}

	buckets := [3]struct {
		gran, name string
		expireAt   int64
	}{
		{Hour, t.Format(HourFormat), t.Truncate(time.Hour).Add(time.Hour + HourRetention).Unix()},
		{Day, t.Format(DayFormat), dayStart(t).AddDate(0, 0, 1).Add(DayRetention).Unix()},
		{Month, t.Format(MonthFormat), monthStart(t).AddDate(0, 1, 0).Add(MonthRetention).Unix()},
	}

	// Hashes: per dimension, the three buckets and the total.
	b.argv = append(b.argv, nd*4)
	for _, d := range dims[:nd] {
		for _, bk := range buckets {
			b.argv = append(b.argv, b.key(a.ks.UsageBucket(d.dim, d.id, bk.gran, bk.name), bk.expireAt))
		}
		b.argv = append(b.argv, b.key(a.ks.UsageTotal(d.dim, d.id), 0))
	}
	b.argv = append(b.argv, ev.Time.UnixMilli())

	// Sorted sets, each incremented by one for this event.
	nzAt := len(b.argv)
	b.argv = append(b.argv, 0)
	nz := 0
	for _, d := range dims[:nd] {
		for _, bk := range buckets {
			b.argv = append(b.argv, b.key(a.ks.UsageIndex(d.dim, bk.gran, bk.name), bk.expireAt), d.id)
		}
		b.argv = append(b.argv, b.key(a.ks.UsageTotalIndex(d.dim), 0), d.id)
		nz += 4
	}
	if ev.KeyID != "" && ev.Model != "" {
		b.argv = append(b.argv, b.key(a.ks.UsageKeyModels(ev.KeyID), 0), ev.Model)
		nz++
	}
	if !priced {
		b.argv = append(b.argv, b.key(a.ks.UsageUnknownModels(), 0), ev.Model)
		nz++
	}
	b.argv[nzAt] = nz

	// The key's token window, which the token limit reads.
	if tokens := ev.Total(); ev.KeyID != "" && ev.TokenWindowSec > 0 && tokens > 0 {
		start := TokenWindowStart(t, ev.TokenWindowSec)
		k := a.ks.UsageTokenWindow(ev.KeyID, ev.TokenWindowSec, start)
		b.argv = append(b.argv, b.key(k, start+ev.TokenWindowSec), tokens)
	} else {
		b.argv = append(b.argv, 0, 0)
	}
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func dayStart(t time.Time) time.Time {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func monthStart(t time.Time) time.Time {
	y, m, _ := t.Date()
	return time.Date(y, m, 1, 0, 0, 0, 0, time.UTC)
}

// scriptArgs collects a batch's KEYS (each once) and ARGV.
type scriptArgs struct {
	keys     []string
	index    map[string]int
	expireAt []int64 // by key index - 1; 0: the key does not expire
	seenTTL  int64
	argv     []any
}

func newScriptArgs(events int, seenTTL int64) *scriptArgs {
	return &scriptArgs{
		keys:     make([]string, 0, events*8),
		index:    make(map[string]int, events*8),
		expireAt: make([]int64, 0, events*8),
		seenTTL:  seenTTL,
		argv:     make([]any, 0, events*64),
	}
}

// key is name's 1-based index in KEYS.
func (b *scriptArgs) key(name string, expireAt int64) int {
	if i, ok := b.index[name]; ok {
		return i
	}
	b.keys = append(b.keys, name)
	b.expireAt = append(b.expireAt, expireAt)
	i := len(b.keys)
	b.index[name] = i
	return i
}

// finish is the complete ARGV: the header, then the events.
func (b *scriptArgs) finish() []any {
	head := make([]any, 0, 2+2*len(b.keys))
	head = append(head, b.seenTTL, 0)
	m := 0
	for i, at := range b.expireAt {
		if at > 0 {
			head = append(head, i+1, strconv.FormatInt(at, 10))
			m++
		}
	}
	head[1] = m
	return append(head, b.argv...)
}

// applyScript counts a batch of usage events once each.
//
// KEYS: every key the batch touches, each once: the events' seen markers,
// aggregate hashes (buckets and totals), sorted sets (indexes, a key's models,
// unknown models) and token-window counters. All carry the hash tag {usage}.
//
// ARGV:
//
//	[1] seconds a seen marker lives
//	[2] m, then m pairs (key index, unix time the key expires at): keys
//	    without a pair never expire
//	then one group per event, to the end of ARGV:
//	  seen-marker key index
//	  nf, then nf pairs (field number in FIELDS, delta); field 1
//	  (requests) comes first, with delta 1
//	  nh, then nh hash key indices; hashes without an expiry are totals,
//	  which also get last_used
//	  last_used (unix ms of the event)
//	  nz, then nz pairs (sorted-set key index, member), each incremented by 1
//	  token-window key index (0: none), tokens to add to it
//
// Events whose seen marker already exists are skipped (SET NX). The new
// events are folded in Lua first, so every distinct key and field gets one
// command however many events touch it. A hash or counter gets its expiry
// when the batch created it (the requests field, or the counter, equals what
// the batch added); sorted sets get theirs on every batch. The expiry is set
// after the increments, so an expiry in the past deletes the key rather than
// leaving a key without one.
//
// Returns the number of events counted (not seen before).
var applyScript = redis.NewScript(`
local FIELDS = {'requests', 'errors', 'input_tokens', 'output_tokens', 'cache_create_tokens',
  'cache_read_tokens', 'images', 'cost_nanos', 'estimated', 'latency_ms_sum'}
local seenTTL = ARGV[1]
local exp = {}
local p = 3
for _ = 1, tonumber(ARGV[2]) do
  exp[tonumber(ARGV[p])] = ARGV[p + 1]
  p = p + 2
end

local hacc, horder, last = {}, {}, {}
local zacc, zorder = {}, {}
local tacc, torder = {}, {}
local applied = 0
local n = #ARGV
local deltas = {}
while p <= n do
  local seen = tonumber(ARGV[p])
  local nf = tonumber(ARGV[p + 1])
  local fp = p + 2
  p = fp + 2 * nf
  local nh = tonumber(ARGV[p])
  local hp = p + 1
  p = hp + nh
  local lu = tonumber(ARGV[p])
  local nz = tonumber(ARGV[p + 1])
  local zp = p + 2
  p = zp + 2 * nz
  local tw, tokens = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
  p = p + 2

  if redis.call('SET', KEYS[seen], '1', 'NX', 'EX', seenTTL) then
    applied = applied + 1
    for j = 1, nf do
      deltas[j * 2 - 1] = tonumber(ARGV[fp + 2 * j - 2])
      deltas[j * 2] = tonumber(ARGV[fp + 2 * j - 1])
    end
    for j = hp, hp + nh - 1 do
      local k = tonumber(ARGV[j])
      local acc = hacc[k]
      if not acc then
        acc = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
        hacc[k] = acc
        horder[#horder + 1] = k
      end
      for q = 1, 2 * nf, 2 do
        local f = deltas[q]
        acc[f] = acc[f] + deltas[q + 1]
      end
      if not exp[k] and (last[k] or 0) < lu then
        last[k] = lu
      end
    end
    for j = zp, zp + 2 * nz - 1, 2 do
      local k = tonumber(ARGV[j])
      local members = zacc[k]
      if not members then
        members = {}
        zacc[k] = members
        zorder[#zorder + 1] = k
      end
      local m = ARGV[j + 1]
      members[m] = (members[m] or 0) + 1
    end
    if tw > 0 then
      if not tacc[tw] then
        tacc[tw] = 0
        torder[#torder + 1] = tw
      end
      tacc[tw] = tacc[tw] + tokens
    end
  end
end

for _, k in ipairs(horder) do
  local key, acc = KEYS[k], hacc[k]
  local fresh = redis.call('HINCRBY', key, 'requests', acc[1]) == acc[1]
  for f = 2, 10 do
    if acc[f] ~= 0 then
      redis.call('HINCRBY', key, FIELDS[f], string.format('%d', acc[f]))
    end
  end
  local lu = last[k]
  if lu then
    local cur = tonumber(redis.call('HGET', key, 'last_used') or '0')
    if cur < lu then
      redis.call('HSET', key, 'last_used', string.format('%d', lu))
    end
  end
  if fresh and exp[k] then
    redis.call('EXPIREAT', key, exp[k])
  end
end
for _, k in ipairs(zorder) do
  local key = KEYS[k]
  for m, c in pairs(zacc[k]) do
    redis.call('ZINCRBY', key, c, m)
  end
  if exp[k] then
    redis.call('EXPIREAT', key, exp[k])
  end
end
for _, k in ipairs(torder) do
  local v = string.format('%d', tacc[k])
  if redis.call('INCRBY', KEYS[k], v) == tacc[k] and exp[k] then
    redis.call('EXPIREAT', KEYS[k], exp[k])
  end
end
return applied
`)
