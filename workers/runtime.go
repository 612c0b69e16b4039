// Package workers runs in-process worker pools that consume Redis streams
// (image jobs, usage events, chat clean-up), and holds the job handlers that
// are not usage accounting.
//
// A Pool reads one stream through a consumer group. Its parts:
//
//   - one fetcher that reads only as many entries as there are free handler
//     slots (XREADGROUP COUNT, short BLOCK) and, every few hundred
//     milliseconds, takes over entries that another consumer left idle past
//     the visibility timeout (XAUTOCLAIM);
//   - Concurrency handler goroutines;
//   - one acker that batches the XACKs of finished entries;
//   - one keeper that re-claims entries whose handlers run long, so nobody
//     takes a live job away, and notices when one was taken anyway;
//   - one trimmer that drops entries older than TrimAge that every group has
//     acknowledged (XTRIM MINID ~).
//
// Delivery counts live in Redis (the group's pending entries list), so
// MaxDeliveries holds across processes and crashes.
//
// Choosing timeouts: VisibilityTimeout is how long a crashed process's entry
// waits before another process takes it over; it need not cover a job's
// duration, because the keeper renews running entries every third of it.
// HandlerTimeout bounds one handler call; a call that runs past it fails (and
// is retried) like any other error. Long jobs (image generation) keep the
// default VisibilityTimeout of 30s and set HandlerTimeout to the job's own
// upper bound, e.g. 5 minutes.
package workers

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/metrics"
)

// Entry is one stream entry handed to a handler.
type Entry struct {
	ID         string            // stream entry id, e.g. "1700000000000-0"
	Values     map[string]string // the entry's fields
	Deliveries int64             // 1 on first delivery, more after retries and reclaims
}

// Handler handles one entry. Returning nil acknowledges it; an error retries
// it with backoff, and after MaxDeliveries it goes to the dead-letter stream.
// Handlers must be idempotent (by entry id or an id in the entry): delivery is
// at least once.
type Handler func(ctx context.Context, e Entry) error

// BatchHandler handles several entries at once (e.g. usage aggregation, which
// folds a batch into one Redis script). nil acknowledges all of them; on an
// error the runtime retries the entries one by one, so one bad entry is
// dead-lettered alone.
type BatchHandler func(ctx context.Context, es []Entry) error

// ErrPermanent wrapped in a handler's error sends the entry straight to the
// dead-letter stream without further retries (e.g. an entry that does not
// parse).
var ErrPermanent = errors.New("permanent failure")

// Fields a dead-letter entry carries besides the original entry's fields.
const (
	DeadID         = "dead.id"         // the entry's id in its stream
	DeadStream     = "dead.stream"     // the stream it came from
	DeadDeliveries = "dead.deliveries" // how often it was delivered
	DeadError      = "dead.error"      // the last error
)

// Config is one pool's configuration. Zero values take the defaults named
// in each field's comment.
type Config struct {
	Stream   string // full key of the stream (keyspace.Stream)
	Group    string // consumer group; created idempotently from the stream's start
	Consumer string // this process's consumer name (unique per process)

	DeadLetter string // full key of the dead-letter stream (keyspace.DeadLetter)

	Handler      Handler      // exactly one of Handler and BatchHandler
	BatchHandler BatchHandler // with BatchSize entries at most per call
	BatchSize    int          // default 100
	// BatchWait, in batch mode, is the pause after a read that found less
	// than a full batch, so entries gather into larger batches (the usage
	// aggregator's cost is per batch). It adds at most that much delay. 0: none.
	BatchWait time.Duration

	Concurrency       int                               // handlers running at once; default 8
	Block             time.Duration                     // XREADGROUP BLOCK; default 500ms (keeps Stop prompt)
	VisibilityTimeout time.Duration                     // idle time after which another consumer reclaims an entry; default 30s
	MaxDeliveries     int64                             // deliveries before dead-lettering; default 5
	Backoff           func(attempt int64) time.Duration // delay before retry attempt n; default exponential from 100ms, capped at 10s
	TrimAge           time.Duration                     // entries older than this are trimmed (MINID); default 24h; must exceed VisibilityTimeout by far
	HandlerTimeout    time.Duration                     // context deadline per handler call; default VisibilityTimeout

	// StopGrace is how long Stop lets running handlers finish before it
	// cancels their contexts and hands their entries back; default 5s.
	StopGrace time.Duration
	// Name is the short stream name for metric labels and logs (e.g.
	// "images"); default: the part of Stream after its last ':'.
	Name string

	Log     zerolog.Logger
	Metrics *metrics.Metrics // may be nil
}

