package session_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/fakeanthropic"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/session"
)

type claudeRig struct {
	env   *testredis.Env
	keys  keyspace.Keyspace
	box   *secretbox.Box
	fake  *fakeanthropic.Fake
	oauth *anthropic.OAuth
}

func newClaudeRig(t *testing.T) *claudeRig {
	env := testredis.New(t)
	box, err := secretbox.New(strings.Repeat("k", 32))
	if err != nil {
		t.Fatal(err)
	}
	fake := fakeanthropic.New()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	oauth := anthropic.NewOAuth(anthropic.OAuthConfig{
		ClientID: fake.ClientID, AuthorizeURL: "https://claude.ai/oauth/authorize", TokenURL: srv.URL + "/v1/oauth/token",
		RedirectURL: fake.RedirectURL, Scopes: "org:create_api_key user:profile user:inference",
	}, nil)
	return &claudeRig{env: env, keys: keyspace.New(env.Prefix), box: box, fake: fake, oauth: oauth}
}

// replica is one relay process: its own store view and token keeper.
func (r *claudeRig) replica() (*accounts.Store, *session.Claude) {
	st := accounts.NewStore(r.env.Client, r.keys, r.box, time.Second, nil)
	return st, session.NewClaude(session.ClaudeOptions{Redis: r.env.Client, Keys: r.keys, Store: st, OAuth: r.oauth,
		Log: zerolog.Nop(), Lead: 5 * time.Minute})
}

// authorized runs the PKCE flow against the fake and creates an account
// from its tokens.
func (r *claudeRig) authorized(t *testing.T, st *accounts.Store) accounts.Account {
	t.Helper()
	p := anthropic.NewPKCE()
	pasted, err := r.fake.Authorize(r.oauth.AuthorizeURL(p))
	if err != nil {
		t.Fatalf("the sign-in page refused the authorize URL: %v", err)
	}
	code, state := anthropic.CleanCode(pasted)
	tok, err := r.oauth.Exchange(context.Background(), code, state, p)
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" || tok.Email == "" || tok.ExpiresAt.Before(time.Now().Add(time.Hour)) {
		t.Fatalf("tokens %+v", tok)
	}
	a, err := st.Create(context.Background(), accounts.Account{Name: "oauth", Kind: accounts.KindClaudeOAuth, Enabled: true,
		Schedulable: true, TokenExpiresAt: tok.ExpiresAt, Email: tok.Email},
		accounts.Credentials{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestClaudeCodeExchangeChecksTheVerifier(t *testing.T) {
	r := newClaudeRig(t)
	p := anthropic.NewPKCE()
	pasted, err := r.fake.Authorize(r.oauth.AuthorizeURL(p))
	if err != nil {
		t.Fatal(err)
	}
	code, state := anthropic.CleanCode(pasted)
	wrong := anthropic.NewPKCE()
	wrong.State = p.State
	_, err = r.oauth.Exchange(context.Background(), code, state, wrong)
	var te *anthropic.TokenError
	if !errors.As(err, &te) || te.Code != "invalid_grant" {
		t.Fatalf("a wrong verifier was accepted: %v", err)
	}
	if strings.Contains(err.Error(), wrong.Verifier) {
		t.Fatal("error text carries the verifier")
	}
}

func TestTwoReplicasRefreshOnce(t *testing.T) {
	r := newClaudeRig(t)
	st1, k1 := r.replica()
	st2, k2 := r.replica()
	a := r.authorized(t, st1)
	_, creds, _ := st1.Credentials(context.Background(), a.ID)
	before := r.fake.Counts().Refreshes

	var wg sync.WaitGroup
	start := make(chan struct{})
	toks := make([]string, 2)
	errs := make([]error, 2)
	for i, k := range []*session.Claude{k1, k2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			// Both saw the upstream reject the same token.
			toks[i], errs[i] = k.Refresh(context.Background(), a.ID, creds.AccessToken)
		}()
	}
	close(start)
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatalf("refresh errors: %v, %v", errs[0], errs[1])
	}
	if got := r.fake.Counts().Refreshes - before; got != 1 {
		t.Fatalf("%d refreshes reached the token endpoint, want 1", got)
	}
	if toks[0] != toks[1] || toks[0] == creds.AccessToken {
		t.Fatalf("replicas ended with different tokens: %q %q", toks[0], toks[1])
	}
	_, now, err := st2.Credentials(context.Background(), a.ID)
	if err != nil || now.AccessToken != toks[0] || now.RefreshToken == creds.RefreshToken {
		t.Fatalf("stored tokens not rotated: %v", err)
	}
}

func TestRefreshDueOnlyNearExpiry(t *testing.T) {
	r := newClaudeRig(t)
	st, k := r.replica()
	ctx := context.Background()
	fresh := r.authorized(t, st)
	soon := r.authorized(t, st)
	if _, err := st.Update(ctx, soon.ID, func(a *accounts.Account) error {
		a.TokenExpiresAt = time.Now().Add(time.Minute)
		return nil
	}, nil); err != nil {
		t.Fatal(err)
	}
	before := r.fake.Counts().Refreshes
	k.RefreshDue(ctx)
	if got := r.fake.Counts().Refreshes - before; got != 1 {
		t.Fatalf("%d refreshes, want 1 (only the expiring token)", got)
	}
	a, _ := st.Get(ctx, soon.ID)
	if a.TokenExpiresAt.Before(time.Now().Add(time.Hour)) {
		t.Fatal("expiry not moved forward")
	}
	b, _ := st.Get(ctx, fresh.ID)
	if !b.TokenExpiresAt.Equal(fresh.TokenExpiresAt) {
		t.Fatal("a fresh token was refreshed")
	}
}

func TestFailedRefreshMarksTheAccountAndTheSchedulerSkipsIt(t *testing.T) {
	r := newClaudeRig(t)
	st, k := r.replica()
	ctx := context.Background()
	a := r.authorized(t, st)
	_, creds, _ := st.Credentials(ctx, a.ID)
	r.fake.Revoke(creds.RefreshToken)
	if _, err := k.Refresh(ctx, a.ID, creds.AccessToken); err == nil {
		t.Fatal("refresh with a revoked token succeeded")
	}
	got, _ := st.Get(ctx, a.ID)
	if !got.State.NeedsReauth || !strings.Contains(got.State.ReauthReason, "invalid_grant") {
		t.Fatalf("state %+v", got.State)
	}
	sched := accounts.NewScheduler(st, r.env.Client, r.keys, accounts.Policy{StickyTTL: time.Hour, MaxPause: time.Hour}, zerolog.Nop())
	_, err := sched.Pick(ctx, accounts.Request{Service: "claude", Model: "claude-sonnet-4-5"})
	var na *accounts.NoAccountError
	if !errors.As(err, &na) || !strings.Contains(na.Error(), "need re-authorization") || !strings.Contains(na.Error(), "invalid_grant") {
		t.Fatalf("pick: %v", err)
	}
	// Re-authorizing (new tokens) brings it back.
	if _, err := st.SetTokens(ctx, a.ID, accounts.Credentials{AccessToken: "new", RefreshToken: "new-r"}, time.Now().Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	if p, err := sched.Pick(ctx, accounts.Request{Service: "claude", Model: "m"}); err != nil || p.Credentials.AccessToken != "new" {
		t.Fatalf("account not back after re-authorization: %v", err)
	}
}

func TestKeeperStartStop(t *testing.T) {
	r := newClaudeRig(t)
	_, k := r.replica()
	if err := k.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := k.Start(context.Background()); err == nil {
		t.Fatal("second Start accepted")
	}
	k.Stop()
	k.Stop()
}
