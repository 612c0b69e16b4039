package loadtest

import (
	"context"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

func TestRunSendsAtTheRateAndCountsOutcomes(t *testing.T) {
	var n atomic.Int64
	res := Run(context.Background(), Plan{Rate: 1000, Duration: 300 * time.Millisecond}, func(context.Context) error {
		if n.Add(1)%10 == 0 {
			return errors.New("every tenth fails")
		}
		return nil
	})
	if res.Sent != 300 || res.OK != 270 || res.Errors != 30 || res.Dropped != 0 {
		t.Fatalf("sent %d ok %d errors %d dropped %d", res.Sent, res.OK, res.Errors, res.Dropped)
	}
	if res.Latency.Count() != 300 {
		t.Fatalf("latencies recorded: %d", res.Latency.Count())
	}
}

// A server that stalls must show up in the latencies of the requests that
// were due during the stall, not only in the one that was waiting.
func TestRunMeasuresFromDueTime(t *testing.T) {
	var n atomic.Int64
	res := Run(context.Background(), Plan{Rate: 100, Duration: 500 * time.Millisecond, MaxInFlight: 1}, func(context.Context) error {
		if n.Add(1) == 1 {
			time.Sleep(200 * time.Millisecond)
		}
		return nil
	})
	// With one request allowed in flight, the ~19 due during the stall are
	// dropped rather than silently delayed.
	if res.Dropped < 15 {
		t.Fatalf("dropped %d during a 200ms stall at 100/s with one in flight", res.Dropped)
	}
	if res.Latency.Quantile(1) < 200*time.Millisecond {
		t.Fatalf("max latency %v hides the stall", res.Latency.Quantile(1))
	}
}

func TestReadProcSelf(t *testing.T) {
	s, err := ReadProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.RSS <= 0 || s.MaxRSS < s.RSS || s.CPU < 0 {
		t.Fatalf("%+v", s)
	}
}
