package loadtest

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Plan is one open-loop run: requests start at a constant rate whatever the
// answers' speed, and each latency is measured from the moment its request
// was due, not from when it was actually sent. A closed loop (each worker
// waiting for its answer) would send fewer requests exactly when the server
// is slow, and hide that slowness ("coordinated omission").
type Plan struct {
	Rate        float64       // requests per second
	Duration    time.Duration // how long to keep sending
	MaxInFlight int           // requests open at once before new ones count as dropped
}

// Result is what a run measured.
type Result struct {
	Latency  *Histogram
	Sent     int64
	OK       int64
	Errors   int64
	Dropped  int64 // due while MaxInFlight requests were open: not sent
	Elapsed  time.Duration
	Achieved float64 // completed requests per second
}

// Run sends requests by calling do at plan.Rate for plan.Duration, then waits
// for the open ones. do's error marks a failed request.
func Run(ctx context.Context, plan Plan, do func(ctx context.Context) error) Result {
	if plan.MaxInFlight <= 0 {
		plan.MaxInFlight = 10_000
	}
	res := Result{Latency: NewHistogram()}
	interval := time.Duration(float64(time.Second) / plan.Rate)
	total := int64(plan.Duration / interval)
	sem := make(chan struct{}, plan.MaxInFlight)
	var wg sync.WaitGroup
	var ok, failed, dropped atomic.Int64
	start := time.Now()
	for i := int64(0); i < total; i++ {
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				total = i
			}
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		default:
			dropped.Add(1)
			continue
		}
		res.Sent++
		wg.Add(1)
		go func(due time.Time) {
			defer wg.Done()
			defer func() { <-sem }()
			err := do(ctx)
			res.Latency.Record(time.Since(due))
			if err != nil {
				failed.Add(1)
			} else {
				ok.Add(1)
			}
		}(due)
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.OK, res.Errors, res.Dropped = ok.Load(), failed.Load(), dropped.Load()
	res.Achieved = float64(res.OK+res.Errors) / res.Elapsed.Seconds()
	return res
}