// cancelWait is how long Stop waits, after cancelling the handlers that
// outlived the grace period, for them to return and hand their entries back
// themselves, before it hands back the entries of handlers that ignore their
// context.
const cancelWait = time.Second

// Stats counts what a pool did since it started.
type Stats struct {
	OK         int64 // entries handled and acknowledged
	Retried    int64 // failed attempts that were retried
	Dead       int64 // entries moved to the dead-letter stream
	Reclaimed  int64 // entries taken over from other (stalled or stopped) consumers
	HandedBack int64 // entries given back on Stop for another consumer to take at once
	Lost       int64 // entries another consumer took while this pool still held them
	InFlight   int   // entries held right now (running, in backoff or waiting for a slot)
}

// Pool consumes one stream with a consumer group.
type Pool struct {
	rdb redis.UniversalClient
	cfg Config
	log zerolog.Logger

	perSlot      int           // entries per handler call: 1, or BatchSize
	reclaimEvery time.Duration // how often the fetcher looks for idle entries
	keepEvery    time.Duration // how often the keeper runs
	trimEvery    time.Duration // how often the trimmer runs

	free  chan struct{}  // one token per idle handler slot
	work  chan []*flight // fetcher -> handlers
	acks  chan string    // handlers -> acker
	state sync.Mutex     // guards fl and the fields of flights marked so
	fl    map[string]*flight
	// renewing serialises renewScript calls (see renew).
	renewing sync.Mutex
	phase    atomic.Int32 // 0 new, 1 running, 2 stopping, 3 stopped

	stopping   chan struct{}      // closed when Stop begins
	handlerCtx context.Context    // parent of every handler call
	hardStop   context.CancelFunc // cancels handlerCtx when the grace period is over
	stopOnce   sync.Once

	fetcherDone chan struct{}
	workers     sync.WaitGroup
	workersDone chan struct{}
	ackStop     chan struct{}
	ackDone     chan struct{}
	bgStop      chan struct{} // keeper and trimmer
	bg          sync.WaitGroup

	stats struct {
		ok, retried, dead, reclaimed, handedBack, lost atomic.Int64
	}
	outcome struct {
		ok, retry, dead, reclaimed, handedBack prometheus.Counter
	}
}

// flight is one entry this pool holds, from fetch until it is acknowledged,
// dead-lettered, handed back or lost.
type flight struct {
	e       Entry
	renewed time.Time // when the entry's idle clock was last reset in Redis

	// guarded by Pool.state
	cancel     context.CancelFunc // cancels the running handler call, if any
	failed     bool               // the current delivery has failed (in backoff)
	handedBack bool
	lost       bool
}

