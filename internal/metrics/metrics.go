// Package metrics holds the relay's Prometheus metrics. One Metrics value is
// made in main and handed to every component that records something; nothing
// registers into the global default registry.
package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"
)

// Metrics is the relay's registry and the collectors components write to.
type Metrics struct {
	Registry *prometheus.Registry

	// HTTP: one observation per answered request, by route pattern.
	Requests *prometheus.CounterVec   // route, method, status
	Latency  *prometheus.HistogramVec // route, status
	// Overhead is time spent in the relay itself: total minus upstream wait.
	Overhead *prometheus.HistogramVec // route

	// Workers: one count per handled stream entry.
	WorkerOutcomes *prometheus.CounterVec // stream, outcome (ok, retry, dead, reclaimed, handed_back)

	// Usage emission.
	UsagePending prometheus.Gauge       // events buffered in the process, not yet in Redis
	UsageFlushes *prometheus.CounterVec // outcome (ok, error)
	UsageLost    *prometheus.CounterVec // reason (buffer_full, shutdown): events never written

	// Upstreams.
	UpstreamRequests *prometheus.CounterVec // upstream, status
}

// New makes the registry with Go runtime and process collectors included.
func New() *Metrics {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := &Metrics{
		Registry: r,
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_http_requests_total", Help: "HTTP requests answered, by route pattern, method and status.",
		}, []string{"route", "method", "status"}),
		Latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_http_request_duration_seconds",
			Help:    "Time from request to the end of the response (for streams: the end of the stream).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120},
		}, []string{"route", "status"}),
		Overhead: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "relay_overhead_seconds",
			Help:    "Time spent in the relay itself: request duration minus time waiting for the upstream.",
			Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1},
		}, []string{"route"}),
		WorkerOutcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_worker_entries_total", Help: "Stream entries handled by worker pools, by outcome.",
		}, []string{"stream", "outcome"}),
		UsagePending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_usage_events_buffered", Help: "Usage events held in the process because they are not in Redis yet.",
		}),
		UsageFlushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_usage_flushes_total", Help: "Batches of usage events written to Redis, by outcome.",
		}, []string{"outcome"}),
		UsageLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_usage_events_lost_total", Help: "Usage events never written to Redis: buffer full, or still unwritten at shutdown.",
		}, []string{"reason"}),
		UpstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_upstream_requests_total", Help: "Requests sent upstream, by upstream and status (or error).",
		}, []string{"upstream", "status"}),
	}
	r.MustRegister(m.Requests, m.Latency, m.Overhead, m.WorkerOutcomes, m.UsagePending, m.UsageFlushes, m.UpstreamRequests)
	r.MustRegister(m.UsageLost)
	return m
}

// StreamGroup names a stream and the consumer group that reads it.
type StreamGroup struct {
	Label  string // short name for the metric label, e.g. "usage"
	Stream string // full key
	Group  string
}

// WatchStreams reports each stream's length and its group's pending entries
// at scrape time, read from Redis.
func (m *Metrics) WatchStreams(rdb redis.UniversalClient, streams []StreamGroup) {
	m.Registry.MustRegister(&streamCollector{rdb: rdb, streams: streams})
}

var (
	streamLen = prometheus.NewDesc("relay_stream_length", "Entries in a Redis stream.", []string{"stream"}, nil)
	streamPen = prometheus.NewDesc("relay_stream_pending", "Entries delivered to a consumer and not yet acknowledged.", []string{"stream"}, nil)
)

type streamCollector struct {
	rdb     redis.UniversalClient
	streams []StreamGroup
}

func (c *streamCollector) Describe(ch chan<- *prometheus.Desc) { ch <- streamLen; ch <- streamPen }

func (c *streamCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	pipe := c.rdb.Pipeline()
	lens := make([]*redis.IntCmd, len(c.streams))
	pens := make([]*redis.XPendingCmd, len(c.streams))
	for i, s := range c.streams {
		lens[i] = pipe.XLen(ctx, s.Stream)
		pens[i] = pipe.XPending(ctx, s.Stream, s.Group)
	}
	_, _ = pipe.Exec(ctx) // a missing stream or group is reported as zero
	for i, s := range c.streams {
		ch <- prometheus.MustNewConstMetric(streamLen, prometheus.GaugeValue, float64(lens[i].Val()), s.Label)
		var pending int64
		if p, err := pens[i].Result(); err == nil {
			pending = p.Count
		}
		ch <- prometheus.MustNewConstMetric(streamPen, prometheus.GaugeValue, float64(pending), s.Label)
	}
}
