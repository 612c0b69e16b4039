package loadtest

import (
	"io"
	"os"
	"testing"
	"time"
)

// chunkReader returns one chunk per Read.
type chunkReader struct {
	chunks []string
	pause  time.Duration
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	time.Sleep(c.pause)
	n := copy(p, c.chunks[0])
	c.chunks = c.chunks[1:]
	return n, nil
}

func TestReadSSECountsEventsAndMerges(t *testing.T) {
	r := &chunkReader{chunks: []string{
		"event: a\ndata: {}\n\n",
		": keep-alive\n",                               // a heartbeat is not an event
		"event: b\ndata: {}\n\nevent: c\ndata: {}\n\n", // two events in one read
		"data: split", " across reads\r\n\r\n",
	}}
	tm, err := ReadSSE(r, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(tm.Events) != 4 || tm.Merged != 1 || len(tm.Gaps()) != 3 || tm.TTFB() <= 0 {
		t.Fatalf("events %d merged %d gaps %d ttfb %v", len(tm.Events), tm.Merged, len(tm.Gaps()), tm.TTFB())
	}
}

func TestStreamStatsGapDeviationAndShortGaps(t *testing.T) {
	s := NewStreamStats(10 * time.Millisecond)
	t0 := time.Now()
	at := func(ms ...int) []time.Time {
		var out []time.Time
		for _, m := range ms {
			out = append(out, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return out
	}
	// gaps 10, 12, 1 (short), 17 ms
	s.Add(StreamTiming{Start: t0, Events: at(5, 15, 27, 28, 45), Merged: 1}, nil)
	s.Add(StreamTiming{Start: t0}, io.ErrUnexpectedEOF)
	if s.Streams != 2 || s.Errors != 1 || s.Events != 5 || s.Merged != 1 || s.Short != 1 {
		t.Fatalf("%+v", s)
	}
	if s.TTFB.Quantile(1) != 5*time.Millisecond || s.GapDev.Count() != 4 {
		t.Fatalf("ttfb %v gaps %d", s.TTFB.Quantile(1), s.GapDev.Count())
	}
	// deviations 0, 2, 9, 7 ms: the largest is the short gap
	if d := s.GapDev.Quantile(1); d != 9*time.Millisecond {
		t.Fatalf("max deviation %v", d)
	}
}

func TestSamplerSeesThisProcess(t *testing.T) {
	s := StartSampler(os.Getpid(), time.Millisecond)
	deadline := time.Now().Add(60 * time.Millisecond)
	for time.Now().Before(deadline) { // burn a little CPU
	}
	u := s.Stop()
	if u.RSSMax <= 0 || u.RSSMax < u.RSSEnd || u.CPU <= 0 || u.CPUPercent <= 0 {
		t.Fatalf("%+v", u)
	}
	if c, err := SystemCPU(); err != nil || c < u.CPU {
		t.Fatalf("system CPU %v (%v) below this process's %v", c, err, u.CPU)
	}
	if s.Stop() != u {
		t.Fatal("second Stop differs")
	}
}
