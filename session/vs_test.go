package session_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/session"
)

func TestMain(m *testing.M) { testredis.Main(m) }

type rig struct {
	env  *testredis.Env
	fake *fakevs.Fake
	url  string
	box  *secretbox.Box
}

func newRig(t *testing.T, o fakevs.Options) *rig {
	env := testredis.New(t)
	f := fakevs.New(o)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	box, err := secretbox.New(strings.Repeat("k", 32))
	if err != nil {
		t.Fatal(err)
	}
	return &rig{env: env, fake: f, url: srv.URL, box: box}
}

func (r *rig) session(t *testing.T, mod func(*session.VSOptions)) *session.VS {
	o := session.VSOptions{
		Redis: r.env.Client, Keys: keyspace.New(r.env.Prefix), Box: r.box,
		Client: vs.New(vs.Options{BaseURL: r.url}), Email: "user@example.com", Password: "secret",
		Log: zerolog.Nop(), BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
		Poll: 10 * time.Millisecond,
	}
	if mod != nil {
		mod(&o)
	}
	s := session.NewVS(o)
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// eventually polls cond until it holds; the test's own deadline bounds it.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLogsInAndStoresSealedCookie(t *testing.T) {
	r := newRig(t, fakevs.Options{})
	s := r.session(t, nil)
	ck, err := s.Cookie(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(ck.Value, fakevs.CookieName) || ck.Gen != 1 {
		t.Fatalf("cookie %+v", ck)
	}
	state, ok := s.Health(context.Background())
	if state != "ok" || !ok {
		t.Fatalf("health %q %v", state, ok)
	}
	stored, err := r.env.Client.HGetAll(context.Background(), keyspace.New(r.env.Prefix).VSSession()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if stored["cookie"] == "" || strings.Contains(stored["cookie"], "base64-") || strings.Contains(stored["cookie"], fakevs.CookieName) {
		t.Fatalf("cookie is not sealed in redis: %q", stored["cookie"])
	}
	if r.fake.Logins() != 1 {
		t.Fatalf("logins %d", r.fake.Logins())
	}
}

func TestReplicasShareOneLogin(t *testing.T) {
	r := newRig(t, fakevs.Options{LoginDelay: 50 * time.Millisecond})
	a := r.session(t, nil)
	b := r.session(t, nil)
	ca, err := a.Cookie(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cb, err := b.Cookie(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ca != cb {
		t.Fatalf("replicas hold different cookies: gen %d vs %d", ca.Gen, cb.Gen)
	}
	if n := r.fake.Logins(); n != 1 {
		t.Fatalf("two replicas logged in %d times", n)
	}
}

func TestRenewIsSingleFlightAcrossReplicas(t *testing.T) {
	r := newRig(t, fakevs.Options{LoginDelay: 30 * time.Millisecond})
	a := r.session(t, nil)
	b := r.session(t, nil)
	stale, err := a.Cookie(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Cookie(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.fake.ExpireSessions()
	var wg sync.WaitGroup
	got := make([]vs.Cookie, 40)
	errs := make([]error, 40)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := a
			if i%2 == 1 {
				s = b
			}
			got[i], errs[i] = s.Renew(context.Background(), stale)
		}()
	}
	wg.Wait()
	for i := range got {
		if errs[i] != nil {
			t.Fatalf("renew %d: %v", i, errs[i])
		}
		if got[i].Gen != stale.Gen+1 || got[i].Value != got[0].Value {
			t.Fatalf("renew %d got generation %d", i, got[i].Gen)
		}
	}
	if n := r.fake.Logins(); n != 2 {
		t.Fatalf("logins = %d, want the first plus exactly one re-login", n)
	}
	// The renewed cookie works upstream.
	c := vs.New(vs.Options{BaseURL: r.url})
	if _, err := c.NewChat(context.Background(), got[0].Value, vs.CornerText); err != nil {
		t.Fatal(err)
	}
	// A late caller with the old cookie gets the new one without a login.
	late, err := b.Renew(context.Background(), stale)
	if err != nil || late.Gen != stale.Gen+1 || r.fake.Logins() != 2 {
		t.Fatalf("late renew: %+v %v, logins %d", late, err, r.fake.Logins())
	}
}

func TestFailedLoginIsReportedAndRetried(t *testing.T) {
	r := newRig(t, fakevs.Options{})
	r.fake.SetLoginDown(http.StatusServiceUnavailable)
	s := r.session(t, nil)
	eventually(t, "health reports the failure", func() bool {
		state, _ := s.Health(context.Background())
		return strings.HasPrefix(state, "failed: ")
	})
	state, ok := s.Health(context.Background())
	if ok || !strings.Contains(state, "503") {
		t.Fatalf("health %q %v", state, ok)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := s.Cookie(ctx)
	cancel()
	if vs.KindOf(err) != vs.KindNotReady {
		t.Fatalf("cookie without a session: %v", err)
	}
	eventually(t, "retries with backoff", func() bool { return r.fake.FailedLogins() >= 3 })
	r.fake.SetLoginDown(0)
	eventually(t, "recovers", func() bool {
		state, ok := s.Health(context.Background())
		return ok && state == "ok"
	})
	if _, err := s.Cookie(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestWrongPasswordFailsWithoutLeaking(t *testing.T) {
	r := newRig(t, fakevs.Options{})
	s := r.session(t, func(o *session.VSOptions) { o.Password = "hunter2-wrong" })
	eventually(t, "failure reported", func() bool {
		state, _ := s.Health(context.Background())
		return strings.HasPrefix(state, "failed: ")
	})
	state, _ := s.Health(context.Background())
	if strings.Contains(state, "hunter2") {
		t.Fatalf("health leaks the password: %q", state)
	}
}

func TestRefreshesWhenDue(t *testing.T) {
	r := newRig(t, fakevs.Options{})
	s := r.session(t, func(o *session.VSOptions) { o.RefreshInterval = 100 * time.Millisecond })
	first, err := s.Cookie(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "a refresh login", func() bool { return r.fake.Logins() >= 2 })
	eventually(t, "the new generation is handed out", func() bool {
		ck, err := s.Cookie(context.Background())
		return err == nil && ck.Gen > first.Gen
	})
}

func TestAnotherEncryptionKeyLogsInAgain(t *testing.T) {
	r := newRig(t, fakevs.Options{})
	a := r.session(t, nil)
	if _, err := a.Cookie(context.Background()); err != nil {
		t.Fatal(err)
	}
	a.Stop()
	other, _ := secretbox.New(strings.Repeat("z", 32))
	b := r.session(t, func(o *session.VSOptions) { o.Box = other })
	ck, err := b.Cookie(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if ck.Gen != 2 || r.fake.Logins() != 2 {
		t.Fatalf("gen %d logins %d", ck.Gen, r.fake.Logins())
	}
}
