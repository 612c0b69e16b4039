package accounts

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
)

func TestMain(m *testing.M) { testredis.Main(m) }

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type rig struct {
	env   *testredis.Env
	keys  keyspace.Keyspace
	box   *secretbox.Box
	clock *clock
	store *Store
	sched *Scheduler
}

var policy = Policy{StickyTTL: time.Hour, MaxPause: 30 * time.Minute, OverloadPause: time.Minute,
	ErrorPause: 30 * time.Second, RateLimitDefault: time.Minute}

func newRig(t *testing.T) *rig {
	env := testredis.New(t)
	box, err := secretbox.New(strings.Repeat("k", 32))
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{env: env, keys: keyspace.New(env.Prefix), box: box, clock: &clock{t: time.Now()}}
	r.store = NewStore(env.Client, r.keys, box, time.Second, r.clock.Now)
	r.sched = NewScheduler(r.store, env.Client, r.keys, policy, zerolog.Nop())
	return r
}

// replica is another relay process over the same Redis.
func (r *rig) replica() *Scheduler {
	st := NewStore(r.env.Client, r.keys, r.box, time.Second, r.clock.Now)
	return NewScheduler(st, r.env.Client, r.keys, policy, zerolog.Nop())
}

func (r *rig) console(t *testing.T, name string, prio int, models ...string) Account {
	t.Helper()
	a, err := r.store.Create(context.Background(), Account{Name: name, Kind: KindClaudeConsole, Priority: prio,
		Enabled: true, Schedulable: true, Models: models}, Credentials{APIKey: "sk-" + name})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (r *rig) pick(t *testing.T, req Request) *Pick {
	t.Helper()
	if req.Service == "" {
		req.Service = "claude"
	}
	if req.Model == "" {
		req.Model = "claude-sonnet-4-5"
	}
	p, err := r.sched.Pick(context.Background(), req)
	if err != nil {
		t.Fatalf("pick: %v", err)
	}
	return p
}

func (r *rig) noAccount(t *testing.T, req Request) *NoAccountError {
	t.Helper()
	if req.Service == "" {
		req.Service = "claude"
	}
	if req.Model == "" {
		req.Model = "claude-sonnet-4-5"
	}
	_, err := r.sched.Pick(context.Background(), req)
	var na *NoAccountError
	if !errors.As(err, &na) {
		t.Fatalf("want NoAccountError, got %v", err)
	}
	return na
}

func TestCredentialsAreSealedAndBoundToTheAccount(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	a := r.console(t, "one", 50)
	b := r.console(t, "two", 50)
	raw, err := r.env.Client.HGetAll(ctx, r.keys.Account(a.ID)).Result()
	if err != nil {
		t.Fatal(err)
	}
	for f, v := range raw {
		if strings.Contains(v, "sk-one") {
			t.Fatalf("field %s holds the API key in clear", f)
		}
	}
	// A sealed value moved to another account does not open.
	if err := r.env.Client.HSet(ctx, r.keys.Account(b.ID), fSecret, raw[fSecret]).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.store.Credentials(ctx, b.ID); !errors.Is(err, secretbox.ErrOpen) {
		t.Fatalf("moved credentials opened: %v", err)
	}
	_, c, err := r.store.Credentials(ctx, a.ID)
	if err != nil || c.APIKey != "sk-one" {
		t.Fatalf("credentials %v %+v", err, c)
	}
}

func TestValidation(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	for name, tc := range map[string]struct {
		a Account
		c Credentials
	}{
		"no name":         {Account{Kind: KindClaudeConsole}, Credentials{APIKey: "k"}},
		"bad kind":        {Account{Name: "x", Kind: "claude-web"}, Credentials{APIKey: "k"}},
		"console no key":  {Account{Name: "x", Kind: KindClaudeConsole}, Credentials{}},
		"oauth no token":  {Account{Name: "x", Kind: KindClaudeOAuth}, Credentials{APIKey: "k"}},
		"bad base url":    {Account{Name: "x", Kind: KindClaudeConsole, BaseURL: "ftp://x"}, Credentials{APIKey: "k"}},
		"bad proxy":       {Account{Name: "x", Kind: KindClaudeConsole}, Credentials{APIKey: "k", Proxy: "gopher://h:1"}},
		"priority range":  {Account{Name: "x", Kind: KindClaudeConsole, Priority: 101}, Credentials{APIKey: "k"}},
		"empty model ent": {Account{Name: "x", Kind: KindClaudeConsole, Models: []string{" "}}, Credentials{APIKey: "k"}},
	} {
		var inv *InvalidError
		if _, err := r.store.Create(ctx, tc.a, tc.c); !errors.As(err, &inv) {
			t.Errorf("%s: %v", name, err)
		}
	}
	a, err := r.store.Create(ctx, Account{Name: "p", Kind: KindClaudeConsole, Enabled: true, Schedulable: true},
		Credentials{APIKey: "k", Proxy: "socks5://user:secret@127.0.0.1:1080"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(a.Proxy, "secret") || a.Priority != 50 {
		t.Fatalf("proxy shown as %q, priority %d", a.Proxy, a.Priority)
	}
}

func TestPriorityThenLeastRecentlyUsed(t *testing.T) {
	r := newRig(t)
	hi1 := r.console(t, "hi1", 10)
	hi2 := r.console(t, "hi2", 10)
	r.console(t, "low", 90)
	seen := map[string]int{}
	for i := 0; i < 6; i++ {
		r.clock.Advance(time.Millisecond)
		seen[r.pick(t, Request{}).Account.ID]++
	}
	if seen[hi1.ID] != 3 || seen[hi2.ID] != 3 || len(seen) != 2 {
		t.Fatalf("picks %v", seen)
	}
	// A replica that loads from Redis sees the last-use times and continues
	// the rotation instead of starting over.
	other := r.replica()
	p1, _ := other.Pick(context.Background(), Request{Service: "claude", Model: "m"})
	r.clock.Advance(time.Millisecond)
	p2, _ := other.Pick(context.Background(), Request{Service: "claude", Model: "m"})
	if p1.Account.ID == p2.Account.ID {
		t.Fatalf("replica picked %s twice", p1.Account.Name)
	}
}

func TestStickySessionStaysWhileHealthy(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	r.console(t, "a", 50)
	r.console(t, "b", 50)
	first := r.pick(t, Request{Session: "conv-1"})
	for i := 0; i < 5; i++ {
		r.clock.Advance(time.Millisecond)
		if p := r.pick(t, Request{Session: "conv-1"}); p.Account.ID != first.Account.ID || !p.Sticky {
			t.Fatalf("conversation moved to %s (sticky %v)", p.Account.Name, p.Sticky)
		}
	}
	// Another replica keeps it there too.
	if p, _ := r.replica().Pick(ctx, Request{Service: "claude", Model: "m", Session: "conv-1"}); p.Account.ID != first.Account.ID {
		t.Fatalf("replica moved the conversation")
	}
	// When its account is rate-limited the conversation moves, and stays on
	// the new account.
	if _, err := r.sched.Failed(ctx, first.Account.ID, Failure{Status: http.StatusTooManyRequests, ResetAt: r.clock.Now().Add(5 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	moved := r.pick(t, Request{Session: "conv-1"})
	if moved.Account.ID == first.Account.ID || moved.Sticky {
		t.Fatalf("conversation stayed on a rate-limited account")
	}
	if p := r.pick(t, Request{Session: "conv-1"}); p.Account.ID != moved.Account.ID || !p.Sticky {
		t.Fatalf("conversation did not stick to its new account")
	}
}

func TestStatesExpireAndReasonsAreClear(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	a := r.console(t, "a", 50)
	b := r.console(t, "b", 50)

	// A weekly reset is capped at MaxPause.
	if _, err := r.sched.Failed(ctx, a.ID, Failure{Status: 429, ResetAt: r.clock.Now().Add(7 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.sched.Failed(ctx, b.ID, Failure{Status: 429, ResetAt: r.clock.Now().Add(10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	na := r.noAccount(t, Request{})
	if na.Status() != http.StatusTooManyRequests || !strings.Contains(na.Error(), "All 2 Claude accounts") ||
		!strings.Contains(na.Error(), "rate-limited") || !na.RetryAt().Equal(r.clock.Now().Add(10*time.Minute).Truncate(time.Millisecond)) {
		t.Fatalf("%d %q %v", na.Status(), na.Error(), na.RetryAt())
	}
	got, _ := r.store.Get(ctx, a.ID)
	if until := got.State.RateLimitedUntil.Sub(r.clock.Now()); until > 30*time.Minute+time.Second || until < 29*time.Minute {
		t.Fatalf("weekly reset not capped: %v", until)
	}
	if got.Status(r.clock.Now()) != "rate_limited" || !strings.Contains(got.State.RateLimitReason, "429") {
		t.Fatalf("state %+v", got.State)
	}
	r.clock.Advance(11 * time.Minute)
	if p := r.pick(t, Request{}); p.Account.ID != b.ID {
		t.Fatalf("b did not come back after its reset")
	}
	r.clock.Advance(20 * time.Minute)
	r.pick(t, Request{}) // a is back too: the pool has both again
	if p := r.pick(t, Request{}); p.Account.ID != a.ID && p.Account.ID != b.ID {
		t.Fatal("unexpected account")
	}

	// 529 and 5xx pause briefly; 401 needs re-auth until credentials change.
	r.sched.Failed(ctx, a.ID, Failure{Status: 529})
	r.sched.Failed(ctx, b.ID, Failure{Status: http.StatusUnauthorized, Reason: "invalid x-api-key"})
	na = r.noAccount(t, Request{})
	if na.Status() != http.StatusServiceUnavailable || !strings.Contains(na.Error(), "1 paused after upstream errors") ||
		!strings.Contains(na.Error(), "1 need re-authorization") {
		t.Fatalf("%q", na.Error())
	}
	r.clock.Advance(2 * time.Minute)
	if p := r.pick(t, Request{}); p.Account.ID != a.ID {
		t.Fatal("a did not return after its overload pause")
	}
	r.sched.Failed(ctx, a.ID, Failure{Status: 403})
	na = r.noAccount(t, Request{})
	if !strings.Contains(na.Error(), "need re-authorization") || na.Status() != http.StatusServiceUnavailable {
		t.Fatalf("%q", na.Error())
	}
	if _, err := r.store.Update(ctx, b.ID, nil, &Credentials{APIKey: "sk-new"}); err != nil {
		t.Fatal(err)
	}
	if p := r.pick(t, Request{}); p.Account.ID != b.ID || p.Credentials.APIKey != "sk-new" {
		t.Fatal("b not back with its new key")
	}

	// None serves the model.
	for _, id := range []string{a.ID, b.ID} {
		if _, err := r.store.Update(ctx, id, func(a *Account) error { a.Models = []string{"claude-*"}; return nil }, nil); err != nil {
			t.Fatal(err)
		}
	}
	na = r.noAccount(t, Request{Model: "gpt-4o"})
	if na.Status() != http.StatusNotFound || !strings.Contains(na.Error(), "supports model gpt-4o") {
		t.Fatalf("%d %q", na.Status(), na.Error())
	}
	// No Gemini accounts at all.
	na = r.noAccount(t, Request{Service: "gemini", Model: "gemini-2.5-pro"})
	if !strings.Contains(na.Error(), "No Gemini accounts are configured") {
		t.Fatalf("%q", na.Error())
	}
}

func TestStateChangesReachOtherReplicas(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	a := r.console(t, "a", 10)
	r.console(t, "b", 20)
	other := r.replica()
	if p, _ := other.Pick(ctx, Request{Service: "claude", Model: "m"}); p.Account.ID != a.ID {
		t.Fatal("replica did not pick the preferred account")
	}
	r.sched.Failed(ctx, a.ID, Failure{Status: 529})
	r.clock.Advance(1100 * time.Millisecond) // past the sync interval
	if p, _ := other.Pick(ctx, Request{Service: "claude", Model: "m"}); p.Account.ID == a.ID {
		t.Fatal("replica still picks an overloaded account after its sync interval")
	}
}

func TestBoundKeyAndModelsAndAdminPause(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	opus := r.console(t, "opus-only", 10, "claude-opus-*")
	any := r.console(t, "any", 50)
	if p := r.pick(t, Request{Model: "claude-sonnet-4-5"}); p.Account.ID != any.ID {
		t.Fatal("model list ignored")
	}
	if p := r.pick(t, Request{Model: "claude-opus-4-5"}); p.Account.ID != opus.ID {
		t.Fatal("prefix model entry not matched")
	}
	if p := r.pick(t, Request{Bound: any.ID, Model: "claude-opus-4-5"}); p.Account.ID != any.ID || !p.Bound {
		t.Fatal("binding ignored")
	}
	r.sched.Failed(ctx, any.ID, Failure{Status: 429, ResetAt: r.clock.Now().Add(time.Minute)})
	na := r.noAccount(t, Request{Bound: any.ID})
	if !strings.Contains(na.Error(), "bound to this API key (any) is rate-limited until") {
		t.Fatalf("%q", na.Error())
	}
	if _, err := r.store.Update(ctx, opus.ID, func(a *Account) error { a.Schedulable = false; return nil }, nil); err != nil {
		t.Fatal(err)
	}
	na = r.noAccount(t, Request{Model: "claude-opus-4-5"})
	if !strings.Contains(na.Error(), "1 paused by an administrator") {
		t.Fatalf("%q", na.Error())
	}
	if err := r.store.ClearState(ctx, any.ID); err != nil {
		t.Fatal(err)
	}
	if p := r.pick(t, Request{Bound: any.ID}); p.Account.ID != any.ID {
		t.Fatal("reset did not clear the rate limit")
	}
	if err := r.store.Delete(ctx, any.ID); err != nil {
		t.Fatal(err)
	}
	if na := r.noAccount(t, Request{Bound: any.ID}); !strings.Contains(na.Error(), "no longer exists") {
		t.Fatalf("%q", na.Error())
	}
	if err := r.store.Delete(ctx, any.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	// Marking a deleted account does not bring it back.
	r.sched.Failed(ctx, any.ID, Failure{Status: 529})
	if n, _ := r.env.Client.Exists(ctx, r.keys.Account(any.ID)).Result(); n != 0 {
		t.Fatal("a state mark recreated a deleted account")
	}
}
