package workers

import (
	"context"
	"time"
)

// maxAckIDs bounds one XACK command; larger flushes are pipelined.
const maxAckIDs = 1000

// ack queues an entry's acknowledgement for the acker. After the acker has
// stopped (a handler that outlived Stop) it acknowledges directly.
func (p *Pool) ack(id string) {
	select {
	case p.acks <- id:
	case <-p.ackDone:
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := p.rdb.XAck(ctx, p.cfg.Stream, p.cfg.Group, id).Err(); err != nil {
			p.log.Error().Err(err).Str("id", id).Msg("acknowledging failed; the entry will be handled again")
		}
	}
}

// ackLoop batches acknowledgements: it takes whatever is queued, sends it
// in one round trip, and repeats, so the batch grows with the load and an
// idle pool acknowledges at once.
func (p *Pool) ackLoop() {
	defer close(p.ackDone)
	ids := make([]string, 0, 256)
	for {
		select {
		case id := <-p.acks:
			ids = append(ids, id)
		case <-p.ackStop:
			for {
				select {
				case id := <-p.acks:
					ids = append(ids, id)
					continue
				default:
				}
				break
			}
			p.flushAcks(ids)
			return
		}
	drain:
		for len(ids) < 16*maxAckIDs {
			select {
			case id := <-p.acks:
				ids = append(ids, id)
			default:
				break drain
			}
		}
		p.flushAcks(ids)
		ids = ids[:0]
	}
}

// flushAcks acknowledges ids, trying a few times. Entries whose
// acknowledgement is lost stay pending and are handled again after the
// visibility timeout; handlers are idempotent.
func (p *Pool) flushAcks(ids []string) {
	if len(ids) == 0 {
		return
	}
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(time.Duration(attempt) * 50 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		pipe := p.rdb.Pipeline()
		for i := 0; i < len(ids); i += maxAckIDs {
			pipe.XAck(ctx, p.cfg.Stream, p.cfg.Group, ids[i:min(i+maxAckIDs, len(ids))]...)
		}
		_, err = pipe.Exec(ctx)
		cancel()
		if err == nil {
			return
		}
	}
	p.log.Error().Err(err).Int("entries", len(ids)).Msg("acknowledging failed; these entries will be handled again")
}
