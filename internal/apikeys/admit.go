package apikeys

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/usage"
)

// Reasons a request is refused by Admit.
const (
	DeniedConcurrency = "concurrency" // 429
	DeniedRate        = "rate"        // 429: requests per window
	DeniedTokens      = "tokens"      // 429: tokens per window
	DeniedDailyCost   = "daily_cost"  // 402
	DeniedTotalCost   = "total_cost"  // 402
)

// Denial is Admit's answer when a limit is reached.
type Denial struct {
	Reason     string
	Limit      int64         // the limit that was reached (count, tokens or nano-dollars)
	RetryAfter time.Duration // when trying again can succeed; 0 if only an admin can help
	ResetAt    time.Time     // when the counter resets; zero if never
}

func (d *Denial) Error() string { return "api key limit reached: " + d.Reason }

// Admission is a request that passed its key's limits. Release it when the
// request is over; until then its concurrency lease is renewed.
type Admission struct {
	KeyID string
	// TokenWindowSec is the key's window length (0: none), which the usage
	// aggregator needs to settle the token-window counter the limit reads.
	TokenWindowSec int64

	s      *Store
	leases string // lease set; "" when the key has no concurrency limit
	member string

	mu       sync.Mutex
	timer    *time.Timer
	released bool
}

// admitScript takes a concurrency lease and a request-window slot for one
// key in one atomic step, so two replicas can never both take the last one.
// Expired leases (of crashed processes) are dropped first.
//
// KEYS[1] the key's lease set (member: lease id, score: expiry unix ms)
// KEYS[2] the key's request counter of the current window
// ARGV[1] now (unix ms)
// ARGV[2] max concurrent requests (0: no limit, no lease is taken)
// ARGV[3] lease id
// ARGV[4] lease lifetime (ms)
// ARGV[5] requests per window (0: no limit, nothing is counted)
// ARGV[6] end of the current window (unix ms)
// Returns {1, leases in use, requests in window} when admitted,
// {0, retry ms} when all leases are taken, {-1, retry ms} when the window is
// used up.
var admitScript = redis.NewScript(`
local now = tonumber(ARGV[1])
local maxc = tonumber(ARGV[2])
local ttl = tonumber(ARGV[4])
local limit = tonumber(ARGV[5])
local inuse = 0
if maxc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  inuse = redis.call('ZCARD', KEYS[1])
  if inuse >= maxc then return {0, 1000} end
end
local count = 0
if limit > 0 then
  count = tonumber(redis.call('GET', KEYS[2]) or '0')
  if count >= limit then
    return {-1, math.max(tonumber(ARGV[6]) - now, 1)}
  end
  count = redis.call('INCR', KEYS[2])
  if count == 1 then redis.call('PEXPIREAT', KEYS[2], tonumber(ARGV[6]) + 60000) end
end
if maxc > 0 then
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ttl * 2)
  inuse = inuse + 1
end
return {1, inuse, count}
`)

// undoScript gives back what admitScript took, for a request refused by a
// later check (tokens or budget) in the same admission.
//
// KEYS[1] lease set; KEYS[2] request-window counter
// ARGV[1] lease id ("" if none); ARGV[2] "1" to give back a counted request
// Returns 1.
var undoScript = redis.NewScript(`
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[1], ARGV[1]) end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  if tonumber(redis.call('GET', KEYS[2])) > 0 then redis.call('DECR', KEYS[2]) end
end
return 1
`)

// window is the fixed window that contains now.
func window(now time.Time, sec int64) (start, end time.Time) {
	s := usage.TokenWindowStart(now, sec)
	return time.Unix(s, 0), time.Unix(s+sec, 0)
}

