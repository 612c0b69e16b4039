package ingress

import (
	"context"
	"net/http"
	"time"

	"github.com/relaydev/relay/usage"
)

// UsageRecorder takes usage events (implemented by usage.Recorder). Record
// returns once the event is durable in Redis, or when ctx ends; in the latter
// case the recorder keeps it buffered and retries, so nothing is lost.
type UsageRecorder interface {
	Record(ctx context.Context, ev usage.Event) error
}

// recordUsage hands ev to the recorder and waits a bounded time for it to be
// durable, so a client that got its answer has its usage counted even if the
// process dies a moment later.
func (s *Server) recordUsage(ev usage.Event) {
	if s.usage == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := s.usage.Record(ctx, ev); err != nil {
		s.log.Warn().Err(err).Str("event_id", ev.ID).Msg("usage event not yet in redis; kept buffered for retry")
	}
}

// recordStreamed records the usage of a streamed answer that ended with
// class ("" for a complete one): status 200 (sent with the first byte),
// latency, and the time to the first byte the client got.
func (s *Server) recordStreamed(ev usage.Event, start time.Time, st *eventStream, class string) {
	ev.Status, ev.ErrorClass = http.StatusOK, class
	ev.LatencyMs = time.Since(start).Milliseconds()
	if t := st.FirstByte(); !t.IsZero() {
		ev.TTFBMs = t.Sub(start).Milliseconds()
	}
	s.recordUsage(ev)
}