// New validates cfg and returns a pool that is not yet started.
func New(rdb redis.UniversalClient, cfg Config) (*Pool, error) {
	if rdb == nil {
		return nil, errors.New("workers: nil redis client")
	}
	if cfg.Stream == "" || cfg.Group == "" || cfg.Consumer == "" || cfg.DeadLetter == "" {
		return nil, errors.New("workers: Stream, Group, Consumer and DeadLetter are required")
	}
	if cfg.DeadLetter == cfg.Stream {
		return nil, errors.New("workers: DeadLetter must differ from Stream")
	}
	if (cfg.Handler == nil) == (cfg.BatchHandler == nil) {
		return nil, errors.New("workers: set exactly one of Handler and BatchHandler")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = 8
	}
	if cfg.Block <= 0 {
		cfg.Block = 500 * time.Millisecond
	}
	if cfg.Block < time.Millisecond {
		cfg.Block = time.Millisecond // BLOCK is in milliseconds; 0 would block forever
	}
	if cfg.VisibilityTimeout <= 0 {
		cfg.VisibilityTimeout = 30 * time.Second
	}
	if cfg.VisibilityTimeout < 100*time.Millisecond {
		return nil, fmt.Errorf("workers: VisibilityTimeout %s is too short (at least 100ms)", cfg.VisibilityTimeout)
	}
	if cfg.MaxDeliveries <= 0 {
		cfg.MaxDeliveries = 5
	}
	if cfg.Backoff == nil {
		cfg.Backoff = DefaultBackoff
	}
	if cfg.TrimAge <= 0 {
		cfg.TrimAge = 24 * time.Hour
	}
	if cfg.TrimAge < 2*cfg.VisibilityTimeout {
		return nil, fmt.Errorf("workers: TrimAge %s must be well above VisibilityTimeout %s", cfg.TrimAge, cfg.VisibilityTimeout)
	}
	if cfg.HandlerTimeout <= 0 {
		cfg.HandlerTimeout = cfg.VisibilityTimeout
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 5 * time.Second
	}
	if cfg.Name == "" {
		// "relay:stream:{usage}" is named "usage".
		cfg.Name = strings.Trim(cfg.Stream[strings.LastIndexByte(cfg.Stream, ':')+1:], "{}")
	}

	p := &Pool{
		rdb:          rdb,
		cfg:          cfg,
		log:          cfg.Log.With().Str("component", "workers").Str("stream", cfg.Name).Str("consumer", cfg.Consumer).Logger(),
		perSlot:      1,
		reclaimEvery: clamp(cfg.VisibilityTimeout/4, 100*time.Millisecond, time.Second),
		keepEvery:    cfg.VisibilityTimeout / 6,
		trimEvery:    clamp(cfg.TrimAge/16, time.Second, time.Minute),
		free:         make(chan struct{}, cfg.Concurrency),
		work:         make(chan []*flight, cfg.Concurrency),
		fl:           make(map[string]*flight),
		stopping:     make(chan struct{}),
		fetcherDone:  make(chan struct{}),
		workersDone:  make(chan struct{}),
		ackStop:      make(chan struct{}),
		ackDone:      make(chan struct{}),
		bgStop:       make(chan struct{}),
	}
	if cfg.BatchHandler != nil {
		p.perSlot = cfg.BatchSize
	}
	p.acks = make(chan string, max(1024, 2*cfg.Concurrency*p.perSlot))
	p.handlerCtx, p.hardStop = context.WithCancel(context.Background())
	for range cfg.Concurrency {
		p.free <- struct{}{}
	}
	if m := cfg.Metrics; m != nil {
		p.outcome.ok = m.WorkerOutcomes.WithLabelValues(cfg.Name, "ok")
		p.outcome.retry = m.WorkerOutcomes.WithLabelValues(cfg.Name, "retry")
		p.outcome.dead = m.WorkerOutcomes.WithLabelValues(cfg.Name, "dead")
		p.outcome.reclaimed = m.WorkerOutcomes.WithLabelValues(cfg.Name, "reclaimed")
		p.outcome.handedBack = m.WorkerOutcomes.WithLabelValues(cfg.Name, "handed_back")
	}
	return p, nil
}

