package workers

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// handle is one handler slot: it runs what the fetcher hands it and gives
// the slot back.
func (p *Pool) handle() {
	defer p.workers.Done()
	for fs := range p.work {
		if p.cfg.BatchHandler != nil {
			p.runBatch(fs)
		} else {
			p.runOne(fs[0], p.cfg.Handler)
		}
		p.free <- struct{}{}
	}
}

// runBatch hands the batch to the batch handler in one call; when that fails
// it handles the entries one by one, so a bad entry fails alone.
func (p *Pool) runBatch(fs []*flight) {
	live := fs[:0:0]
	for _, f := range fs {
		if !p.gone(f) && !p.overDelivered(f) {
			live = append(live, f)
		}
	}
	if len(live) == 0 {
		return
	}
	if p.handlerCtx.Err() != nil {
		p.handBack(live, false) // the grace period is over: do not start
		return
	}
	es := make([]Entry, len(live))
	for i, f := range live {
		es[i] = f.e
	}
	err := p.call(live, func(ctx context.Context) error { return p.cfg.BatchHandler(ctx, es) })
	if err == nil {
		p.succeeded(live)
		return
	}
	p.log.Debug().Err(err).Int("entries", len(live)).Msg("batch failed; handling its entries one by one")
	one := func(ctx context.Context, e Entry) error { return p.cfg.BatchHandler(ctx, []Entry{e}) }
	for _, f := range live {
		p.runOne(f, one)
	}
}

// runOne handles one entry until it succeeds, is dead-lettered, or leaves
// the pool (handed back on Stop, or taken by another consumer).
func (p *Pool) runOne(f *flight, h Handler) {
	if p.overDelivered(f) {
		return
	}
	for {
		if p.gone(f) {
			return
		}
		if p.handlerCtx.Err() != nil {
			p.handBack([]*flight{f}, false) // the grace period is over: do not start
			return
		}
		e := f.e
		err := p.call([]*flight{f}, func(ctx context.Context) error { return h(ctx, e) })
		if err == nil {
			p.succeeded([]*flight{f})
			return
		}
		if p.gone(f) {
			return // handed back or lost while running: its failure is not its own
		}
		if p.handlerCtx.Err() != nil {
			// Cancelled by Stop after the grace period: not the entry's fault.
			p.handBack([]*flight{f}, false)
			return
		}
		if errors.Is(err, ErrPermanent) || f.e.Deliveries >= p.cfg.MaxDeliveries {
			p.deadLetter(f, err)
			return
		}
		p.stats.retried.Add(1)
		count(p.outcome.retry, 1)
		delay := p.cfg.Backoff(f.e.Deliveries)
		p.log.Debug().Err(err).Str("id", f.e.ID).Int64("deliveries", f.e.Deliveries).Dur("retry_in", delay).Msg("handler failed; retrying")

		p.state.Lock()
		f.failed = true
		p.state.Unlock()
		if !p.sleep(delay) {
			// Stopping: give it back now, this failed delivery counted.
			p.handBack([]*flight{f}, true)
			return
		}
		if !p.redeliver(f) {
			return
		}
	}
}

// overDelivered dead-letters an entry that came back more often than
// MaxDeliveries allows without running it (its consumers kept crashing or
// stalling on it). It reports whether it did.
func (p *Pool) overDelivered(f *flight) bool {
	if f.e.Deliveries <= p.cfg.MaxDeliveries {
		return false
	}
	p.deadLetter(f, fmt.Errorf("delivered %d times without completing (its consumers stopped or stalled)", f.e.Deliveries))
	return true
}

