package workers

import (
	"context"
	"fmt"
	"strconv"
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

// ArchiveQueue enqueues archive jobs. The ingress enqueues one for every
// chat it created, once the request is over, so archiving never delays an
// answer and survives a restart of the process that made the chat.
type ArchiveQueue struct {
	rdb    redis.UniversalClient
	stream string
}

// NewArchiveQueue returns a queue on keyspace.Stream(ArchiveStream).
func NewArchiveQueue(rdb redis.UniversalClient, keys keyspace.Keyspace) *ArchiveQueue {
	return &ArchiveQueue{rdb: rdb, stream: keys.Stream(ArchiveStream)}
}

// Enqueue adds one job per chat id, in one round trip.
func (q *ArchiveQueue) Enqueue(ctx context.Context, corner string, chatIDs ...string) error {
	if len(chatIDs) == 0 {
		return nil
	}
	at := strconv.FormatInt(time.Now().UnixMilli(), 10)
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, id := range chatIDs {
			p.XAdd(ctx, &redis.XAddArgs{Stream: q.stream, Values: []string{"chat", id, "corner", corner, "at", at}})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("enqueue archive jobs: %w", err)
	}
	return nil
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
