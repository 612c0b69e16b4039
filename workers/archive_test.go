package workers_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

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

// A chat is recorded as open when it is created. Ending its request moves it
// to the archive stream; a chat whose process died stays open until the
// sweeper queues it, once, however many replicas sweep.
func TestArchiveQueueOpenChatsAndOrphanSweep(t *testing.T) {
	env := testredis.New(t)
	ks := keyspace.New(env.Prefix)
	q := workers.NewArchiveQueue(env.Client, ks)
	ctx := context.Background()

	for _, id := range []string{"cm-finished", "cm-orphan"} {
		if err := q.Opened(ctx, vs.CornerText, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Enqueue(ctx, vs.CornerText, "cm-finished"); err != nil {
		t.Fatal(err)
	}
	open, _ := env.Client.ZRange(ctx, ks.OpenChats(), 0, -1).Result()
	if len(open) != 1 || open[0] != "text:cm-orphan" {
		t.Fatalf("open chats %v, want only the orphan", open)
	}

	// Young chats are left alone: their request may still be running.
	if n, err := q.SweepOrphans(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("sweep of young chats moved %d (%v)", n, err)
	}
	if n, err := q.SweepOrphans(ctx, 0); err != nil || n != 1 {
		t.Fatalf("sweep moved %d (%v), want the orphan", n, err)
	}
	if n, _ := q.SweepOrphans(ctx, 0); n != 0 {
		t.Fatalf("a second sweep moved %d: an orphan would be archived twice", n)
	}
	jobs, err := env.Client.XRange(ctx, ks.Stream(workers.ArchiveStream), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var chats []string
	for _, j := range jobs {
		chats = append(chats, j.Values["corner"].(string)+":"+j.Values["chat"].(string))
	}
	if len(chats) != 2 || chats[0] != "text:cm-finished" || chats[1] != "text:cm-orphan" {
		t.Fatalf("archive jobs %v", chats)
	}
	if n, _ := env.Client.ZCard(ctx, ks.OpenChats()).Result(); n != 0 {
		t.Fatalf("%d chats still open", n)
	}
}