// Admit checks k's concurrency, request and token windows and budgets for
// one request, in at most one Redis round trip (a second one only for a
// request that is refused after taking a slot). On success the caller must
// Release the admission; on a reached limit the error is a *Denial.
func (s *Store) Admit(ctx context.Context, k *Key) (*Admission, error) {
	l := k.Limits
	a := &Admission{KeyID: k.ID, TokenWindowSec: l.WindowSec, s: s}
	useScript := l.MaxConcurrent > 0 || l.RequestsPerWindow > 0
	if !useScript && l.TokensPerWindow == 0 && l.DailyCostNanos == 0 && l.TotalCostNanos == 0 {
		return a, nil
	}
	now := s.now()
	var winStart, winEnd time.Time
	if l.WindowSec > 0 {
		winStart, winEnd = window(now, l.WindowSec)
	}
	leases := s.ks.APIKeyLeases(k.ID)
	reqWin := s.ks.APIKeyRequestWindow(k.ID, l.WindowSec, winStart.Unix())
	if l.MaxConcurrent > 0 {
		a.leases, a.member = leases, uuid.NewString()
	}

	var (
		script                   *redis.Cmd
		tokens, dayCost, totCost *redis.StringCmd
	)
	exec := func(eval bool) error {
		pipe := s.rdb.Pipeline()
		if useScript {
			keys := []string{leases, reqWin}
			args := []any{now.UnixMilli(), l.MaxConcurrent, a.member, s.leaseTTL.Milliseconds(),
				l.RequestsPerWindow, winEnd.UnixMilli()}
			if eval {
				script = admitScript.Eval(ctx, pipe, keys, args...)
			} else {
				script = admitScript.EvalSha(ctx, pipe, keys, args...)
			}
		}
		if l.TokensPerWindow > 0 {
			tokens = pipe.Get(ctx, s.ks.UsageTokenWindow(k.ID, l.WindowSec, winStart.Unix()))
		}
		if l.DailyCostNanos > 0 {
			day := now.UTC().Format(usage.DayFormat)
			dayCost = pipe.HGet(ctx, s.ks.UsageBucket(usage.DimKey, k.ID, usage.Day, day), usage.FieldCostNanos)
		}
		if l.TotalCostNanos > 0 {
			totCost = pipe.HGet(ctx, s.ks.UsageTotal(usage.DimKey, k.ID), usage.FieldCostNanos)
		}
		_, err := pipe.Exec(ctx)
		return err
	}
	var res []int64
	for attempt := 0; ; attempt++ {
		err := exec(false)
		if script != nil && isNoScript(script.Err()) {
			err = exec(true)
		}
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("check api key limits: %w", err)
		}
		if script == nil {
			break
		}
		if res, err = script.Int64Slice(); err != nil || len(res) < 2 {
			return nil, fmt.Errorf("check api key limits: %v", err)
		}
		// All leases taken, but some are this process's finished requests
		// whose release is still queued: wait for it, then try once more, so
		// a client sending requests one after another is never refused.
		if res[0] != 0 || attempt > 0 || !s.rel.waitPending(ctx, leases) {
			break
		}
	}

	counted := false
	if script != nil {
		switch res[0] {
		case 0:
			return nil, &Denial{Reason: DeniedConcurrency, Limit: l.MaxConcurrent, RetryAfter: time.Duration(res[1]) * time.Millisecond}
		case -1:
			return nil, &Denial{Reason: DeniedRate, Limit: l.RequestsPerWindow,
				RetryAfter: time.Duration(res[1]) * time.Millisecond, ResetAt: winEnd}
		}
		counted = l.RequestsPerWindow > 0
	}

	var denial *Denial
	switch {
	case tokens != nil && counter(tokens) >= l.TokensPerWindow:
		denial = &Denial{Reason: DeniedTokens, Limit: l.TokensPerWindow, RetryAfter: winEnd.Sub(now), ResetAt: winEnd}
	case dayCost != nil && counter(dayCost) >= l.DailyCostNanos:
		y, m, d := now.UTC().Date()
		reset := time.Date(y, m, d+1, 0, 0, 0, 0, time.UTC)
		denial = &Denial{Reason: DeniedDailyCost, Limit: l.DailyCostNanos, ResetAt: reset}
	case totCost != nil && counter(totCost) >= l.TotalCostNanos:
		denial = &Denial{Reason: DeniedTotalCost, Limit: l.TotalCostNanos}
	}
	if denial != nil {
		if a.member != "" || counted {
			flag := "0"
			if counted {
				flag = "1"
			}
			if err := undoScript.Run(ctx, s.rdb, []string{leases, reqWin}, a.member, flag).Err(); err != nil {
				s.log.Warn().Err(err).Str("key_id", k.ID).Msg("could not give back a refused request's slot; it expires by itself")
			}
		}
		return nil, denial
	}
	if a.member != "" {
		a.mu.Lock()
		a.timer = time.AfterFunc(s.leaseTTL/3, a.renew)
		a.mu.Unlock()
	}
	return a, nil
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

