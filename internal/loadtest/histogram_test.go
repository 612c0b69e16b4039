package loadtest

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func TestHistogramQuantilesWithinOnePercent(t *testing.T) {
	h := NewHistogram()
	var vals []time.Duration
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 100_000; i++ {
		// spread over six orders of magnitude
		d := time.Duration(r.ExpFloat64() * float64(time.Millisecond) * float64(1+i%1000))
		vals = append(vals, d)
		h.Record(d)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.5, 0.9, 0.99, 0.999} {
		want := vals[int(q*float64(len(vals)))-1]
		got := h.Quantile(q)
		if diff := float64(got-want) / float64(want); diff < -0.01 || diff > 0.01 {
			t.Errorf("q%.3f = %v, exact %v (%.2f%% off)", q, got, want, diff*100)
		}
	}
	if h.Quantile(1) != vals[len(vals)-1] {
		t.Errorf("max = %v, want %v", h.Quantile(1), vals[len(vals)-1])
	}
}

func TestHistogramSmallValuesExactAndMerge(t *testing.T) {
	a, b := NewHistogram(), NewHistogram()
	for i := 1; i <= 100; i++ {
		a.Record(time.Duration(i))
		b.Record(time.Duration(100 + i))
	}
	a.Merge(b)
	if a.Count() != 200 || a.Quantile(0.5) != 100 || a.Quantile(1) != 200 {
		t.Fatalf("count %d p50 %v max %v", a.Count(), a.Quantile(0.5), a.Quantile(1))
	}
	if s := NewHistogram().Summary(); s.Count != 0 || s.P99 != 0 {
		t.Fatalf("empty summary %+v", s)
	}
}
