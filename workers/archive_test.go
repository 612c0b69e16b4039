package workers_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/workers"
)

// loginCreds renews by logging in again.
type loginCreds struct {
	c      *vs.Client
	ck     vs.Cookie
	renews int
}

func (l *loginCreds) Cookie(context.Context) (vs.Cookie, error) { return l.ck, nil }
func (l *loginCreds) Renew(ctx context.Context, stale vs.Cookie) (vs.Cookie, error) {
	l.renews++
	v, err := l.c.Login(ctx, "user@example.com", "secret")
	l.ck = vs.Cookie{Value: v, Gen: stale.Gen + 1}
	return l.ck, err
}

func TestArchiveQueueAndHandler(t *testing.T) {
	env := testredis.New(t)
	f := fakevs.New(fakevs.Options{})
	up := httptest.NewServer(f)
	defer up.Close()
	c := vs.New(vs.Options{BaseURL: up.URL})
	v, err := c.Login(context.Background(), "user@example.com", "secret")
	if err != nil {
		t.Fatal(err)
	}
	creds := &loginCreds{c: c, ck: vs.Cookie{Value: v, Gen: 1}}
	id1, _ := c.NewChat(context.Background(), v, vs.CornerText)
	id2, _ := c.NewChat(context.Background(), v, vs.CornerText)

	ks := keyspace.New(env.Prefix)
	q := workers.NewArchiveQueue(env.Client, ks)
	if err := q.Enqueue(context.Background(), vs.CornerText, id1, id2); err != nil {
		t.Fatal(err)
	}
	msgs, err := env.Client.XRange(context.Background(), ks.Stream(workers.ArchiveStream), "-", "+").Result()
	if err != nil || len(msgs) != 2 || msgs[0].Values["chat"] != id1 || msgs[1].Values["corner"] != "text" {
		t.Fatalf("stream entries %+v %v", msgs, err)
	}

	h := workers.ArchiveHandler(c, creds)
	if err := h(context.Background(), workers.Entry{ID: msgs[0].ID, Values: map[string]string{"chat": id1, "corner": "text"}}); err != nil {
		t.Fatal(err)
	}
	// An expired cookie is renewed once and the archive goes through.
	f.ExpireSessions()
	if err := h(context.Background(), workers.Entry{ID: msgs[1].ID, Values: map[string]string{"chat": id2}}); err != nil {
		t.Fatal(err)
	}
	if creds.renews != 1 || len(f.Unarchived()) != 0 {
		t.Fatalf("renews %d, unarchived %v", creds.renews, f.Unarchived())
	}
	// Archiving again (a redelivery) is harmless; an unknown chat counts as gone.
	if err := h(context.Background(), workers.Entry{ID: "x", Values: map[string]string{"chat": id1}}); err != nil {
		t.Fatal(err)
	}
	if err := h(context.Background(), workers.Entry{ID: "y", Values: map[string]string{"chat": "cmnosuchchat0000000000000"}}); err != nil {
		t.Fatal(err)
	}
	// An entry without a chat id is a permanent failure.
	if err := h(context.Background(), workers.Entry{ID: "z", Values: map[string]string{}}); !errors.Is(err, workers.ErrPermanent) {
		t.Fatalf("entry without chat: %v", err)
	}
}
