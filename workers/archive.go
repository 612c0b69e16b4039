package workers

import (
	"cmp"
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/vs"
)

// ArchiveStream names the stream of chat clean-up jobs: one entry per
// throw-away Vertical Studio chat, with fields chat (its id), corner, and at
// (enqueue time, unix ms).
const ArchiveStream = "archive"

// ArchiveQueue enqueues archive jobs. A chat is recorded as open when it is
// created (Opened), and moved to the archive stream once its request is over
// (Enqueue), so archiving never delays an answer. A chat whose process died
// before its request ended stays open; SweepOrphans queues it later.
type ArchiveQueue struct {
	rdb    redis.UniversalClient
	stream string
	open   string
	now    func() time.Time
}

// NewArchiveQueue returns a queue on keyspace.Stream(ArchiveStream).
func NewArchiveQueue(rdb redis.UniversalClient, keys keyspace.Keyspace) *ArchiveQueue {
	return &ArchiveQueue{rdb: rdb, stream: keys.Stream(ArchiveStream), open: keys.OpenChats(), now: time.Now}
}

// Opened records a chat that was just created upstream.
func (q *ArchiveQueue) Opened(ctx context.Context, corner, chatID string) error {
	err := q.rdb.ZAdd(ctx, q.open, redis.Z{Score: float64(q.now().UnixMilli()), Member: corner + ":" + chatID}).Err()
	if err != nil {
		return fmt.Errorf("record open chat: %w", err)
	}
	return nil
}

// Enqueue adds one job per chat id and takes the chats off the open set, in
// one atomic round trip.
func (q *ArchiveQueue) Enqueue(ctx context.Context, corner string, chatIDs ...string) error {
	if len(chatIDs) == 0 {
		return nil
	}
	at := strconv.FormatInt(q.now().UnixMilli(), 10)
	_, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		members := make([]any, 0, len(chatIDs))
		for _, id := range chatIDs {
			p.XAdd(ctx, &redis.XAddArgs{Stream: q.stream, Values: []string{"chat", id, "corner", corner, "at", at}})
			members = append(members, corner+":"+id)
		}
		p.ZRem(ctx, q.open, members...)
		return nil
	})
	if err != nil {
		return fmt.Errorf("enqueue archive jobs: %w", err)
	}
	return nil
}

// sweepScript moves open chats created before a cut-off to the archive
// stream. Each is moved once, whichever replica sweeps.
//
// KEYS[1] the open-chats set; KEYS[2] the archive stream
// ARGV[1] cut-off (unix ms); ARGV[2] most chats to move; ARGV[3] now (unix ms)
// Returns the number of chats moved.
var sweepScript = redis.NewScript(`
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(old) do
  local i = string.find(m, ':', 1, true)
  redis.call('XADD', KEYS[2], '*', 'chat', string.sub(m, i + 1), 'corner', string.sub(m, 1, i - 1), 'at', ARGV[3], 'orphan', '1')
  redis.call('ZREM', KEYS[1], m)
end
return #old
`)

// SweepOrphans queues for archiving the chats that have been open longer than
// maxAge: their request's process died before it could queue them.
func (q *ArchiveQueue) SweepOrphans(ctx context.Context, maxAge time.Duration) (int, error) {
	now := q.now()
	n, err := sweepScript.Run(ctx, q.rdb, []string{q.open, q.stream},
		now.Add(-maxAge).UnixMilli(), 500, now.UnixMilli()).Int()
	if err != nil {
		return 0, fmt.Errorf("sweep open chats: %w", err)
	}
	return n, nil
}

// ArchiveSweeper periodically queues orphaned chats (SweepOrphans). Every
// replica may run one: a chat is moved once.
type ArchiveSweeper struct {
	Queue  *ArchiveQueue
	Every  time.Duration // default 1 minute
	MaxAge time.Duration // default 1 hour: longer than any request holds its chat
	Log    zerolog.Logger

	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// Start starts sweeping in the background.
func (s *ArchiveSweeper) Start(context.Context) error {
	s.stop, s.done = make(chan struct{}), make(chan struct{})
	every, maxAge := cmp.Or(s.Every, time.Minute), cmp.Or(s.MaxAge, time.Hour)
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			n, err := s.Queue.SweepOrphans(ctx, maxAge)
			cancel()
			if err != nil {
				s.Log.Warn().Err(err).Msg("sweeping orphaned chats failed; trying again later")
			} else if n > 0 {
				s.Log.Info().Int("chats", n).Msg("queued orphaned chats for archiving")
			}
		}
	}()
	return nil
}

// Stop stops sweeping. It is idempotent.
func (s *ArchiveSweeper) Stop() {
	s.once.Do(func() {
		if s.stop != nil {
			close(s.stop)
			<-s.done
		}
	})
}

// ArchiveHandler archives the chat an entry names, with the shared session
// cookie; a rejected cookie is renewed once (single-flight) and the call
// retried. Archiving twice is harmless, so redelivery is safe. Other
// upstream failures are retried by the pool with backoff, except answers
// that will not change (4xx), which go to the dead-letter stream.
func ArchiveHandler(client *vs.Client, creds vs.Credentials) Handler {
	return func(ctx context.Context, e Entry) error {
		chat, corner := e.Values["chat"], e.Values["corner"]
		if chat == "" {
			return fmt.Errorf("archive entry %s has no chat id: %w", e.ID, ErrPermanent)
		}
		if corner == "" {
			corner = vs.CornerText
		}
		ck, err := creds.Cookie(ctx)
		if err != nil {
			return err
		}
		err = client.Archive(ctx, ck.Value, corner, chat)
		if vs.KindOf(err) == vs.KindAuth {
			if ck, err = creds.Renew(ctx, ck); err != nil {
				return err
			}
			err = client.Archive(ctx, ck.Value, corner, chat)
		}
		if vs.KindOf(err) == vs.KindClient {
			return fmt.Errorf("%w: %w", err, ErrPermanent)
		}
		return err
	}
}

// ArchivePoolConfig is the configuration of the pool that runs archive jobs.
func ArchivePoolConfig(keys keyspace.Keyspace, consumer string, h Handler, concurrency int, log zerolog.Logger, m *metrics.Metrics) Config {
	return Config{
		Stream:      keys.Stream(ArchiveStream),
		Group:       ArchiveStream,
		Consumer:    consumer,
		DeadLetter:  keys.DeadLetter(ArchiveStream),
		Handler:     h,
		Concurrency: concurrency,
		Log:         log,
		Metrics:     m,
	}
}
