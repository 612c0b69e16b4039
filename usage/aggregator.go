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
	"github.com/relaydev/relay/internal/metrics"
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

// DefaultSeenTTL is how long an applied event's id is remembered.
//
// A batch is applied and acknowledged in one script, so an entry that was
// counted is never delivered again by the stream. What the markers still
// catch are copies that arrive close together: the same event added twice
// by a recorder retry after an ambiguous write, or an entry another consumer
// reclaimed while the first was still applying it. Both copies are read
// within moments of each other, so an hour is ample, and it keeps the markers
// to (events per second x 3600) keys.
const DefaultSeenTTL = time.Hour

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

// PoolConfig is the usage pool's configuration: the usage stream and group,
// this aggregator as the batch handler, batches of up to 500 gathered for a
// quarter second, and 4 handlers at once
// (scripts run one at a time in Redis; a few in flight keep it busy while
// the next batches are decoded). The caller may adjust the result.
func (a *Aggregator) PoolConfig(consumer string, log zerolog.Logger, m *metrics.Metrics) workers.Config {
	return workers.Config{
		Stream:       a.ks.Stream(StreamName),
		Group:        StreamGroup,
		Consumer:     consumer,
		DeadLetter:   a.ks.DeadLetter(StreamName),
		BatchHandler: a.HandleBatch,
		BatchSize:    500,
		// Gather events for a quarter second: a batch costs two Redis
		// commands per distinct hash it touches, whatever its size, so a
		// steady trickle read one event at a time would cost ~100 commands
		// per event, and a quarter second's worth costs well under one.
		BatchWait:   250 * time.Millisecond,
		Concurrency: 4,
		Name:        StreamName,
		Log:         log,
		Metrics:     m,
	}
}

// HandleBatch is the workers.BatchHandler of the usage pool. Entries that do
// not hold a valid event are reported with workers.ErrPermanent (the runtime
// then retries the batch entry by entry, so only they are dead-lettered); the
// valid ones are applied first, so a retry finds them already counted.
func (a *Aggregator) HandleBatch(ctx context.Context, es []workers.Entry) error {
	evs := make([]Event, 0, len(es))
	ids := make([]string, 0, len(es)) // entries of the valid events, acknowledged by the script
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
		ids = append(ids, e.ID)
	}
	if len(evs) > 0 {
		if _, err := a.apply(ctx, evs, ids); err != nil {
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
	return a.apply(ctx, evs, nil)
}

// apply counts evs and, in the same script, acknowledges the usage stream's
// entries ackIDs for the usage group.
func (a *Aggregator) apply(ctx context.Context, evs []Event, ackIDs []string) (int, error) {
	if len(evs) == 0 {
		return 0, nil
	}
	b := newScriptArgs(len(evs), a.seenTTL)
	if len(ackIDs) > 0 {
		b.ackKey, b.ackIDs = b.key(a.ks.Stream(StreamName), 0), ackIDs
	}
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
	hour := t.Format(HourFormat)

	b.events = append(b.events, b.key(a.ks.UsageSeen(ev.ID), 0))

	// Field deltas; requests always first and always 1.
	nfAt := len(b.events)
	b.events = append(b.events, 0, fRequests, 1)
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
			b.events = append(b.events, d.f, d.v)
			nf++
		}
	}
	b.events[nfAt] = nf

	// The components: one per dimension value the event counts under.
	ncAt := len(b.events)
	b.events = append(b.events, 0)
	nc := 0
	comp := func(dim, id string, extra ...string) {
		b.events = append(b.events, a.component(b, t, hour, dim, id, extra...))
		nc++
	}
	comp(DimGlobal, GlobalID)
	if ev.KeyID != "" {
		comp(DimKey, ev.KeyID)
	}
	if ev.Model != "" {
		if priced {
			comp(DimModel, ev.Model)
		} else {
			comp(DimModel, ev.Model, "unknown")
		}
		if ev.KeyID != "" {
			comp(DimKeyModel, KeyModelID(ev.KeyID, ev.Model), ev.KeyID, ev.Model)
		}
	}
	if ev.AccountID != "" {
		comp(DimAccount, ev.AccountID)
	}
	b.events[ncAt] = nc
	b.events = append(b.events, ev.Time.UnixMilli())

	// The key's token window, which the token limit reads.
	if tokens := ev.Total(); ev.KeyID != "" && ev.TokenWindowSec > 0 && tokens > 0 {
		start := TokenWindowStart(t, ev.TokenWindowSec)
		k := a.ks.UsageTokenWindow(ev.KeyID, ev.TokenWindowSec, start)
		b.events = append(b.events, b.key(k, start+ev.TokenWindowSec), tokens)
	} else {
		b.events = append(b.events, 0, 0)
	}
}