// DefaultBackoff waits 100ms before the second delivery and doubles per
// attempt up to 10s, with ±20% jitter so retries of many entries spread out.
func DefaultBackoff(attempt int64) time.Duration {
	d := 10 * time.Second
	if attempt < 1 {
		attempt = 1
	}
	if attempt <= 7 {
		d = min(d, 100*time.Millisecond<<(attempt-1))
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// Start creates the group if needed and starts fetching in the background.
// ctx bounds only the start itself; the pool runs until Stop. A Redis that
// does not answer yet is not an error (the pool waits for it); one that
// refuses the group (e.g. the key holds no stream) is.
func (p *Pool) Start(ctx context.Context) error {
	if !p.phase.CompareAndSwap(0, 1) {
		return errors.New("workers: pool already started")
	}
	if err := p.createGroup(ctx); err != nil {
		var reply redis.Error
		if errors.As(err, &reply) {
			// Redis answered and refused (e.g. the key is not a stream).
			p.phase.Store(0)
			return fmt.Errorf("workers: create group %s on %s: %w", p.cfg.Group, p.cfg.Stream, err)
		}
		// Redis is not reachable yet: start degraded; the fetcher retries
		// and creates the group once Redis answers.
		p.log.Warn().Err(err).Msg("redis not reachable; the pool starts and waits for it")
	}
	p.workers.Add(p.cfg.Concurrency)
	for range p.cfg.Concurrency {
		go p.handle()
	}
	go func() { p.workers.Wait(); close(p.workersDone) }()
	go p.fetch()
	go p.ackLoop()
	p.bg.Add(2)
	go p.keep()
	go p.trimLoop()
	p.log.Debug().Int("concurrency", p.cfg.Concurrency).Msg("worker pool started")
	return nil
}

// Stop stops fetching, lets running handlers finish for a grace period, and
// hands back what is unfinished so another consumer takes it at once. It is
// idempotent and blocks until the pool has stopped.
func (p *Pool) Stop() {
	p.stopOnce.Do(func() {
		if p.phase.Swap(2) == 0 {
			p.phase.Store(3)
			p.hardStop()
			return
		}
		close(p.stopping)
		<-p.fetcherDone // at most one BLOCK

		grace := time.NewTimer(p.cfg.StopGrace)
		select {
		case <-p.workersDone:
			grace.Stop()
		case <-grace.C:
			// Cancel what still runs; handlers that return hand their entries
			// back themselves. Entries of handlers that ignore their context
			// are handed back from here, and the pool stops without them.
			p.hardStop()
			select {
			case <-p.workersDone:
			case <-time.After(cancelWait):
				p.handBackAll()
				select {
				case <-p.workersDone:
				case <-time.After(p.cfg.StopGrace):
					p.log.Error().Msg("handlers ignore their cancelled context; their entries were handed back, stopping without them")
				}
			}
		}
		p.hardStop()
		close(p.ackStop)
		<-p.ackDone
		close(p.bgStop)
		p.bg.Wait()
		p.phase.Store(3)
		s := p.Stats()
		p.log.Debug().Int64("ok", s.OK).Int64("dead", s.Dead).Int64("handed_back", s.HandedBack).Msg("worker pool stopped")
	})
}

// Stats reports what the pool did so far.
func (p *Pool) Stats() Stats {
	p.state.Lock()
	n := len(p.fl)
	p.state.Unlock()
	return Stats{
		OK:         p.stats.ok.Load(),
		Retried:    p.stats.retried.Load(),
		Dead:       p.stats.dead.Load(),
		Reclaimed:  p.stats.reclaimed.Load(),
		HandedBack: p.stats.handedBack.Load(),
		Lost:       p.stats.lost.Load(),
		InFlight:   n,
	}
}

// Publish appends an entry to stream (XADD with an automatic id) and returns
// its id. Trimming is the pools' job (by age), never the producer's.
func Publish(ctx context.Context, rdb redis.Cmdable, stream string, values map[string]string) (string, error) {
	args := make([]any, 0, 2*len(values))
	for k, v := range values {
		args = append(args, k, v)
	}
	return rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: args}).Result()
}

// ConsumerName returns a consumer name unique to this process: host name,
// process id and a random suffix (a restarted container may reuse the pid).
func ConsumerName() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "relay"
	}
	return fmt.Sprintf("%s-%d-%04x", host, os.Getpid(), rand.IntN(1<<16))
}

func count(c prometheus.Counter, n int) {
	if c != nil {
		c.Add(float64(n))
	}
}

func clamp(d, lo, hi time.Duration) time.Duration {
	return max(lo, min(d, hi))
}

// sleep waits d, or less when the pool starts stopping; it reports whether
// the full time passed.
func (p *Pool) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stopping:
		return false
	}
}

// Watched names the pool's stream and group for the stream metrics
// (metrics.WatchStreams).
func (p *Pool) Watched() metrics.StreamGroup {
	return metrics.StreamGroup{Label: p.cfg.Name, Stream: p.cfg.Stream, Group: p.cfg.Group}
}
