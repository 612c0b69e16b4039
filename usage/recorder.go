package usage

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/metrics"
)

// ErrBufferFull is returned by Record when the recorder already holds
// RecorderConfig.Capacity events that Redis has not taken; that event is
// not kept.
var ErrBufferFull = errors.New("usage: event buffer full (redis unreachable for long?); event not recorded")

// ErrStopped is returned by Record after Stop, and to the callers whose
// events could not be written before Stop gave up.
var ErrStopped = errors.New("usage: recorder stopped")

// RecorderConfig configures a Recorder. Zero values take the defaults.
type RecorderConfig struct {
	Stream      string        // full key of the usage stream (keyspace.Stream(StreamName)); required
	Capacity    int           // events held at most while Redis does not take them; default 200,000
	MaxPipeline int           // events per Redis round trip at most; default 2,000
	StopTimeout time.Duration // how long Stop keeps trying to write what is buffered; default 10s
	Log         zerolog.Logger
	Metrics     *metrics.Metrics // may be nil
}

// Recorder puts usage events on the usage stream. It is group commit: Record
// queues the event and waits; one flusher goroutine takes everything queued,
// adds it to the stream in one pipeline, and wakes the waiters, so Record
// returns once its event is in Redis, usually within one round trip, while
// many concurrent Records share that round trip.
//
// If Redis does not take a batch, the flusher keeps it and retries with
// backoff; events keep queueing up to Capacity. A Record whose context ends
// first returns the context's error, and its event stays queued. A batch
// that failed halfway may be added twice; the aggregator counts an event id
// once, so that is harmless.
type Recorder struct {
	rdb redis.UniversalClient
	cfg RecorderConfig
	log zerolog.Logger
	m   *metrics.Metrics

	mu      sync.Mutex
	queue   []*flushBatch // oldest first; the last one is open while not sealed
	pending int           // events in queue
	stopped bool

	// ctx bounds every write; it ends StopTimeout after Stop, so a write
	// that hangs on an unreachable Redis cannot hold Stop up.
	ctx    context.Context
	cancel context.CancelFunc

	wake      chan struct{}
	stop      chan struct{}
	done      chan struct{}
	startOnce sync.Once
	stopOnce  sync.Once
}

// flushBatch is events that are written together and whose Record calls
// wake together.
type flushBatch struct {
	events [][]byte
	sealed bool          // taken by the flusher: nothing more is added
	done   chan struct{} // closed once written (err nil) or given up (err set)
	err    error
}