// component is the index of the component of one dimension value in the
// hour of t: its hour, day and month bucket hashes and its total, and the
// index sorted sets that list it. A key-and-model component (extra: key,
// model) also lists the model in the key's models; a model component with
// extra "unknown" lists the model among the unknown ones.
func (a *Aggregator) component(b *scriptArgs, t time.Time, hour, dim, id string, extra ...string) int {
	ck := dim + "\x00" + id + "\x00" + hour
	if len(extra) == 1 {
		ck += "\x00unknown"
	}
	if c, ok := b.comps[ck]; ok {
		return c
	}
	buckets := [3]struct {
		gran, name string
		expireAt   int64
	}{
		{Hour, hour, t.Truncate(time.Hour).Add(time.Hour + HourRetention).Unix()},
		{Day, t.Format(DayFormat), dayStart(t).AddDate(0, 0, 1).Add(DayRetention).Unix()},
		{Month, t.Format(MonthFormat), monthStart(t).AddDate(0, 1, 0).Add(MonthRetention).Unix()},
	}
	c := &b.compArgs
	*c = append(*c, 4)
	for _, bk := range buckets {
		*c = append(*c, b.key(a.ks.UsageBucket(dim, id, bk.gran, bk.name), bk.expireAt))
	}
	*c = append(*c, b.key(a.ks.UsageTotal(dim, id), 0))
	nzAt := len(*c)
	*c = append(*c, 4)
	for _, bk := range buckets {
		*c = append(*c, b.key(a.ks.UsageIndex(dim, bk.gran, bk.name), bk.expireAt), id)
	}
	*c = append(*c, b.key(a.ks.UsageTotalIndex(dim), 0), id)
	switch len(extra) {
	case 1:
		*c = append(*c, b.key(a.ks.UsageUnknownModels(), 0), id)
		(*c)[nzAt] = 5
	case 2:
		*c = append(*c, b.key(a.ks.UsageKeyModels(extra[0]), 0), extra[1])
		(*c)[nzAt] = 5
	}
	b.ncomps++
	b.comps[ck] = b.ncomps
	return b.ncomps
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
	ackKey   int      // KEYS index of the usage stream; 0: acknowledge nothing
	ackIDs   []string // entries to acknowledge

	comps    map[string]int // component identity -> 1-based number
	ncomps   int
	compArgs []any
	events   []any
}

