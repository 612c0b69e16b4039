package workers

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// createGroup creates the consumer group from the stream's start, and the
// stream with it. A group that exists already is fine.
func (p *Pool) createGroup(ctx context.Context) error {
	err := p.rdb.XGroupCreateMkStream(ctx, p.cfg.Stream, p.cfg.Group, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return err
	}
	return nil
}

// fetch is the pool's only reader. It waits for free handler slots, then
// takes over idle entries of other consumers when a reclaim is due, and
// otherwise reads new entries, never more than the free slots can take.
func (p *Pool) fetch() {
	defer close(p.fetcherDone)
	defer close(p.work)

	cursor := "0-0"
	nextReclaim := time.Now() // take over what a stopped consumer left at once
	var errDelay time.Duration
	ctx := context.Background()

	for {
		slots := p.takeSlots()
		if slots == 0 {
			return
		}
		n := int64(slots * p.perSlot)

		var (
			fs        []*flight
			err       error
			reclaimed bool
		)
		if !time.Now().Before(nextReclaim) {
			fs, cursor, err = p.reclaim(ctx, cursor, n)
			if err == nil && cursor == "0-0" {
				nextReclaim = time.Now().Add(p.reclaimEvery)
			}
			reclaimed = len(fs) > 0
		}
		if err == nil && len(fs) == 0 {
			fs, err = p.read(ctx, n)
		}
		if err != nil {
			p.releaseSlots(slots)
			if isNoGroup(err) {
				// The stream or group is gone (a flushed or restarted Redis
				// without persistence): make it again and go on.
				if cerr := p.createGroup(ctx); cerr == nil {
					p.log.Warn().Msg("consumer group was missing; created it again")
					continue
				}
			}
			errDelay = clamp(2*errDelay, 100*time.Millisecond, 5*time.Second)
			p.log.Error().Err(err).Dur("retry_in", errDelay).Msg("reading the stream failed")
			if !p.sleep(errDelay) {
				return
			}
			continue
		}
		errDelay = 0

		select {
		case <-p.stopping:
			// Read after Stop began: give them back untouched, and without
			// counting this delivery.
			p.releaseSlots(slots)
			p.handBack(fs, false)
			return
		default:
		}

		if reclaimed {
			p.stats.reclaimed.Add(int64(len(fs)))
			count(p.outcome.reclaimed, len(fs))
		}
		p.state.Lock()
		fresh := fs[:0]
		for _, f := range fs {
			if p.fl[f.e.ID] != nil {
				// Still held here (its renewal failed long enough for it to
				// look abandoned); XAUTOCLAIM just gave it back to us.
				continue
			}
			p.fl[f.e.ID] = f
			fresh = append(fresh, f)
		}
		p.state.Unlock()
		fs = fresh

		used := 0
		for i := 0; i < len(fs); i += p.perSlot {
			p.work <- fs[i:min(i+p.perSlot, len(fs))]
			used++
		}
		p.releaseSlots(slots - used)
		if p.cfg.BatchWait > 0 && len(fs) > 0 && len(fs) < p.perSlot {
			if !p.sleep(p.cfg.BatchWait) {
				return
			}
		}
	}
}

// takeSlots waits for at least one free handler slot and takes all free
// ones; it returns 0 when the pool is stopping.
func (p *Pool) takeSlots() int {
	select {
	case <-p.free:
	case <-p.stopping:
		return 0
	}
	n := 1
	runtime.Gosched() // let handlers that are finishing give their slots back
	for n < p.cfg.Concurrency {
		select {
		case <-p.free:
			n++
		default:
			return n
		}
	}
	return n
}

func (p *Pool) releaseSlots(n int) {
	for range n {
		p.free <- struct{}{}
	}
}

// read reads up to n new entries, blocking at most Block.
func (p *Pool) read(ctx context.Context, n int64) ([]*flight, error) {
	res, err := p.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group:    p.cfg.Group,
		Consumer: p.cfg.Consumer,
		Streams:  []string{p.cfg.Stream, ">"},
		Count:    n,
		Block:    p.cfg.Block,
	}).Result()
	if errors.Is(err, redis.Nil) || len(res) == 0 {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	now := time.Now()
	msgs := res[0].Messages
	fs := make([]flight, len(msgs))
	out := make([]*flight, len(msgs))
	for i, m := range msgs {
		fs[i] = flight{e: Entry{ID: m.ID, Values: stringValues(m.Values), Deliveries: 1}, renewed: now}
		out[i] = &fs[i]
	}
	return out, nil
}

// reclaim takes over up to n entries idle past the visibility timeout
// (XAUTOCLAIM, which counts a delivery), and reads their delivery counts.
func (p *Pool) reclaim(ctx context.Context, cursor string, n int64) ([]*flight, string, error) {
	msgs, next, err := p.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
		Stream:   p.cfg.Stream,
		Group:    p.cfg.Group,
		Consumer: p.cfg.Consumer,
		MinIdle:  p.cfg.VisibilityTimeout,
		Start:    cursor,
		Count:    n,
	}).Result()
	if err != nil {
		return nil, "0-0", err
	}
	if next == "" {
		next = "0-0"
	}
	var live []redis.XMessage
	for _, m := range msgs {
		if m.ID != "" && m.Values != nil { // Redis 6.2 reports deleted entries as nil
			live = append(live, m)
		}
	}
	if len(live) == 0 {
		return nil, next, nil
	}
	pipe := p.rdb.Pipeline()
	pend := make([]*redis.XPendingExtCmd, len(live))
	for i, m := range live {
		pend[i] = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{
			Stream: p.cfg.Stream, Group: p.cfg.Group, Start: m.ID, End: m.ID, Count: 1, Consumer: p.cfg.Consumer,
		})
	}
	_, _ = pipe.Exec(ctx)
	now := time.Now()
	out := make([]*flight, 0, len(live))
	for i, m := range live {
		deliveries := int64(2) // at least: it was delivered before and now again
		if ps, err := pend[i].Result(); err == nil && len(ps) == 1 {
			deliveries = max(ps[0].RetryCount, 1)
		}
		out = append(out, &flight{e: Entry{ID: m.ID, Values: stringValues(m.Values), Deliveries: deliveries}, renewed: now})
	}
	return out, next, nil
}

func stringValues(vs map[string]any) map[string]string {
	out := make(map[string]string, len(vs))
	for k, v := range vs {
		switch v := v.(type) {
		case string:
			out[k] = v
		case nil:
			out[k] = ""
		default:
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}

func isNoGroup(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOGROUP")
}
