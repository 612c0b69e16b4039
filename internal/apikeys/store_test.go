package apikeys

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/testredis"
)

func TestMain(m *testing.M) { testredis.Main(m) }

// clock is a settable clock shared by the stores of one test.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newStore(t testing.TB, env *testredis.Env, clk *clock) *Store {
	t.Helper()
	o := Options{CacheTTL: 500 * time.Millisecond}
	if clk != nil {
		o.Now = clk.Now
	}
	return NewStore(env.Client, keyspace.New(env.Prefix), o)
}

func TestKeyFormatAndStorage(t *testing.T) {
	env := testredis.New(t)
	s := newStore(t, env, nil)
	ctx := context.Background()
	raw, k, err := s.Create(ctx, Key{Name: "alice", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	if !WellFormed("cr_", raw) || len(raw) != 3+64 {
		t.Fatalf("key %q is not cr_ + 64 hex", raw)
	}
	if got := strings.Join(k.Permissions, ","); got != "openai,claude,gemini" {
		t.Fatalf("default permissions = %s", got)
	}
	// Nothing in Redis holds the plaintext key.
	keys, err := env.Client.Keys(ctx, env.Prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	secret := raw[3:]
	for _, name := range keys {
		if strings.Contains(name, secret) {
			t.Fatalf("key name %s holds the secret", name)
		}
		var dump string
		switch env.Client.Type(ctx, name).Val() {
		case "hash":
			dump = strings.Join(mapValues(env.Client.HGetAll(ctx, name).Val()), " ")
		case "string":
			dump = env.Client.Get(ctx, name).Val()
		}
		if strings.Contains(dump, secret) {
			t.Fatalf("%s holds the secret", name)
		}
	}
	// Two keys never collide.
	raw2, _, err := s.Create(ctx, Key{Name: "bob", Enabled: true})
	if err != nil || raw2 == raw {
		t.Fatalf("second key: %v", err)
	}
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestAuthenticate(t *testing.T) {
	env := testredis.New(t)
	clk := newClock()
	s := newStore(t, env, clk)
	ctx := context.Background()
	raw, k, err := s.Create(ctx, Key{Name: "a", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Authenticate(ctx, raw)
	if err != nil || got.ID != k.ID {
		t.Fatalf("Authenticate = %v, %v", got, err)
	}
	for _, bad := range []string{"", "cr_", raw[:len(raw)-1], raw + "0", "sk_" + raw[3:], strings.ToUpper(raw),
		raw[:len(raw)-1] + "x"} {
		if _, err := s.Authenticate(ctx, bad); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("Authenticate(%q) = %v, want ErrInvalidKey", bad, err)
		}
	}
	// A well-formed unknown key is refused too (and cached as unknown).
	other, _, _ := NewSecret("cr_")
	if _, err := s.Authenticate(ctx, other); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("unknown key: %v", err)
	}

	if _, err := s.Update(ctx, k.ID, func(k *Key) error { k.Enabled = false; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Authenticate(ctx, raw); !errors.Is(err, ErrDisabled) || got == nil {
		t.Fatalf("disabled: %v", err)
	}
	at := clk.Now().Add(time.Hour)
	if _, err := s.Update(ctx, k.ID, func(k *Key) error {
		k.Enabled = true
		k.Expiry = Expiry{Mode: ExpiryFixed, At: at}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Authenticate(ctx, raw); err != nil {
		t.Fatalf("before expiry: %v", err)
	}
	clk.Advance(time.Hour)
	if _, err := s.Authenticate(ctx, raw); !errors.Is(err, ErrExpired) {
		t.Fatalf("at expiry: %v", err)
	}
}

func TestCacheLetsOtherReplicasSeeChangesWithinTTL(t *testing.T) {
	env := testredis.New(t)
	clk := newClock()
	admin, replica := newStore(t, env, clk), newStore(t, env, clk)
	ctx := context.Background()
	raw, k, err := admin.Create(ctx, Key{Name: "a", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := replica.Authenticate(ctx, raw); err != nil {
		t.Fatal(err)
	}
	if err := admin.Delete(ctx, k.ID); err != nil {
		t.Fatal(err)
	}
	// The replica answers from its cache until the TTL passes, then sees it.
	if _, err := replica.Authenticate(ctx, raw); err != nil {
		t.Fatalf("within the TTL the cached key still works: %v", err)
	}
	clk.Advance(500 * time.Millisecond)
	if _, err := replica.Authenticate(ctx, raw); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("after the TTL: %v", err)
	}
	// The store that made the change sees it at once.
	if _, err := admin.Authenticate(ctx, raw); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("own change: %v", err)
	}
}

func TestRegenerateAndUpdateRace(t *testing.T) {
	env := testredis.New(t)
	s := newStore(t, env, nil)
	ctx := context.Background()
	raw, k, err := s.Create(ctx, Key{Name: "a", Enabled: true, Tags: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	raw2, k2, err := s.Regenerate(ctx, k.ID)
	if err != nil {
		t.Fatal(err)
	}
	if raw2 == raw || k2.ID != k.ID || k2.Name != "a" {
		t.Fatalf("regenerated: %+v", k2)
	}
	if _, err := s.Authenticate(ctx, raw); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("old key: %v", err)
	}
	if _, err := s.Authenticate(ctx, raw2); err != nil {
		t.Fatalf("new key: %v", err)
	}
	// An update that read the old record cannot write it back.
	n, err := writeIfExists.Run(ctx, env.Client, []string{s.ks.APIKeyRecord(k.Digest)}, `{"id":"x"}`).Int()
	if err != nil || n != 0 {
		t.Fatalf("write to the old record = %d, %v", n, err)
	}
	if _, err := s.Authenticate(ctx, raw); !errors.Is(err, ErrInvalidKey) {
		t.Fatalf("old key came back: %v", err)
	}
}

func TestListSearchAndPaging(t *testing.T) {
	env := testredis.New(t)
	s := newStore(t, env, nil)
	ctx := context.Background()
	for i, name := range []string{"team-a", "team-b", "ci", "team-c", "bot"} {
		k := Key{Name: name, Enabled: i%2 == 0}
		if strings.HasPrefix(name, "team") {
			k.Tags = []string{"team"}
		}
		if _, _, err := s.Create(ctx, k); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond) // distinct creation scores, for a stable order
	}
	page, total, err := s.List(ctx, ListQuery{Limit: 2})
	if err != nil || total != 5 || len(page) != 2 || page[0].Name != "bot" || page[1].Name != "team-c" {
		t.Fatalf("first page: %v %d %v", names(page), total, err)
	}
	page, _, _ = s.List(ctx, ListQuery{Offset: 4, Limit: 2})
	if len(page) != 1 || page[0].Name != "team-a" {
		t.Fatalf("last page: %v", names(page))
	}
	page, total, _ = s.List(ctx, ListQuery{Tag: "team", Limit: 2})
	if total != 3 || len(page) != 2 {
		t.Fatalf("tag: %v %d", names(page), total)
	}
	no := false
	page, total, _ = s.List(ctx, ListQuery{Enabled: &no, Search: "TEAM"})
	if total != 2 || names(page) != "team-c,team-b" {
		t.Fatalf("search+enabled: %v %d", names(page), total)
	}
}

func names(ks []*Key) string {
	var n []string
	for _, k := range ks {
		n = append(n, k.Name)
	}
	return strings.Join(n, ",")
}

func TestActivationIsRecordedOnce(t *testing.T) {
	env := testredis.New(t)
	clk := newClock()
	s1, s2 := newStore(t, env, clk), newStore(t, env, clk)
	ctx := context.Background()
	raw, _, err := s1.Create(ctx, Key{Name: "a", Enabled: true, Expiry: Expiry{Mode: ExpiryActivation, Secs: 3600}})
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := s1.Authenticate(ctx, raw)
	k2, _ := s2.Authenticate(ctx, raw)
	if _, ok := k1.ExpiresAt(); ok {
		t.Fatal("an unused activation key has no end yet")
	}
	a1, err := s1.Activate(ctx, k1)
	if err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	a2, err := s2.Activate(ctx, k2) // the other replica, a minute later, with a stale copy
	if err != nil {
		t.Fatal(err)
	}
	if a1.ActivatedAt.IsZero() || !a1.ActivatedAt.Equal(a2.ActivatedAt) {
		t.Fatalf("activation times differ: %v %v", a1.ActivatedAt, a2.ActivatedAt)
	}
	clk.Advance(time.Hour)
	if _, err := s2.Authenticate(ctx, raw); !errors.Is(err, ErrExpired) {
		t.Fatalf("an hour after first use: %v", err)
	}
}

func TestValidate(t *testing.T) {
	for _, k := range []Key{
		{Name: ""},
		{Name: "a", Permissions: []string{}},
		{Name: "a", Permissions: []string{"azure"}},
		{Name: "a", Permissions: AllServices, Limits: Limits{RequestsPerWindow: 5}},
		{Name: "a", Permissions: AllServices, Limits: Limits{MaxConcurrent: -1}},
		{Name: "a", Permissions: AllServices, Expiry: Expiry{Mode: ExpiryFixed}},
		{Name: "a", Permissions: AllServices, Expiry: Expiry{Mode: ExpiryActivation}},
		{Name: "a", Permissions: AllServices, Expiry: Expiry{Mode: "soon"}},
		{Name: "a", Permissions: AllServices, AllowModels: []string{" "}},
	} {
		if err := k.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", k)
		}
	}
}

func TestModelAllowed(t *testing.T) {
	k := Key{DenyModels: []string{"claude-opus-*"}}
	for model, want := range map[string]bool{
		"": true, "claude-sonnet-4": true, "claude-opus-4-1": false, "CLAUDE-OPUS-4": false,
		"anthropic/claude-opus-4": false,
	} {
		if got := k.ModelAllowed(model); got != want {
			t.Errorf("deny: ModelAllowed(%q) = %v", model, got)
		}
	}
	k = Key{AllowModels: []string{"gpt-4o", "claude-haiku-*"}, DenyModels: []string{"claude-haiku-3"}}
	for model, want := range map[string]bool{
		"gpt-4o": true, "gpt-4o-mini": false, "claude-haiku-4-5": true, "claude-haiku-3": false, "o3": false,
	} {
		if got := k.ModelAllowed(model); got != want {
			t.Errorf("allow: ModelAllowed(%q) = %v", model, got)
		}
	}
}

func TestParseLifetime(t *testing.T) {
	for in, want := range map[string]time.Duration{"30d": 30 * 24 * time.Hour, "12h": 12 * time.Hour, "90m": 90 * time.Minute} {
		if got, err := ParseLifetime(in); err != nil || got != want {
			t.Errorf("ParseLifetime(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "0d", "-1h", "d", "1.5d", "soon"} {
		if _, err := ParseLifetime(in); err == nil {
			t.Errorf("ParseLifetime(%q) accepted", in)
		}
	}
}