func newScriptArgs(events int, seenTTL int64) *scriptArgs {
	return &scriptArgs{
		keys:     make([]string, 0, events*8),
		index:    make(map[string]int, events*8),
		expireAt: make([]int64, 0, events*8),
		seenTTL:  seenTTL,
		comps:    make(map[string]int, events*2),
		compArgs: make([]any, 0, events*24),
		events:   make([]any, 0, events*24),
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

// finish is the complete ARGV: the header, the components, then the events.
func (b *scriptArgs) finish() []any {
	argv := make([]any, 0, 6+len(b.ackIDs)+2*len(b.keys)+len(b.compArgs)+len(b.events))
	argv = append(argv, b.seenTTL, b.ackKey, StreamGroup, len(b.ackIDs))
	for _, id := range b.ackIDs {
		argv = append(argv, id)
	}
	mAt := len(argv)
	argv = append(argv, 0)
	m := 0
	for i, at := range b.expireAt {
		if at > 0 {
			argv = append(argv, i+1, strconv.FormatInt(at, 10))
			m++
		}
	}
	argv[mAt] = m
	argv = append(argv, b.ncomps)
	argv = append(argv, b.compArgs...)
	return append(argv, b.events...)
}

// applyScript counts a batch of usage events once each.
//
// KEYS: every key the batch touches, each once: the events' seen markers,
// aggregate hashes (buckets and totals), sorted sets (indexes, a key's models,
// unknown models), token-window counters, and the usage stream when entries
// are acknowledged. All carry the hash tag {usage}.
//
// ARGV:
//
//	[1] seconds a seen marker lives
//	[2] index of the usage stream in KEYS (0: acknowledge nothing)
//	[3] the usage consumer group
//	[4] na, then na entry ids to acknowledge (XACK) with the counting
//	m, then m pairs (key index, unix time the key expires at): keys
//	    without a pair never expire
//	nc, then nc components (one dimension value in one hour), each:
//	  nh, then nh hash key indices; hashes without an expiry are totals,
//	  which also get last_used
//	  nz, then nz pairs (sorted-set key index, member); the member's score
//	  grows by the component's new events
//	then one group per event, to the end of ARGV:
//	  seen-marker key index
//	  nf, then nf pairs (field number in FIELDS, delta)
//	  ne, then ne component numbers (1-based) the event counts under
//	  last_used (unix ms of the event)
//	  token-window key index (0: none), tokens to add to it
//
// Events whose seen marker already exists are skipped (SET NX). The new
// events are summed per component in Lua, the components per key; then each
// distinct hash is read once (HMGET) and written once (HSET of the new sums),
// and each sorted set is read once (ZMSCORE) and written once (ZADD): the
// script is atomic, so this is an increment, with two commands per key
// instead of one per field. A sum that would reach 2^53, where Lua numbers
// stop being exact, is added with HINCRBY instead. A hash or counter gets its
// expiry when the batch created it; sorted sets get theirs on every batch.
// The expiry is set after the writes, so an expiry in the past deletes the
// key rather than leaving one without an expiry.
//
// Returns the number of events counted (not seen before); the listed entries
// are acknowledged either way.
var applyScript = redis.NewScript(scriptSrc)

const scriptSrc = `
local FIELDS = {'requests', 'errors', 'input_tokens', 'output_tokens', 'cache_create_tokens',
  'cache_read_tokens', 'images', 'cost_nanos', 'estimated', 'latency_ms_sum'}
local seenTTL = ARGV[1]
local ackKey, ackGroup, na = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local exp = {}
local p = 5 + na
local m = tonumber(ARGV[p])
p = p + 1
for _ = 1, m do
  exp[tonumber(ARGV[p])] = ARGV[p + 1]
  p = p + 2
end

-- Components: where they start in ARGV; their sums start at zero.
local nc = tonumber(ARGV[p])
p = p + 1
local cstart, cacc, clast = {}, {}, {}
for c = 1, nc do
  cstart[c] = p
  cacc[c] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
  clast[c] = 0
  local nh = tonumber(ARGV[p])
  p = p + 1 + nh
  p = p + 1 + 2 * tonumber(ARGV[p])
end

-- Events: new ones are added to their components.
local applied = 0
local tacc, torder = {}, {}
local n = #ARGV
while p <= n do
  local seen = tonumber(ARGV[p])
  local nf = tonumber(ARGV[p + 1])
  local fp = p + 2
  p = fp + 2 * nf
  local ne = tonumber(ARGV[p])
  local ep = p + 1
  p = ep + ne
  local lu = tonumber(ARGV[p])
  local tw, tokens = tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  p = p + 3
  if redis.call('SET', KEYS[seen], '1', 'NX', 'EX', seenTTL) then
    applied = applied + 1
    for j = ep, ep + ne - 1 do
      local c = tonumber(ARGV[j])
      local acc = cacc[c]
      for q = fp, fp + 2 * nf - 1, 2 do
        local f = tonumber(ARGV[q])
        acc[f] = acc[f] + tonumber(ARGV[q + 1])
      end
      if clast[c] < lu then
        clast[c] = lu
      end
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

-- Components with new events, summed per key.
local hacc, horder, last = {}, {}, {}
local zacc, zmembers, zorder = {}, {}, {}
for c = 1, nc do
  local acc = cacc[c]
  if acc[1] > 0 then
    local q = cstart[c]
    local nh = tonumber(ARGV[q])
    for j = q + 1, q + nh do
      local k = tonumber(ARGV[j])
      local h = hacc[k]
      if not h then
        h = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
        hacc[k] = h
        horder[#horder + 1] = k
      end
      for f = 1, 10 do
        h[f] = h[f] + acc[f]
      end
      if not exp[k] and (last[k] or 0) < clast[c] then
        last[k] = clast[c]
      end
    end
    q = q + 1 + nh
    for j = q + 1, q + 2 * tonumber(ARGV[q]), 2 do
      local k, m = tonumber(ARGV[j]), ARGV[j + 1]
      local counts = zacc[k]
      if not counts then
        counts = {}
        zacc[k] = counts
        zmembers[k] = {}
        zorder[#zorder + 1] = k
      end
      if not counts[m] then
        counts[m] = 0
        zmembers[k][#zmembers[k] + 1] = m
      end
      counts[m] = counts[m] + acc[1]
    end
  end
end

local BIG = 9007199254740992 -- 2^53: above it a Lua number is no longer exact
for _, k in ipairs(horder) do
  local key, acc = KEYS[k], hacc[k]
  local cur = redis.call('HMGET', key, FIELDS[1], FIELDS[2], FIELDS[3], FIELDS[4], FIELDS[5],
    FIELDS[6], FIELDS[7], FIELDS[8], FIELDS[9], FIELDS[10], 'last_used')
  local set, ns = {}, 0
  for f = 1, 10 do
    local d = acc[f]
    if d ~= 0 then
      local v = (tonumber(cur[f]) or 0) + d
      if v < BIG then
        set[ns + 1] = FIELDS[f]
        set[ns + 2] = string.format('%d', v)
        ns = ns + 2
      else
        redis.call('HINCRBY', key, FIELDS[f], string.format('%d', d))
      end
    end
  end
  local lu = last[k]
  if lu and (tonumber(cur[11]) or 0) < lu then
    set[ns + 1] = 'last_used'
    set[ns + 2] = string.format('%d', lu)
    ns = ns + 2
  end
  redis.call('HSET', key, unpack(set))
  if not cur[1] and exp[k] then
    redis.call('EXPIREAT', key, exp[k])
  end
end
for _, k in ipairs(zorder) do
  local key, counts, members = KEYS[k], zacc[k], zmembers[k]
  for lo = 1, #members, 500 do
    local hi = math.min(lo + 499, #members)
    local cur = redis.call('ZMSCORE', key, unpack(members, lo, hi))
    local add = {}
    for i = lo, hi do
      local m = members[i]
      add[2 * (i - lo) + 1] = (tonumber(cur[i - lo + 1]) or 0) + counts[m]
      add[2 * (i - lo) + 2] = m
    end
    redis.call('ZADD', key, unpack(add))
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
-- Acknowledge the batch's entries with its counting: an entry that was
-- counted is never delivered again.
if ackKey > 0 then
  for i = 5, 4 + na, 500 do
    redis.call('XACK', KEYS[ackKey], ackGroup, unpack(ARGV, i, math.min(i + 499, 4 + na)))
  end
end
return applied
`