// counter reads an integer counter; a missing one is zero.
func counter(c *redis.StringCmd) int64 {
	v, err := c.Result()
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(v, 10, 64)
	return n
}

// renew extends the lease while the request runs (long streams).
func (a *Admission) renew() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.released {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	now := a.s.now()
	pipe := a.s.rdb.Pipeline()
	pipe.ZAdd(ctx, a.leases, redis.Z{Score: float64(now.Add(a.s.leaseTTL).UnixMilli()), Member: a.member})
	pipe.PExpire(ctx, a.leases, 2*a.s.leaseTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		a.s.log.Warn().Err(err).Str("key_id", a.KeyID).Msg("could not renew a concurrency lease; retrying")
	}
	a.timer.Reset(a.s.leaseTTL / 3)
}

// Release frees the admission's concurrency lease. Safe to call more than
// once, and on a nil admission.
func (a *Admission) Release() {
	if a == nil {
		return
	}
	a.mu.Lock()
	if a.released {
		a.mu.Unlock()
		return
	}
	a.released = true
	if a.timer != nil {
		a.timer.Stop()
	}
	a.mu.Unlock()
	if a.member != "" {
		a.s.rel.release(a.leases, a.member)
	}
}

// releaser frees leases in batches off the response path. While it is not
// running, leases are freed inline.
type releaser struct {
	s *Store

	mu      sync.Mutex
	running bool
	ch      chan lease
	done    chan struct{}
	pending map[string]int // queued releases per lease set
	flushed chan struct{}  // closed after each batch is sent
}

type lease struct{ set, member string }

func newReleaser(s *Store) *releaser {
	return &releaser{s: s, pending: make(map[string]int), flushed: make(chan struct{})}
}

// waitPending waits until the queued releases of set are sent, and reports
// whether there were any.
func (r *releaser) waitPending(ctx context.Context, set string) bool {
	had := false
	for {
		r.mu.Lock()
		n, flushed := r.pending[set], r.flushed
		r.mu.Unlock()
		if n == 0 {
			return had
		}
		had = true
		select {
		case <-flushed:
		case <-ctx.Done():
			return false
		}
	}
}

func (r *releaser) start(context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running {
		return errors.New("apikeys: already started")
	}
	r.running = true
	r.ch = make(chan lease, 4096)
	r.done = make(chan struct{})
	go r.loop(r.ch, r.done)
	return nil
}

func (r *releaser) stop() {
	r.mu.Lock()
	if !r.running {
		r.mu.Unlock()
		return
	}
	r.running = false
	close(r.ch)
	done := r.done
	r.mu.Unlock()
	<-done
}

func (r *releaser) release(set, member string) {
	r.mu.Lock()
	if r.running {
		select {
		case r.ch <- lease{set, member}:
			r.pending[set]++
			r.mu.Unlock()
			return
		default: // full: free it inline
		}
	}
	r.mu.Unlock()
	r.flush([]lease{{set, member}})
}

func (r *releaser) loop(ch <-chan lease, done chan<- struct{}) {
	defer close(done)
	batch := make([]lease, 0, 256)
	for l := range ch {
		batch = append(batch[:0], l)
	drain:
		for len(batch) < cap(batch) {
			select {
			case l, ok := <-ch:
				if !ok {
					break drain
				}
				batch = append(batch, l)
			default:
				break drain
			}
		}
		r.flush(batch)
		r.mu.Lock()
		for _, l := range batch {
			if r.pending[l.set]--; r.pending[l.set] <= 0 {
				delete(r.pending, l.set)
			}
		}
		close(r.flushed)
		r.flushed = make(chan struct{})
		r.mu.Unlock()
	}
}

func (r *releaser) flush(batch []lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	pipe := r.s.rdb.Pipeline()
	for _, l := range batch {
		pipe.ZRem(ctx, l.set, l.member)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		r.s.log.Warn().Err(err).Int("leases", len(batch)).Msg("could not free concurrency leases; they expire by themselves")
	}
}
