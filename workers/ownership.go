package workers

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// renewScript re-claims entries to the consumer that holds them, if it still
// does, setting their idle time and delivery count. It keeps a long job's
// entry from being reclaimed (idle 0), counts a retry (count+1), and hands an
// entry back on Stop (idle >= the visibility timeout, so any consumer's next
// XAUTOCLAIM takes it). Checking the owner first means a consumer that
// stalled never steals back an entry that another consumer took over.
//
// The delivery count is always passed (RETRYCOUNT), because XCLAIM ... JUSTID
// leaves it alone on Redis but increments it on miniredis.
//
// KEYS[1]    the stream
// ARGV[1]    the group
// ARGV[2]    the consumer
// ARGV[3]    idle time to set, in milliseconds
// ARGV[4...] pairs of entry id and delivery count to set (-1: keep the count)
// Returns the ids the consumer no longer holds (acknowledged, deleted, or
// claimed by another consumer); those are left alone.
var renewScript = redis.NewScript(`
local lost = {}
for i = 4, #ARGV, 2 do
  local id = ARGV[i]
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1, ARGV[2])
  if #p == 0 then
    lost[#lost + 1] = id
  else
    local n = tonumber(ARGV[i + 1])
    if n < 0 then n = p[1][4] end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'RETRYCOUNT', n, 'JUSTID')
  end
end
return lost
`)

// renew runs renewScript for ids with their delivery counts (-1: keep).
// Renewals of one pool run one at a time, so the keeper cannot undo a
// hand-back that happened while it was deciding what to keep.
func (p *Pool) renew(ctx context.Context, idle time.Duration, ids []string, counts []int64) ([]string, error) {
	p.renewing.Lock()
	defer p.renewing.Unlock()
	return p.renewLocked(ctx, idle, ids, counts)
}

func (p *Pool) renewLocked(ctx context.Context, idle time.Duration, ids []string, counts []int64) ([]string, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	args := make([]any, 0, 3+2*len(ids))
	args = append(args, p.cfg.Group, p.cfg.Consumer, idle.Milliseconds())
	for i, id := range ids {
		args = append(args, id, counts[i])
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return renewScript.Run(ctx, p.rdb, []string{p.cfg.Stream}, args...).StringSlice()
}

// keep re-claims the entries of handlers that run long (and of entries in
// backoff), so that their idle time never reaches the visibility timeout;
// an entry renewed less than VisibilityTimeout/3 ago is left alone, so short
// jobs cost nothing here.
func (p *Pool) keep() {
	defer p.bg.Done()
	t := time.NewTicker(p.keepEvery)
	defer t.Stop()
	for {
		select {
		case <-p.bgStop:
			return
		case <-t.C:
		}
		p.keepOnce()
	}
}

func (p *Pool) keepOnce() {
	p.renewing.Lock()
	defer p.renewing.Unlock()
	due := time.Now().Add(-p.cfg.VisibilityTimeout / 3)
	var ids []string
	var counts []int64
	p.state.Lock()
	for id, f := range p.fl {
		if f.renewed.Before(due) && !f.handedBack && !f.lost {
			ids = append(ids, id)
			counts = append(counts, -1)
		}
	}
	p.state.Unlock()
	if len(ids) == 0 {
		return
	}
	now := time.Now()
	lost, err := p.renewLocked(context.Background(), 0, ids, counts)
	if err != nil {
		p.log.Error().Err(err).Int("entries", len(ids)).Msg("could not keep running entries; they may be reclaimed")
		return
	}
	p.state.Lock()
	for _, id := range ids {
		if f := p.fl[id]; f != nil {
			f.renewed = now
		}
	}
	p.state.Unlock()
	p.markLost(lost)
}

// markLost cancels the handlers of entries another consumer took over; their
// results are dropped (the other consumer handles the entries).
func (p *Pool) markLost(ids []string) {
	n := 0
	p.state.Lock()
	for _, id := range ids {
		f := p.fl[id]
		if f == nil {
			continue // finished meanwhile
		}
		delete(p.fl, id)
		if f.handedBack {
			continue
		}
		f.lost = true
		n++
		if f.cancel != nil {
			f.cancel()
		}
	}
	p.state.Unlock()
	if n > 0 {
		p.stats.lost.Add(int64(n))
		p.log.Warn().Int("entries", n).Msg("entries were taken over by another consumer while running here; " +
			"the handlers were cancelled (is VisibilityTimeout too short, or was this process stalled?)")
	}
}

// handBack makes entries immediately reclaimable by any consumer: their
// idle time is set to the visibility timeout. The delivery that is given
// back is not counted, unless it had failed (counted true).
func (p *Pool) handBack(fs []*flight, counted bool) {
	if len(fs) == 0 {
		return
	}
	ids := make([]string, len(fs))
	counts := make([]int64, len(fs))
	p.state.Lock()
	for i, f := range fs {
		f.handedBack = true
		delete(p.fl, f.e.ID)
		ids[i] = f.e.ID
		counts[i] = f.e.Deliveries
		if !counted && !f.failed {
			counts[i] = max(f.e.Deliveries-1, 0)
		}
	}
	p.state.Unlock()
	p.sendBack(ids, counts)
}

// handBackAll hands back every entry still held when the grace period is
// over; their handlers' contexts are cancelled already.
func (p *Pool) handBackAll() {
	var ids []string
	var counts []int64
	p.state.Lock()
	for id, f := range p.fl {
		f.handedBack = true
		ids = append(ids, id)
		n := f.e.Deliveries
		if !f.failed {
			n = max(n-1, 0)
		}
		counts = append(counts, n)
		if f.cancel != nil {
			f.cancel()
		}
	}
	clear(p.fl)
	p.state.Unlock()
	p.sendBack(ids, counts)
}

func (p *Pool) sendBack(ids []string, counts []int64) {
	if len(ids) == 0 {
		return
	}
	lost, err := p.renew(context.Background(), p.cfg.VisibilityTimeout, ids, counts)
	if err != nil {
		// They stay pending under this consumer and are reclaimed once idle
		// past the visibility timeout: later, but not lost.
		p.log.Error().Err(err).Int("entries", len(ids)).Msg("could not hand entries back; they are reclaimed after the visibility timeout")
		return
	}
	n := len(ids) - len(lost)
	p.stats.handedBack.Add(int64(n))
	count(p.outcome.handedBack, n)
	p.log.Info().Int("entries", n).Msg("handed unfinished entries back for another consumer")
}

func formatID(ms, seq uint64) string {
	return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq, 10)
}