// call runs fn with a handler context that the timeout, Stop's grace period
// and a lost entry cancel, and turns a panic into an error.
func (p *Pool) call(fs []*flight, fn func(ctx context.Context) error) (err error) {
	ctx, cancel := context.WithTimeout(p.handlerCtx, p.cfg.HandlerTimeout)
	defer cancel()
	p.state.Lock()
	for _, f := range fs {
		f.cancel = cancel
	}
	p.state.Unlock()
	defer func() {
		p.state.Lock()
		for _, f := range fs {
			f.cancel = nil
		}
		p.state.Unlock()
	}()
	defer func() {
		if r := recover(); r != nil {
			p.log.Error().Str("panic", fmt.Sprint(r)).Bytes("stack", debug.Stack()).Msg("handler panicked")
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return fn(ctx)
}

// gone reports whether the entry left this pool while it was held.
func (p *Pool) gone(f *flight) bool {
	p.state.Lock()
	defer p.state.Unlock()
	return f.handedBack || f.lost
}

// forget drops entries from the held set; it reports false for one that was
// handed back or lost meanwhile.
func (p *Pool) forget(f *flight) bool {
	p.state.Lock()
	defer p.state.Unlock()
	delete(p.fl, f.e.ID)
	return !f.handedBack && !f.lost
}

// succeeded queues the entries' acknowledgements. An entry that was handed
// back meanwhile is acknowledged all the same: its work is done, and the
// consumer that took it over will find it acknowledged.
func (p *Pool) succeeded(fs []*flight) {
	for _, f := range fs {
		p.forget(f)
		p.ack(f.e.ID)
	}
	p.stats.ok.Add(int64(len(fs)))
	count(p.outcome.ok, len(fs))
}

// redeliver counts the next delivery of a failed entry in Redis, if this
// consumer still holds it; it reports whether to run the handler again.
func (p *Pool) redeliver(f *flight) bool {
	next := f.e.Deliveries + 1
	lost, err := p.renew(context.Background(), 0, []string{f.e.ID}, []int64{next})
	if err != nil {
		// Leave it pending: it is reclaimed after the visibility timeout.
		p.log.Error().Err(err).Str("id", f.e.ID).Msg("could not count a retry; leaving the entry to be reclaimed")
		p.forget(f)
		return false
	}
	if len(lost) > 0 {
		p.markLost(lost)
		return false
	}
	p.state.Lock()
	f.e.Deliveries = next
	f.failed = false
	f.renewed = time.Now()
	p.state.Unlock()
	return true
}

// deadLetter moves an entry to the dead-letter stream with its fields, where
// it came from, its delivery count and the last error, then acknowledges it.
// If Redis refuses, the entry stays pending and is reclaimed and dead-lettered
// later: it is never dropped.
func (p *Pool) deadLetter(f *flight, cause error) {
	if !p.forget(f) {
		return
	}
	values := make([]any, 0, 2*len(f.e.Values)+8)
	for k, v := range f.e.Values {
		values = append(values, k, v)
	}
	values = append(values,
		DeadID, f.e.ID,
		DeadStream, p.cfg.Stream,
		DeadDeliveries, strconv.FormatInt(f.e.Deliveries, 10),
		DeadError, cause.Error(),
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pipe := p.rdb.Pipeline()
	add := pipe.XAdd(ctx, &redis.XAddArgs{Stream: p.cfg.DeadLetter, Values: values})
	pipe.XAck(ctx, p.cfg.Stream, p.cfg.Group, f.e.ID)
	if _, err := pipe.Exec(ctx); err != nil {
		if add.Err() != nil {
			p.log.Error().Err(err).Str("id", f.e.ID).Msg("could not dead-letter an entry; it stays pending and comes back")
			return
		}
		// Added but not acknowledged: it may be dead-lettered twice, never lost.
		p.log.Error().Err(err).Str("id", f.e.ID).Msg("dead-lettered an entry but could not acknowledge it")
	}
	p.stats.dead.Add(1)
	count(p.outcome.dead, 1)
	p.log.Warn().Str("id", f.e.ID).Int64("deliveries", f.e.Deliveries).Str("error", cause.Error()).
		Str("dead_id", add.Val()).Msg("entry moved to the dead-letter stream")
}
