// Package loadtest measures the relay under load: an open-loop runner that
// sends requests at a constant arrival rate (so a slow period is not hidden by
// fewer requests being sent), a log-linear latency histogram with HDR-style
// precision, and process CPU and memory readings.
package loadtest

import (
	"math"
	"math/bits"
	"sync"
	"time"
)

// subBits sets the histogram's precision: each power-of-two range of
// nanoseconds is split into 2^subBits linear sub-buckets, so a recorded value
// is off by less than 1/2^subBits (under 1%).
const subBits = 7

// Histogram records durations with bounded relative error, like an HDR
// histogram. It is safe for concurrent use.
type Histogram struct {
	mu     sync.Mutex
	counts map[int]int64
	n      int64
	min    time.Duration
	max    time.Duration
	sum    time.Duration
}

// NewHistogram returns an empty histogram.
func NewHistogram() *Histogram {
	return &Histogram{counts: map[int]int64{}, min: math.MaxInt64}
}

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 1<<subBits {
		return int(v)
	}
	exp := bits.Len64(v) - 1 - subBits // how far above the linear range
	return (exp+1)<<subBits | int(v>>exp)&(1<<subBits-1)
}

// valueOf is the upper bound of a bucket.
func valueOf(b int) time.Duration {
	if b < 1<<subBits {
		return time.Duration(b)
	}
	exp := b>>subBits - 1
	sub := b & (1<<subBits - 1)
	return time.Duration((uint64(1<<subBits|sub)+1)<<exp - 1)
}

// Record adds one duration.
func (h *Histogram) Record(d time.Duration) {
	b := bucketOf(d)
	h.mu.Lock()
	h.counts[b]++
	h.n++
	h.sum += d
	h.min = min(h.min, d)
	h.max = max(h.max, d)
	h.mu.Unlock()
}

// Merge adds every value of o.
func (h *Histogram) Merge(o *Histogram) {
	o.mu.Lock()
	defer o.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	for b, c := range o.counts {
		h.counts[b] += c
	}
	h.n += o.n
	h.sum += o.sum
	if o.n > 0 {
		h.min = min(h.min, o.min)
		h.max = max(h.max, o.max)
	}
}

// Count is the number of values recorded.
func (h *Histogram) Count() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

// Quantile returns the value at q (0..1), within the histogram's precision.
func (h *Histogram) Quantile(q float64) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return 0
	}
	if q >= 1 {
		return h.max
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	rank = max(rank, 1)
	keys := make([]int, 0, len(h.counts))
	for b := range h.counts {
		keys = append(keys, b)
	}
	sortInts(keys)
	var seen int64
	for _, b := range keys {
		seen += h.counts[b]
		if seen >= rank {
			return min(valueOf(b), h.max)
		}
	}
	return h.max
}

// Summary is a histogram's usual figures.
type Summary struct {
	Count int64         `json:"count"`
	Mean  time.Duration `json:"mean_ns"`
	P50   time.Duration `json:"p50_ns"`
	P90   time.Duration `json:"p90_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

// Summary computes the usual figures.
func (h *Histogram) Summary() Summary {
	s := Summary{Count: h.Count(), P50: h.Quantile(.5), P90: h.Quantile(.9), P99: h.Quantile(.99), Max: h.Quantile(1)}
	h.mu.Lock()
	if h.n > 0 {
		s.Mean = h.sum / time.Duration(h.n)
	}
	h.mu.Unlock()
	return s
}

func sortInts(a []int) {
	// insertion sort is enough: a histogram has a few hundred buckets at most
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}
