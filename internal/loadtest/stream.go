package loadtest

import (
	"io"
	"sync"
	"time"
)

// StreamTiming is when each server-sent event of one response reached the
// client.
type StreamTiming struct {
	Start  time.Time   // when the request was due
	Events []time.Time // when each event was complete (its blank line read)
	// Merged counts events that arrived in the same read as an earlier
	// event of the same response: a relay that buffers and coalesces
	// events shows up here.
	Merged int
}

// ReadSSE reads an SSE body to its end and records when each event was
// complete. Comment lines (heartbeats such as ": keep-alive") are not
// events. It returns the timing so far with the read error, if any (io.EOF
// is not an error).
func ReadSSE(r io.Reader, start time.Time) (StreamTiming, error) {
	t := StreamTiming{Start: start}
	buf := make([]byte, 32<<10)
	var (
		lineLen  int  // bytes of the current line so far (without \r)
		hasField bool // the current event has a non-comment line
		comment  bool // the current line starts with ':'
	)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			now := time.Now()
			inRead := 0
			for _, c := range buf[:n] {
				switch c {
				case '\r':
				case '\n':
					if lineLen == 0 {
						if hasField {
							t.Events = append(t.Events, now)
							inRead++
							if inRead > 1 {
								t.Merged++
							}
						}
						hasField = false
					} else if !comment {
						hasField = true
					}
					lineLen, comment = 0, false
				default:
					if lineLen == 0 && c == ':' {
						comment = true
					}
					lineLen++
				}
			}
		}
		if err == io.EOF {
			return t, nil
		}
		if err != nil {
			return t, err
		}
	}
}

// TTFB is the time from the request's due time to its first event; zero
// without events.
func (t StreamTiming) TTFB() time.Duration {
	if len(t.Events) == 0 {
		return 0
	}
	return t.Events[0].Sub(t.Start)
}

// Gaps are the times between consecutive events.
func (t StreamTiming) Gaps() []time.Duration {
	if len(t.Events) < 2 {
		return nil
	}
	g := make([]time.Duration, len(t.Events)-1)
	for i := range g {
		g[i] = t.Events[i+1].Sub(t.Events[i])
	}
	return g
}

// StreamStats sums up many streams whose events the upstream spaced
// Nominal apart.
type StreamStats struct {
	Nominal time.Duration
	TTFB    *Histogram // request due -> first event
	Total   *Histogram // request due -> last event
	// GapDev is how far each gap between events was from Nominal, either
	// way: the upstream's spacing as the client saw it.
	GapDev *Histogram
	// Short counts gaps under half of Nominal: events that reached the
	// client together although they left the upstream Nominal apart.
	Short int64

	mu      sync.Mutex
	Streams int64
	Errors  int64
	Events  int64
	Merged  int64
}

// NewStreamStats returns empty stats for streams spaced nominal apart.
func NewStreamStats(nominal time.Duration) *StreamStats {
	return &StreamStats{Nominal: nominal, TTFB: NewHistogram(), Total: NewHistogram(), GapDev: NewHistogram()}
}

// Add counts one stream; err marks it failed (its timing still counts).
func (s *StreamStats) Add(t StreamTiming, err error) {
	if len(t.Events) > 0 {
		s.TTFB.Record(t.TTFB())
		s.Total.Record(t.Events[len(t.Events)-1].Sub(t.Start))
	}
	var short int64
	for _, g := range t.Gaps() {
		d := g - s.Nominal
		if d < 0 {
			d = -d
		}
		s.GapDev.Record(d)
		if g < s.Nominal/2 {
			short++
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Streams++
	if err != nil {
		s.Errors++
	}
	s.Events += int64(len(t.Events))
	s.Merged += int64(t.Merged)
	s.Short += short
}
