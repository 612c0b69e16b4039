package workers

import (
	"context"
	"strconv"
	"strings"
	"time"
)

// staleConsumerAge is how long a consumer with nothing pending must have been
// silent before the trimmer removes it from the group. Live consumers read
// every Block, so only ones whose process is gone get this old.
const staleConsumerAge = time.Hour

// trimLoop trims the stream by age and drops long-gone consumers, every
// trimEvery. Every replica does it; doing it twice is harmless.
func (p *Pool) trimLoop() {
	defer p.bg.Done()
	t := time.NewTicker(p.trimEvery)
	defer t.Stop()
	for {
		select {
		case <-p.bgStop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if _, err := p.trim(ctx); err != nil {
			p.log.Warn().Err(err).Msg("trimming the stream failed")
		}
		if err := p.dropStaleConsumers(ctx); err != nil {
			p.log.Warn().Err(err).Msg("dropping stale consumers failed")
		}
		cancel()
	}
}

// trim removes entries older than TrimAge (by Redis's clock) with XTRIM
// MINID ~, but never one that a group has not read yet or not acknowledged:
// the MINID is lowered to the oldest such entry. It returns how many entries
// Redis removed (approximate trimming removes whole nodes only).
func (p *Pool) trim(ctx context.Context) (int64, error) {
	now, err := p.rdb.Time(ctx).Result()
	if err != nil {
		return 0, err
	}
	cutoff := now.UnixMilli() - p.cfg.TrimAge.Milliseconds()
	if cutoff <= 0 {
		return 0, nil
	}
	minID := streamID{ms: uint64(cutoff)}

	groups, err := p.rdb.XInfoGroups(ctx, p.cfg.Stream).Result()
	if err != nil {
		return 0, err
	}
	for _, g := range groups {
		if last, ok := parseID(g.LastDeliveredID); ok {
			minID = minOf(minID, last.next()) // entries after it are unread
		} else {
			return 0, nil // cannot tell what the group has read: trim nothing
		}
		if g.Pending == 0 {
			continue
		}
		sum, err := p.rdb.XPending(ctx, p.cfg.Stream, g.Name).Result()
		if err != nil {
			return 0, err
		}
		if sum.Count > 0 {
			lower, ok := parseID(sum.Lower)
			if !ok {
				return 0, nil
			}
			minID = minOf(minID, lower)
		}
	}
	if minID == (streamID{}) {
		return 0, nil
	}
	return p.rdb.XTrimMinIDApprox(ctx, p.cfg.Stream, minID.String(), 0).Result()
}

// dropStaleConsumers removes consumers that hold nothing and have been
// silent for long: every process names a consumer of its own, and the group
// would otherwise collect one per process that ever ran.
func (p *Pool) dropStaleConsumers(ctx context.Context) error {
	cs, err := p.rdb.XInfoConsumers(ctx, p.cfg.Stream, p.cfg.Group).Result()
	if err != nil {
		return err
	}
	for _, c := range cs {
		if c.Name == p.cfg.Consumer || c.Pending != 0 || c.Idle < staleConsumerAge {
			continue
		}
		if err := p.rdb.XGroupDelConsumer(ctx, p.cfg.Stream, p.cfg.Group, c.Name).Err(); err != nil {
			return err
		}
		p.log.Debug().Str("gone", c.Name).Msg("dropped a stale consumer")
	}
	return nil
}

// streamID is a parsed stream entry id.
type streamID struct{ ms, seq uint64 }

func parseID(s string) (streamID, bool) {
	msPart, seqPart, ok := strings.Cut(s, "-")
	if !ok {
		return streamID{}, false
	}
	ms, err1 := strconv.ParseUint(msPart, 10, 64)
	seq, err2 := strconv.ParseUint(seqPart, 10, 64)
	return streamID{ms, seq}, err1 == nil && err2 == nil
}

func (id streamID) String() string { return formatID(id.ms, id.seq) }

func (id streamID) next() streamID {
	if id.seq == ^uint64(0) {
		return streamID{ms: id.ms + 1}
	}
	return streamID{id.ms, id.seq + 1}
}

func (id streamID) less(o streamID) bool {
	return id.ms < o.ms || (id.ms == o.ms && id.seq < o.seq)
}

func minOf(a, b streamID) streamID {
	if b.less(a) {
		return b
	}
	return a
}
