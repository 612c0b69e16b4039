// Package session keeps upstream credentials fresh and shares them between
// replicas through Redis: the Vertical Studio session cookie (this file) and,
// later, Claude OAuth tokens.
package session

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/vs"
)

// cookiePurpose binds the sealed cookie to its field.
const cookiePurpose = "vs-session-cookie"

// releaseLock deletes the login lock only if this replica still holds it.
//
// KEYS[1]: the lock key (keyspace.VSLoginLock)
// ARGV[1]: the holder's token
// Returns 1 if the lock was deleted, 0 if it was not held with that token.
var releaseLock = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0`)

// VSOptions configure a VS session. Zero durations take the defaults in the
// comments.
type VSOptions struct {
	Redis    redis.UniversalClient
	Keys     keyspace.Keyspace
	Box      *secretbox.Box
	Client   *vs.Client
	Email    string
	Password string
	Log      zerolog.Logger

	RefreshInterval time.Duration // log in again this long after the last login; default 2h
	LoginTimeout    time.Duration // one login attempt; default 30s
	LockTTL         time.Duration // login lock lifetime; default LoginTimeout + 5s
	BackoffMin      time.Duration // first wait after a failed background login; default 1s
	BackoffMax      time.Duration // longest wait between failed logins; default 5m
	Poll            time.Duration // how often a waiter looks for another replica's login; default 50ms
	CacheTTL        time.Duration // how long a cookie read from Redis is reused before re-reading; default 2s
	ReadyWait       time.Duration // how long Cookie waits for a first login; default 15s
}

// VS is the shared Vertical Studio session. It implements vs.Credentials.
// Start it once; Stop it once or more.
type VS struct {
	o   VSOptions
	log zerolog.Logger

	mu        sync.Mutex
	cur       vs.Cookie
	loginAt   time.Time
	fetchedAt time.Time
	state     string // "ok", "logging_in", "failed: <reason>"
	flights   map[int64]*flight
	changed   chan struct{} // closed and replaced when cur changes or state changes

	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	started bool
	stopped sync.Once
}

type flight struct {
	done chan struct{}
	ck   vs.Cookie
	err  error
}

// NewVS returns a session that is not yet started.
func NewVS(o VSOptions) *VS {
	if o.RefreshInterval <= 0 {
		o.RefreshInterval = 2 * time.Hour
	}
	if o.LoginTimeout <= 0 {
		o.LoginTimeout = 30 * time.Second
	}
	if o.LockTTL <= 0 {
		o.LockTTL = o.LoginTimeout + 5*time.Second
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = time.Second
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 5 * time.Minute
	}
	if o.Poll <= 0 {
		o.Poll = 50 * time.Millisecond
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 2 * time.Second
	}
	if o.ReadyWait <= 0 {
		o.ReadyWait = 15 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &VS{o: o, log: o.Log, state: "logging_in", flights: map[int64]*flight{},
		changed: make(chan struct{}), ctx: ctx, cancel: cancel}
}

// Start loads the shared session, and keeps it fresh in the background:
// it logs in when there is none, again RefreshInterval after the last login,
// and retries failed logins with backoff. It does not wait for a login, and
// a failing login never stops the relay (Health reports it).
func (s *VS) Start(ctx context.Context) error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("session: already started")
	}
	s.started = true
	s.mu.Unlock()
	_, _ = s.load(ctx) // a Redis error here is retried by the loop
	s.wg.Add(1)
	go s.run()
	return nil
}

// Stop ends the background work and waits for it. It is idempotent.
func (s *VS) Stop() {
	s.stopped.Do(func() {
		s.cancel()
		s.wg.Wait()
	})
}

// Health reports the session's state for /health: "ok", "logging_in" or
// "failed: <reason>".
func (s *VS) Health(context.Context) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state, s.state == "ok"
}

// Cookie returns the current session cookie. Without one it waits, within
// ctx and at most ReadyWait, for a login to finish.
func (s *VS) Cookie(ctx context.Context) (vs.Cookie, error) {
	s.mu.Lock()
	ck, fresh := s.cur, time.Since(s.fetchedAt) < s.o.CacheTTL
	s.mu.Unlock()
	if ck.Value != "" && fresh {
		return ck, nil
	}
	if got, err := s.load(ctx); err == nil && got.Value != "" {
		return got, nil
	} else if ck.Value != "" {
		return ck, nil // Redis hiccup: the cookie we had is still the best guess
	}
	wait, cancel := context.WithTimeout(ctx, s.o.ReadyWait)
	defer cancel()
	t := time.NewTicker(s.o.Poll)
	defer t.Stop()
	for {
		s.mu.Lock()
		ck, changed, state := s.cur, s.changed, s.state
		s.mu.Unlock()
		if ck.Value != "" {
			return ck, nil
		}
		if strings.HasPrefix(state, "failed") {
			// The last login failed: answer now rather than hold the request
			// until the next attempt.
			return vs.Cookie{}, &vs.Error{Kind: vs.KindNotReady, Op: "session", Msg: state}
		}
		select {
		case <-wait.Done():
			return vs.Cookie{}, &vs.Error{Kind: vs.KindNotReady, Op: "session", Msg: state}
		case <-changed:
		case <-t.C:
			if got, err := s.load(wait); err == nil && got.Value != "" {
				return got, nil
			}
		}
	}
}

// Renew is called when the upstream rejected stale (401/403). It returns a
// newer cookie: one that another goroutine or replica already got, or the
// result of one new login, which goroutines in this process share and which
// replicas take turns at under a Redis lock.
func (s *VS) Renew(ctx context.Context, stale vs.Cookie) (vs.Cookie, error) {
	s.mu.Lock()
	if s.cur.Gen > stale.Gen && s.cur.Value != "" {
		ck := s.cur
		s.mu.Unlock()
		return ck, nil
	}
	if s.ctx.Err() != nil {
		s.mu.Unlock()
		return vs.Cookie{}, &vs.Error{Kind: vs.KindNotReady, Op: "session", Msg: "stopped"}
	}
	f := s.flights[stale.Gen]
	if f == nil {
		f = &flight{done: make(chan struct{})}
		s.flights[stale.Gen] = f
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			lctx, cancel := context.WithTimeout(s.ctx, s.o.LoginTimeout+s.o.LockTTL)
			defer cancel()
			f.ck, f.err = s.newerThan(lctx, stale.Gen)
			s.mu.Lock()
			delete(s.flights, stale.Gen)
			s.mu.Unlock()
			close(f.done)
		}()
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.ck, f.err
	case <-ctx.Done():
		return vs.Cookie{}, ctx.Err()
	}
}

// run is the background loop: log in when due, back off after failures.
func (s *VS) run() {
	defer s.wg.Done()
	backoff := s.o.BackoffMin
	for {
		s.mu.Lock()
		ck, at := s.cur, s.loginAt
		s.mu.Unlock()
		var due time.Duration
		if ck.Value != "" {
			due = time.Until(at.Add(s.o.RefreshInterval))
		}
		if due > 0 {
			// Wake at the due time, or earlier to re-read Redis, since another
			// replica may have logged in (then our due time moves).
			wait := min(due, time.Minute)
			if !sleep(s.ctx, wait) {
				return
			}
			if _, err := s.load(s.ctx); err != nil && s.ctx.Err() != nil {
				return
			}
			continue
		}
		ctx, cancel := context.WithTimeout(s.ctx, s.o.LoginTimeout+s.o.LockTTL)
		_, err := s.newerThan(ctx, ck.Gen)
		cancel()
		if s.ctx.Err() != nil {
			return
		}
		if err != nil {
			s.log.Warn().Err(err).Dur("retry_in", backoff).Msg("vertical studio login failed")
			if !sleep(s.ctx, backoff) {
				return
			}
			backoff = min(backoff*2, s.o.BackoffMax)
			continue
		}
		backoff = s.o.BackoffMin
	}
}

// newerThan makes sure the shared session is newer than generation gen:
// it returns at once if it already is, else takes the login lock and logs in,
// or waits for the replica that holds the lock. If that replica's login
// fails, its error is returned rather than trying again at once.
func (s *VS) newerThan(ctx context.Context, gen int64) (vs.Cookie, error) {
	lock := s.o.Keys.VSLoginLock()
	token := randomToken()
	startedWaiting := time.Now()
	t := time.NewTicker(s.o.Poll)
	defer t.Stop()
	for {
		ck, err := s.load(ctx)
		if err == nil && ck.Gen > gen && ck.Value != "" {
			return ck, nil
		}
		if err == nil {
			if ferr := s.failedSince(ctx, startedWaiting); ferr != nil {
				return vs.Cookie{}, ferr
			}
		}
		ok, err := s.o.Redis.SetNX(ctx, lock, token, s.o.LockTTL).Result()
		if err != nil && ctx.Err() != nil {
			return vs.Cookie{}, ctx.Err()
		}
		if ok {
			return s.loginHolding(ctx, lock, token, gen)
		}
		s.setState("", true)
		select {
		case <-ctx.Done():
			return vs.Cookie{}, &vs.Error{Kind: vs.KindNotReady, Op: "session", Msg: "timed out waiting for a login"}
		case <-t.C:
		}
	}
}

// loginHolding logs in while holding the lock, unless a login finished just
// before the lock was taken.
func (s *VS) loginHolding(ctx context.Context, lock, token string, gen int64) (vs.Cookie, error) {
	defer func() {
		rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := releaseLock.Run(rctx, s.o.Redis, []string{lock}, token).Err(); err != nil {
			s.log.Warn().Err(err).Msg("could not release the vertical studio login lock; it expires by itself")
		}
	}()
	if ck, err := s.load(ctx); err == nil && ck.Gen > gen && ck.Value != "" {
		return ck, nil
	}
	s.setState("", true)
	lctx, cancel := context.WithTimeout(ctx, s.o.LoginTimeout)
	defer cancel()
	started := time.Now()
	cookie, err := s.o.Client.Login(lctx, s.o.Email, s.o.Password)
	if err != nil {
		reason := err.Error()
		s.setState(reason, false)
		key := s.o.Keys.VSSession()
		wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer wcancel()
		s.o.Redis.HSet(wctx, key, "err", reason, "err_at", strconv.FormatInt(time.Now().UnixMilli(), 10))
		return vs.Cookie{}, err
	}
	key := s.o.Keys.VSSession()
	now := time.Now()
	var genCmd *redis.IntCmd
	_, err = s.o.Redis.TxPipelined(ctx, func(p redis.Pipeliner) error {
		genCmd = p.HIncrBy(ctx, key, "gen", 1)
		p.HSet(ctx, key, "at", strconv.FormatInt(now.UnixMilli(), 10), "cookie", s.o.Box.Seal(cookiePurpose, []byte(cookie)))
		p.HDel(ctx, key, "err", "err_at")
		return nil
	})
	if err != nil {
		s.setState("storing the session in redis: "+err.Error(), false)
		return vs.Cookie{}, err
	}
	ck := vs.Cookie{Value: cookie, Gen: genCmd.Val()}
	s.mu.Lock()
	s.cur, s.loginAt, s.fetchedAt, s.state = ck, now, now, "ok"
	s.notifyLocked()
	s.mu.Unlock()
	s.log.Info().Int64("generation", ck.Gen).Dur("took", time.Since(started)).Msg("logged in to vertical studio")
	return ck, nil
}

// failedSince returns the shared last login error if a login failed after t.
func (s *VS) failedSince(ctx context.Context, t time.Time) error {
	vals, err := s.o.Redis.HMGet(ctx, s.o.Keys.VSSession(), "err", "err_at").Result()
	if err != nil || vals[0] == nil || vals[1] == nil {
		return nil
	}
	at, _ := strconv.ParseInt(vals[1].(string), 10, 64)
	if at < t.UnixMilli() {
		return nil
	}
	reason := vals[0].(string)
	s.setState(reason, false)
	return &vs.Error{Kind: vs.KindNotReady, Op: "session", Msg: "login failed: " + reason}
}

// load reads the shared session from Redis into the cache and returns it
// (an empty cookie when there is none).
func (s *VS) load(ctx context.Context) (vs.Cookie, error) {
	vals, err := s.o.Redis.HMGet(ctx, s.o.Keys.VSSession(), "gen", "at", "cookie").Result()
	if err != nil {
		return vs.Cookie{}, err
	}
	if vals[0] == nil || vals[2] == nil {
		return vs.Cookie{}, nil
	}
	gen, _ := strconv.ParseInt(vals[0].(string), 10, 64)
	atMs, _ := strconv.ParseInt(str(vals[1]), 10, 64)
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen == s.cur.Gen && s.cur.Value != "" {
		s.fetchedAt = time.Now()
		return s.cur, nil
	}
	pt, err := s.o.Box.Open(cookiePurpose, vals[2].(string))
	if err != nil {
		// Sealed under another ENCRYPTION_KEY: unusable here, so log in anew.
		s.log.Warn().Msg("the shared vertical studio session does not decrypt with this ENCRYPTION_KEY; logging in again")
		return vs.Cookie{}, nil
	}
	s.cur = vs.Cookie{Value: string(pt), Gen: gen}
	s.loginAt, s.fetchedAt, s.state = time.UnixMilli(atMs), time.Now(), "ok"
	s.notifyLocked()
	return s.cur, nil
}

// setState records a failure (reason, ok=false), or "logging_in" (empty
// reason) when there is no cookie yet.
func (s *VS) setState(reason string, loggingIn bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.cur.Value != "":
		s.state = "ok" // a cookie that still works is what matters to clients
	case loggingIn:
		if s.state == "ok" || s.state == "" {
			s.state = "logging_in"
		}
	default:
		s.state = "failed: " + reason
	}
	s.notifyLocked()
}

func (s *VS) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func randomToken() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

var _ vs.Credentials = (*VS)(nil)
