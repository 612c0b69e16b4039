package vs

import (
	"context"
	"time"
)

// Cookie is a session cookie and its generation: each login makes a new
// generation, so callers that saw a cookie fail can tell whether someone
// has already replaced it.
type Cookie struct {
	Value string
	Gen   int64
}

// Credentials hands out the shared session cookie (package session).
type Credentials interface {
	// Cookie returns the current cookie, waiting (within ctx) for a login in
	// progress. It fails with a KindNotReady *Error when there is none.
	Cookie(ctx context.Context) (Cookie, error)
	// Renew reports that stale was rejected (401/403) and returns a newer
	// cookie: the one another caller already got, or one from a new login
	// (one login at a time across all replicas).
	Renew(ctx context.Context, stale Cookie) (Cookie, error)
}

// Caller opens chats with the retries the relay allows before anything has
// reached its client: one re-login when the cookie is rejected, and a new
// chat after a 5xx or a broken connection.
type Caller struct {
	Client   *Client
	Creds    Credentials
	Attempts int           // tries in all; default 3
	Backoff  time.Duration // wait before retry n is n×Backoff; default 250ms
}

// Open creates a chat in req.Corner, sends req (ChatID is filled in) and
// returns the stream of the answer. created is called with every chat id
// made on the way, including those of failed attempts, so each can be
// archived.
func (c *Caller) Open(ctx context.Context, req ChatRequest, created func(chatID string)) (*Stream, error) {
	attempts := c.Attempts
	if attempts <= 0 {
		attempts = 3
	}
	backoff := c.Backoff
	if backoff <= 0 {
		backoff = 250 * time.Millisecond
	}
	ck, err := c.Creds.Cookie(ctx)
	if err != nil {
		return nil, err
	}
	renewed := false
	var last error
	for attempt := 1; attempt <= attempts; {
		st, err := c.once(ctx, ck.Value, req, created)
		if err == nil {
			return st, nil
		}
		last = err
		if ctx.Err() != nil {
			return nil, err
		}
		switch KindOf(err) {
		case KindAuth:
			if renewed {
				return nil, err
			}
			renewed = true
			if ck, err = c.Creds.Renew(ctx, ck); err != nil {
				return nil, err
			}
			continue // a re-login does not use up an attempt
		case KindServer:
			attempt++
			if attempt > attempts {
				return nil, last
			}
			t := time.NewTimer(time.Duration(attempt-1) * backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, last
			case <-t.C:
			}
		default:
			return nil, err
		}
	}
	return nil, last
}

func (c *Caller) once(ctx context.Context, cookie string, req ChatRequest, created func(string)) (*Stream, error) {
	id, err := c.Client.NewChat(ctx, cookie, req.Corner)
	if err != nil {
		return nil, err
	}
	if created != nil {
		created(id)
	}
	req.ChatID = id
	return c.Client.Chat(ctx, cookie, req)
}