// NewRecorder returns a recorder writing to rdb. Call Start before Record
// returns anything but a context error.
func NewRecorder(rdb redis.UniversalClient, cfg RecorderConfig) *Recorder {
	if cfg.Capacity <= 0 {
		cfg.Capacity = 200_000
	}
	if cfg.MaxPipeline <= 0 {
		cfg.MaxPipeline = 2_000
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Recorder{
		rdb: rdb, cfg: cfg, log: cfg.Log, m: cfg.Metrics, ctx: ctx, cancel: cancel,
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
}

// Start starts the flusher. ctx is not kept: Stop ends the recorder.
func (r *Recorder) Start(ctx context.Context) error {
	if r.cfg.Stream == "" {
		return errors.New("usage recorder: no stream configured")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	started := false
	r.startOnce.Do(func() { started = true; go r.run() })
	if !started {
		return errors.New("usage recorder: already started or stopped")
	}
	return nil
}

// Record queues ev and returns once it is in Redis, or when ctx ends (the
// event then stays queued and is written later). An empty ev.ID is filled
// with a new UUID.
func (r *Recorder) Record(ctx context.Context, ev Event) error {
	if ev.ID == "" {
		ev.ID = uuid.NewString()
	}
	data := ev.AppendJSON(make([]byte, 0, 384))

	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return ErrStopped
	}
	if r.pending >= r.cfg.Capacity {
		r.mu.Unlock()
		r.log.Error().Str("event_id", ev.ID).Str("key_id", ev.KeyID).Int("buffered", r.cfg.Capacity).
			Msg("usage event dropped: buffer full")
		r.lost("buffer_full", 1)
		return ErrBufferFull
	}
	var b *flushBatch
	if n := len(r.queue); n > 0 && !r.queue[n-1].sealed && len(r.queue[n-1].events) < r.cfg.MaxPipeline {
		b = r.queue[n-1]
	} else {
		b = &flushBatch{done: make(chan struct{})}
		r.queue = append(r.queue, b)
	}
	b.events = append(b.events, data)
	r.pending++
	if r.m != nil {
		r.m.UsagePending.Inc()
	}
	r.mu.Unlock()

	select {
	case r.wake <- struct{}{}:
	default:
	}
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Pending is the number of events not yet in Redis.
func (r *Recorder) Pending() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pending
}

// Stop stops taking events and writes what is queued, trying for up to
// StopTimeout; what is still unwritten then is reported in the log and its
// Record calls get ErrStopped. It is idempotent and blocks until done.
func (r *Recorder) Stop() {
	r.stopOnce.Do(func() {
		r.mu.Lock()
		r.stopped = true
		r.mu.Unlock()
		close(r.stop)
		giveUp := time.AfterFunc(r.cfg.StopTimeout, r.cancel)
		neverStarted := false
		r.startOnce.Do(func() { neverStarted = true })
		if neverStarted {
			r.drain()
			close(r.done)
		}
		<-r.done
		giveUp.Stop()
		r.cancel()
	})
	<-r.done
}

func (r *Recorder) run() {
	defer close(r.done)
	backoff := time.Duration(0)
	for {
		select {
		case <-r.wake:
		case <-r.stop:
			r.drain()
			return
		}
		for {
			err := r.flushOnce(r.ctx, 5*time.Second)
			if err == nil {
				backoff = 0
				break
			}
			backoff = nextBackoff(backoff)
			r.log.Warn().Err(err).Int("buffered", r.Pending()).Dur("retry_in", backoff).
				Msg("usage events not written to redis; keeping them and retrying")
			select {
			case <-time.After(backoff):
			case <-r.stop:
				r.drain()
				return
			}
		}
	}
}

func nextBackoff(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return 50 * time.Millisecond
	case d >= 2*time.Second:
		return 5 * time.Second
	default:
		return d * 2
	}
}

// flushOnce writes the queue until it is empty (nil) or a write fails.
func (r *Recorder) flushOnce(ctx context.Context, timeout time.Duration) error {
	for {
		r.mu.Lock()
		var take []*flushBatch
		n := 0
		for _, b := range r.queue {
			if n > 0 && n+len(b.events) > r.cfg.MaxPipeline {
				break
			}
			b.sealed = true
			take = append(take, b)
			n += len(b.events)
		}
		r.mu.Unlock()
		if n == 0 {
			return nil
		}
		if err := r.write(ctx, take, timeout); err != nil {
			r.count("error", 1)
			return err
		}
		r.mu.Lock()
		r.queue = r.queue[len(take):]
		r.pending -= n
		r.mu.Unlock()
		if r.m != nil {
			r.m.UsagePending.Sub(float64(n))
		}
		r.count("ok", 1)
		for _, b := range take {
			close(b.done)
		}
	}
}

func (r *Recorder) write(ctx context.Context, take []*flushBatch, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pipe := r.rdb.Pipeline()
	for _, b := range take {
		for _, data := range b.events {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: r.cfg.Stream, ID: "*", Values: []any{StreamField, data}})
		}
	}
	_, err := pipe.Exec(ctx)
	return err
}

// drain writes what is queued after Stop, trying until StopTimeout.
func (r *Recorder) drain() {
	backoff := time.Duration(0)
	for r.ctx.Err() == nil {
		if err := r.flushOnce(r.ctx, 5*time.Second); err == nil {
			return
		}
		backoff = nextBackoff(backoff)
		select {
		case <-time.After(backoff):
		case <-r.ctx.Done():
		}
	}
	r.mu.Lock()
	lost := r.pending
	queue := r.queue
	r.queue, r.pending = nil, 0
	r.mu.Unlock()
	if lost > 0 {
		r.log.Error().Int("events", lost).Msg("usage events could not be written to redis before shutdown; they are lost")
		r.lost("shutdown", lost)
		if r.m != nil {
			r.m.UsagePending.Sub(float64(lost))
		}
	}
	for _, b := range queue {
		b.err = ErrStopped
		close(b.done)
	}
}

func (r *Recorder) count(outcome string, n int) {
	if r.m != nil {
		r.m.UsageFlushes.WithLabelValues(outcome).Add(float64(n))
	}
}

func (r *Recorder) lost(reason string, n int) {
	if r.m != nil {
		r.m.UsageLost.WithLabelValues(reason).Add(float64(n))
	}
}
