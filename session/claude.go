package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/internal/keyspace"
)

// claudeReleaseLock deletes a refresh lock only if this replica holds it.
//
// KEYS[1]: the lock key (keyspace.Lock("token-refresh:<account id>"))
// ARGV[1]: the holder's token
// Returns 1 if the lock was deleted, 0 if another holder has it (or none).
var claudeReleaseLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`)

// ClaudeOptions configures the OAuth token keeper.
type ClaudeOptions struct {
	Redis redis.UniversalClient
	Keys  keyspace.Keyspace
	Store *accounts.Store
	// OAuth refreshes Claude OAuth accounts; Google, when set, refreshes
	// Google OAuth (gemini-oauth) accounts. A kind without its client is
	// left alone.
	OAuth  *anthropic.OAuth
	Google *gemini.OAuth
	Log    zerolog.Logger
	// Lead: a token is refreshed this long before it expires (default 5m).
	Lead time.Duration
	// Interval: how often the keeper looks for tokens near expiry (default 1m).
	Interval time.Duration
	// LockTTL bounds one refresh (default 30s).
	LockTTL time.Duration
	// RetryPause: an account whose refresh failed for a passing reason (the
	// token endpoint unreachable or failing) and whose token has expired is
	// paused this long (default 1m).
	RetryPause time.Duration
}

// Claude keeps OAuth access tokens fresh: Claude's and, with
// ClaudeOptions.Google, Google's (Gemini CLI accounts). Refreshes are single-flight
// in the process and, through a Redis lock, across replicas: when several
// ask at once, one refreshes and the others read its result. An account
// whose refresh token is refused is marked for re-authorization, so the
// scheduler skips it.
type Claude struct {
	o ClaudeOptions

	mu       sync.Mutex
	inflight map[string]*refreshCall
	cancel   context.CancelFunc
	done     chan struct{}
	stopOnce sync.Once
}

type refreshCall struct {
	done  chan struct{}
	token string
	err   error
}

// NewClaude makes the keeper.
func NewClaude(o ClaudeOptions) *Claude {
	if o.Lead <= 0 {
		o.Lead = 5 * time.Minute
	}
	if o.Interval <= 0 {
		o.Interval = time.Minute
	}
	if o.LockTTL <= 0 {
		o.LockTTL = 30 * time.Second
	}
	if o.RetryPause <= 0 {
		o.RetryPause = time.Minute
	}
	return &Claude{o: o, inflight: map[string]*refreshCall{}}
}

// Start runs the background check that refreshes tokens before they expire.
func (c *Claude) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done != nil {
		return errors.New("session: claude token keeper already started")
	}
	ctx, c.cancel = context.WithCancel(context.WithoutCancel(ctx))
	c.done = make(chan struct{})
	go c.run(ctx)
	return nil
}

// Stop ends the background check and waits for it. It is idempotent.
func (c *Claude) Stop() {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		cancel, done := c.cancel, c.done
		c.mu.Unlock()
		if cancel != nil {
			cancel()
			<-done
		}
	})
}

func (c *Claude) run(ctx context.Context) {
	defer close(c.done)
	t := time.NewTicker(c.o.Interval)
	defer t.Stop()
	for {
		c.RefreshDue(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// RefreshDue refreshes every enabled OAuth account (of a kind the keeper
// has a client for) whose token expires within the lead time.
func (c *Claude) RefreshDue(ctx context.Context) {
	list, err := c.o.Store.List(ctx)
	if err != nil {
		c.o.Log.Warn().Err(err).Msg("cannot list accounts for token refresh")
		return
	}
	now := c.o.Store.Now()
	for _, a := range list {
		if !c.handles(a.Kind) || !a.Enabled || a.State.NeedsReauth {
			continue
		}
		if a.TokenExpiresAt.IsZero() || a.TokenExpiresAt.Sub(now) > c.o.Lead {
			continue
		}
		if _, err := c.Refresh(ctx, a.ID, ""); err != nil {
			c.o.Log.Warn().Str("account", a.ID).Str("name", a.Name).Err(err).Msg("token refresh failed")
		}
	}
}

// AccessToken is the access token to send for a picked account: its current
// one, or a fresh one if that expires within the lead time.
func (c *Claude) AccessToken(ctx context.Context, a accounts.Account, creds accounts.Credentials) (string, error) {
	if creds.AccessToken != "" && (a.TokenExpiresAt.IsZero() || a.TokenExpiresAt.Sub(c.o.Store.Now()) > c.o.Lead) {
		return creds.AccessToken, nil
	}
	tok, err := c.Refresh(ctx, a.ID, creds.AccessToken)
	if err != nil && creds.AccessToken != "" && a.TokenExpiresAt.After(c.o.Store.Now()) {
		if _, refused := tokenRefusal(err); !refused {
			return creds.AccessToken, nil // the endpoint is unreachable; the token still works a while
		}
	}
	return tok, err
}

// Refresh gets a new access token for account id. stale is the token the
// caller found rejected or expiring ("" from the background check): when
// another replica has already replaced it, its result is used instead of
// refreshing again.
func (c *Claude) Refresh(ctx context.Context, id, stale string) (string, error) {
	c.mu.Lock()
	if call := c.inflight[id]; call != nil {
		c.mu.Unlock()
		select {
		case <-call.done:
			return call.token, call.err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	call := &refreshCall{done: make(chan struct{})}
	c.inflight[id] = call
	c.mu.Unlock()

	call.token, call.err = c.refreshLocked(ctx, id, stale)

	c.mu.Lock()
	delete(c.inflight, id)
	c.mu.Unlock()
	close(call.done)
	return call.token, call.err
}

// refreshLocked takes the account's Redis lock and refreshes unless another
// holder already did.
func (c *Claude) refreshLocked(ctx context.Context, id, stale string) (string, error) {
	lock := c.o.Keys.Lock("token-refresh:" + id)
	token := newLockToken()
	for {
		ok, err := c.o.Redis.SetNX(ctx, lock, token, c.o.LockTTL).Result()
		if err != nil {
			return "", fmt.Errorf("take refresh lock: %w", err)
		}
		if ok {
			break
		}
		// Another replica is refreshing: wait for it to finish, then use
		// its token if it replaced the stale one.
		if err := c.waitUnlocked(ctx, lock); err != nil {
			return "", err
		}
		if tok, fresh, err := c.fresh(ctx, id, stale); err != nil || fresh {
			return tok, err
		}
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if err := claudeReleaseLock.Run(rctx, c.o.Redis, []string{lock}, token).Err(); err != nil {
			c.o.Log.Warn().Err(err).Str("account", id).Msg("could not release the refresh lock; it expires by itself")
		}
	}()
	if tok, fresh, err := c.fresh(ctx, id, stale); err != nil || fresh {
		return tok, err
	}

	a, creds, err := c.o.Store.Credentials(ctx, id)
	if err != nil {
		return "", err
	}
	if creds.RefreshToken == "" {
		why := "OAuth access token expired and the account has no refresh token"
		_ = c.o.Store.MarkNeedsReauth(ctx, id, why)
		return "", errors.New(why)
	}
	rctx, cancel := context.WithTimeout(ctx, c.o.LockTTL-2*time.Second)
	defer cancel()
	t, err := c.refreshToken(rctx, a.Kind, creds.RefreshToken)
	if err != nil {
		if status, refused := tokenRefusal(err); refused && status >= 400 && status < 500 {
			_ = c.o.Store.MarkNeedsReauth(ctx, id, "OAuth refresh failed: "+err.Error())
		} else if a.TokenExpiresAt.Before(c.o.Store.Now()) {
			_ = c.o.Store.MarkPaused(ctx, id, c.o.Store.Now().Add(c.o.RetryPause), "OAuth refresh failed: "+err.Error())
		}
		return "", fmt.Errorf("refresh account %s: %w", id, err)
	}
	next := creds
	next.AccessToken = t.AccessToken
	if t.RefreshToken != "" {
		next.RefreshToken = t.RefreshToken
	}
	if _, err := c.o.Store.SetTokens(ctx, id, next, t.ExpiresAt, t.Scopes); err != nil {
		return "", fmt.Errorf("save refreshed token: %w", err)
	}
	c.o.Log.Info().Str("account", id).Str("name", a.Name).Time("expires_at", t.ExpiresAt).Msg("refreshed OAuth token")
	return t.AccessToken, nil
}

// fresh reports whether the account's token needs no refresh now: it is
// not the stale one and does not expire within the lead time.
func (c *Claude) fresh(ctx context.Context, id, stale string) (string, bool, error) {
	a, creds, err := c.o.Store.Credentials(ctx, id)
	if err != nil {
		return "", false, err
	}
	if creds.AccessToken == "" || creds.AccessToken == stale {
		return "", false, nil
	}
	if !a.TokenExpiresAt.IsZero() && a.TokenExpiresAt.Sub(c.o.Store.Now()) <= c.o.Lead {
		return "", false, nil
	}
	return creds.AccessToken, true, nil
}

func (c *Claude) waitUnlocked(ctx context.Context, lock string) error {
	for {
		n, err := c.o.Redis.Exists(ctx, lock).Result()
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

func newLockToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	return hex.EncodeToString(b)
}

// handles reports whether the keeper has a token client for kind.
func (c *Claude) handles(k accounts.Kind) bool {
	switch k {
	case accounts.KindClaudeOAuth:
		return c.o.OAuth != nil
	case accounts.KindGeminiOAuth:
		return c.o.Google != nil
	}
	return false
}

// refreshed is a token endpoint's answer, whichever the provider.
type refreshed struct {
	AccessToken, RefreshToken string
	ExpiresAt                 time.Time
	Scopes                    string
}

// refreshToken asks the kind's token endpoint for a new access token.
func (c *Claude) refreshToken(ctx context.Context, kind accounts.Kind, refreshToken string) (refreshed, error) {
	if !c.handles(kind) {
		return refreshed{}, fmt.Errorf("no OAuth client for %s accounts", kind)
	}
	if kind == accounts.KindGeminiOAuth {
		t, err := c.o.Google.Refresh(ctx, refreshToken)
		return refreshed{t.AccessToken, t.RefreshToken, t.ExpiresAt, t.Scopes}, err
	}
	t, err := c.o.OAuth.Refresh(ctx, refreshToken)
	return refreshed{t.AccessToken, t.RefreshToken, t.ExpiresAt, t.Scopes}, err
}

// tokenRefusal reports whether err is a token endpoint's refusal (as
// opposed to it being unreachable), and its HTTP status.
func tokenRefusal(err error) (int, bool) {
	var at *anthropic.TokenError
	if errors.As(err, &at) {
		return at.Status, true
	}
	var gt *gemini.TokenError
	if errors.As(err, &gt) {
		return gt.Status, true
	}
	return 0, false
}
