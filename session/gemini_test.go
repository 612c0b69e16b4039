package session_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/fakegemini"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/session"
)

// googleReplicas are two relay processes sharing one Redis, whose keepers
// refresh Google OAuth accounts against the fake token endpoint.
func googleReplicas(t *testing.T) (*fakegemini.Fake, [2]*accounts.Store, [2]*session.Claude) {
	env := testredis.New(t)
	box, err := secretbox.New(strings.Repeat("k", 32))
	if err != nil {
		t.Fatal(err)
	}
	fake := fakegemini.New()
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	oauth := gemini.NewOAuth(gemini.OAuthConfig{ClientID: fake.ClientID, ClientSecret: fake.ClientSecret,
		AuthorizeURL: "https://accounts.google.com/o/oauth2/v2/auth", TokenURL: srv.URL + "/token",
		RedirectURL: fake.RedirectURL, Scopes: "https://www.googleapis.com/auth/cloud-platform"}, nil)
	ks := keyspace.New(env.Prefix)
	var stores [2]*accounts.Store
	var keepers [2]*session.Claude
	for i := range stores {
		stores[i] = accounts.NewStore(env.Client, ks, box, time.Second, nil)
		keepers[i] = session.NewClaude(session.ClaudeOptions{Redis: env.Client, Keys: ks, Store: stores[i], Google: oauth,
			Log: zerolog.Nop(), Lead: 5 * time.Minute})
	}
	return fake, stores, keepers
}

func TestGoogleTokensRefreshOnceAcrossReplicas(t *testing.T) {
	fake, stores, keepers := googleReplicas(t)
	ctx := context.Background()
	fake.AddRefreshToken("1//refresh-a", "a@example.com")
	// The token expires within the lead time: both replicas want a new one.
	a, err := stores[0].Create(ctx, accounts.Account{Name: "g", Kind: accounts.KindGeminiOAuth, Enabled: true, Schedulable: true,
		TokenExpiresAt: time.Now().Add(time.Minute)}, accounts.Credentials{AccessToken: "ya29.old", RefreshToken: "1//refresh-a"})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	toks := make([]string, 2)
	errs := make([]error, 2)
	for i := range keepers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks[i], errs[i] = keepers[i].AccessToken(ctx, a, accounts.Credentials{AccessToken: "ya29.old", RefreshToken: "1//refresh-a"})
		}()
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil || toks[0] != toks[1] || !strings.HasPrefix(toks[0], "ya29.fake-") {
		t.Fatalf("tokens %q, errors %v", toks, errs)
	}
	if n := fake.Counts().Refreshes; n != 1 {
		t.Fatalf("refreshes = %d, want 1", n)
	}
	got, creds, err := stores[1].Credentials(ctx, a.ID)
	if err != nil || creds.AccessToken != toks[0] || creds.RefreshToken != "1//refresh-a" || got.TokenExpiresAt.Before(time.Now().Add(30*time.Minute)) {
		t.Fatalf("stored %+v, %v (Google keeps the refresh token)", got, err)
	}
}

func TestGoogleRevokedRefreshMarksReauth(t *testing.T) {
	fake, stores, keepers := googleReplicas(t)
	ctx := context.Background()
	a, err := stores[0].Create(ctx, accounts.Account{Name: "g", Kind: accounts.KindGeminiOAuth, Enabled: true, Schedulable: true,
		TokenExpiresAt: time.Now().Add(-time.Minute)}, accounts.Credentials{AccessToken: "ya29.old", RefreshToken: "1//revoked"})
	if err != nil {
		t.Fatal(err)
	}
	keepers[0].RefreshDue(ctx)
	if fake.Counts().Refreshes != 1 {
		t.Fatal("the background check did not refresh the expired Google token")
	}
	got, err := stores[0].Get(ctx, a.ID)
	if err != nil || !got.State.NeedsReauth || !strings.Contains(got.State.ReauthReason, "invalid_grant") {
		t.Fatalf("state = %+v, %v", got.State, err)
	}
}
