// Package adminauth guards the admin API: the admin's credentials (a bcrypt
// hash in Redis, nowhere else), login with throttling per client address and
// per username, and HS256 tokens signed with JWT_SECRET whose sessions live
// in Redis, so logout and a password change revoke them.
package adminauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
	"golang.org/x/crypto/bcrypt"

	"github.com/relaydev/relay/internal/keyspace"
)

// Errors.
var (
	ErrBadCredentials = errors.New("wrong username or password")
	ErrExpiredToken   = errors.New("admin token expired")
	ErrRevokedToken   = errors.New("admin session ended (logged out, or the password changed)")
	ErrInvalidToken   = errBadToken
	ErrNoSecret       = errors.New("JWT_SECRET is not set")
	ErrWeakPassword   = errors.New("the new password must be 10 to 72 characters long")
)

// Throttled is returned by Login and ChangePassword while attempts are
// throttled.
type Throttled struct{ RetryAfter time.Duration }

func (t *Throttled) Error() string {
	return fmt.Sprintf("too many failed attempts; try again in %s", t.RetryAfter.Round(time.Second))
}

// Options configure Auth. Zero values take the defaults in the comments.
type Options struct {
	Secret        string           // JWT_SECRET (required for logins)
	TokenTTL      time.Duration    // token lifetime; 12h
	BcryptCost    int              // 12
	IPFailures    int              // attempts per client address per window; 5
	UserFailures  int              // attempts per username per window; 10
	FailureWindow time.Duration    // 15m
	Now           func() time.Time // time.Now
	Log           zerolog.Logger
}

// Auth is the admin's authentication. Safe for concurrent use.
type Auth struct {
	rdb redis.UniversalClient
	ks  keyspace.Keyspace
	o   Options

	dummyOnce sync.Once
	dummy     []byte // a hash to compare against when the username is wrong

	bootMu sync.Mutex
	boot   *[2]string // username and password of a Bootstrap that has not succeeded yet
}

// New returns the admin authentication over rdb.
func New(rdb redis.UniversalClient, ks keyspace.Keyspace, o Options) *Auth {
	if o.TokenTTL <= 0 {
		o.TokenTTL = 12 * time.Hour
	}
	if o.BcryptCost == 0 {
		o.BcryptCost = 12
	}
	if o.IPFailures <= 0 {
		o.IPFailures = 5
	}
	if o.UserFailures <= 0 {
		o.UserFailures = 10
	}
	if o.FailureWindow <= 0 {
		o.FailureWindow = 15 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Auth{rdb: rdb, ks: ks, o: o}
}

// credentials is the stored admin record.
type credentials struct {
	Username  string    `json:"username"`
	Hash      string    `json:"hash"` // bcrypt
	CreatedAt time.Time `json:"created_at"`
	ChangedAt time.Time `json:"changed_at"`
}

// Bootstrap creates the admin on first boot: with password if given, else
// with a generated one that is logged once, at warn, and nowhere else. An
// admin that exists is left alone, so a password changed through the API
// survives restarts and ADMIN_PASSWORD never overwrites it.
//
// If Redis does not answer, Bootstrap fails, and the next login tries again.
func (a *Auth) Bootstrap(ctx context.Context, username, password string) error {
	a.bootMu.Lock()
	defer a.bootMu.Unlock()
	a.boot = &[2]string{username, password}
	if err := a.bootstrap(ctx, username, password); err != nil {
		return err
	}
	a.boot = nil
	return nil
}

// retryBootstrap runs a Bootstrap that failed before, and reports whether it
// has now succeeded.
func (a *Auth) retryBootstrap(ctx context.Context) bool {
	a.bootMu.Lock()
	defer a.bootMu.Unlock()
	if a.boot == nil {
		return false
	}
	if err := a.bootstrap(ctx, a.boot[0], a.boot[1]); err != nil {
		a.o.Log.Warn().Err(err).Msg("could not create the admin account yet")
		return false
	}
	a.boot = nil
	return true
}

func (a *Auth) bootstrap(ctx context.Context, username, password string) error {
	existing, err := a.load(ctx)
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	if err == nil {
		if existing.Username != username {
			a.o.Log.Warn().Str("admin", existing.Username).
				Msg("an admin already exists under another name; ADMIN_USERNAME is used only on first boot")
		}
		return nil
	}
	generated := password == ""
	if generated {
		password = randomPassword(24)
	}
	if len(password) > 72 {
		return errors.New("ADMIN_PASSWORD: at most 72 bytes (bcrypt's limit)")
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(password), a.o.BcryptCost)
	if err != nil {
		return fmt.Errorf("hash admin password: %w", err)
	}
	now := a.o.Now().UTC()
	rec, _ := json.Marshal(credentials{Username: username, Hash: string(hash), CreatedAt: now, ChangedAt: now})
	ok, err := a.rdb.SetNX(ctx, a.ks.AdminCredentials(), rec, 0).Result()
	if err != nil {
		return fmt.Errorf("store admin credentials: %w", err)
	}
	if !ok {
		return nil // another replica created it first
	}
	if generated {
		a.o.Log.Warn().Str("username", username).Str("password", password).
			Msg("created the admin with a GENERATED PASSWORD, shown only this once: note it now, or set " +
				"ADMIN_PASSWORD before the first boot; change it with POST /admin/password")
	} else {
		a.o.Log.Info().Str("username", username).Msg("created the admin from ADMIN_USERNAME and ADMIN_PASSWORD")
	}
	return nil
}

func (a *Auth) load(ctx context.Context) (credentials, error) {
	raw, err := a.rdb.Get(ctx, a.ks.AdminCredentials()).Bytes()
	if err != nil {
		return credentials{}, err
	}
	var c credentials
	if err := json.Unmarshal(raw, &c); err != nil {
		return credentials{}, fmt.Errorf("decode admin credentials: %w", err)
	}
	return c, nil
}

// Session is a token handed out at login.
type Session struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	Username  string    `json:"username"`
}

// Login checks a username and password from client address ip and returns
// a new session. Attempts are throttled per address and per username
// (*Throttled); a success clears both counts.
func (a *Auth) Login(ctx context.Context, ip, username, password string) (Session, error) {
	if a.o.Secret == "" {
		return Session{}, ErrNoSecret
	}
	if err := a.takeAttempt(ctx, ip, username); err != nil {
		return Session{}, err
	}
	c, err := a.check(ctx, username, password)
	if err != nil {
		return Session{}, err
	}
	a.clearAttempts(ctx, ip, username)
	return a.issue(ctx, c.Username)
}

// check compares the credentials in about the same time whether the
// username is right or not.
func (a *Auth) check(ctx context.Context, username, password string) (credentials, error) {
	c, err := a.load(ctx)
	if errors.Is(err, redis.Nil) && a.retryBootstrap(ctx) {
		c, err = a.load(ctx)
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return credentials{}, err
	}
	hash := []byte(c.Hash)
	userOK := err == nil && subtle.ConstantTimeCompare([]byte(c.Username), []byte(username)) == 1
	if !userOK {
		hash = a.dummyHash()
	}
	pwErr := bcrypt.CompareHashAndPassword(hash, []byte(password))
	if !userOK || pwErr != nil {
		return credentials{}, ErrBadCredentials
	}
	return c, nil
}

func (a *Auth) dummyHash() []byte {
	a.dummyOnce.Do(func() {
		a.dummy, _ = bcrypt.GenerateFromPassword([]byte(randomPassword(24)), a.o.BcryptCost)
	})
	return a.dummy
}

func (a *Auth) issue(ctx context.Context, username string) (Session, error) {
	now := a.o.Now()
	exp := now.Add(a.o.TokenTTL).Truncate(time.Second)
	c := Claims{Issuer: issuer, Subject: username, ID: uuid.NewString(), IssuedAt: now.Unix(), Expires: exp.Unix()}
	tok, err := sign([]byte(a.o.Secret), c)
	if err != nil {
		return Session{}, err
	}
	pipe := a.rdb.Pipeline()
	pipe.Set(ctx, a.ks.AdminSession(c.ID), username, exp.Sub(now))
	pipe.ZAdd(ctx, a.ks.AdminSessions(), redis.Z{Score: float64(exp.Unix()), Member: c.ID})
	pipe.ZRemRangeByScore(ctx, a.ks.AdminSessions(), "-inf", fmt.Sprint(now.Unix()))
	if _, err := pipe.Exec(ctx); err != nil {
		return Session{}, fmt.Errorf("store admin session: %w", err)
	}
	return Session{Token: tok, ExpiresAt: exp.UTC(), Username: username}, nil
}

// Verify checks a token: signature, lifetime, and that its session is live.
func (a *Auth) Verify(ctx context.Context, token string) (Claims, error) {
	if a.o.Secret == "" {
		return Claims{}, ErrNoSecret
	}
	c, err := verify([]byte(a.o.Secret), token, a.o.Now())
	if err != nil {
		return Claims{}, err
	}
	user, err := a.rdb.Get(ctx, a.ks.AdminSession(c.ID)).Result()
	if errors.Is(err, redis.Nil) {
		return Claims{}, ErrRevokedToken
	}
	if err != nil {
		return Claims{}, fmt.Errorf("read admin session: %w", err)
	}
	if subtle.ConstantTimeCompare([]byte(user), []byte(c.Subject)) != 1 {
		return Claims{}, ErrRevokedToken
	}
	return c, nil
}

// Logout ends the session of c.
func (a *Auth) Logout(ctx context.Context, c Claims) error {
	pipe := a.rdb.Pipeline()
	pipe.Del(ctx, a.ks.AdminSession(c.ID))
	pipe.ZRem(ctx, a.ks.AdminSessions(), c.ID)
	_, err := pipe.Exec(ctx)
	return err
}

// ChangePassword sets a new password for the admin of c after checking the
// current one (throttled like logins), ends every session, and returns a new
// one for the caller.
func (a *Auth) ChangePassword(ctx context.Context, ip string, c Claims, current, next string) (Session, error) {
	if len(next) < 10 || len(next) > 72 {
		return Session{}, ErrWeakPassword
	}
	if err := a.takeAttempt(ctx, ip, c.Subject); err != nil {
		return Session{}, err
	}
	cred, err := a.check(ctx, c.Subject, current)
	if err != nil {
		return Session{}, err
	}
	a.clearAttempts(ctx, ip, c.Subject)
	hash, err := bcrypt.GenerateFromPassword([]byte(next), a.o.BcryptCost)
	if err != nil {
		return Session{}, err
	}
	cred.Hash, cred.ChangedAt = string(hash), a.o.Now().UTC()
	rec, _ := json.Marshal(cred)
	if err := a.rdb.Set(ctx, a.ks.AdminCredentials(), rec, 0).Err(); err != nil {
		return Session{}, fmt.Errorf("store admin credentials: %w", err)
	}
	if err := a.revokeAll(ctx); err != nil {
		return Session{}, err
	}
	return a.issue(ctx, cred.Username)
}

func (a *Auth) revokeAll(ctx context.Context) error {
	ids, err := a.rdb.ZRange(ctx, a.ks.AdminSessions(), 0, -1).Result()
	if err != nil {
		return fmt.Errorf("list admin sessions: %w", err)
	}
	pipe := a.rdb.Pipeline()
	for _, id := range ids {
		pipe.Del(ctx, a.ks.AdminSession(id))
	}
	pipe.Del(ctx, a.ks.AdminSessions())
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("revoke admin sessions: %w", err)
	}
	return nil
}

// attemptScript counts one login attempt against a client address and a
// username, unless either has used up its attempts in the window. Counting
// before the password is checked makes parallel guessing no faster.
//
// KEYS[1] attempts of the address; KEYS[2] attempts of the username
// ARGV[1] address limit; ARGV[2] username limit; ARGV[3] window (ms)
// Returns 0 when the attempt may go ahead (it is counted), else the ms to
// wait.
var attemptScript = redis.NewScript(`
local wait = 0
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
for i = 1, 2 do
  local n = tonumber(redis.call('GET', KEYS[i]) or '0')
  if n >= limits[i] then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then ttl = tonumber(ARGV[3]) end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
end
return 0
`)

func (a *Auth) attemptKeys(ip, username string) []string {
	sum := sha256.Sum256([]byte(strings.ToLower(username)))
	return []string{a.ks.AdminLoginFailures("ip", ip), a.ks.AdminLoginFailures("user", hex.EncodeToString(sum[:16]))}
}

func (a *Auth) takeAttempt(ctx context.Context, ip, username string) error {
	wait, err := attemptScript.Run(ctx, a.rdb, a.attemptKeys(ip, username),
		a.o.IPFailures, a.o.UserFailures, a.o.FailureWindow.Milliseconds()).Int64()
	if err != nil {
		return fmt.Errorf("login throttle: %w", err)
	}
	if wait > 0 {
		return &Throttled{RetryAfter: time.Duration(wait) * time.Millisecond}
	}
	return nil
}

func (a *Auth) clearAttempts(ctx context.Context, ip, username string) {
	if err := a.rdb.Del(ctx, a.attemptKeys(ip, username)...).Err(); err != nil {
		a.o.Log.Warn().Err(err).Msg("could not clear login attempts")
	}
}

const passwordAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"

func randomPassword(n int) string {
	b := make([]byte, n)
	max := big.NewInt(int64(len(passwordAlphabet)))
	for i := range b {
		v, err := rand.Int(rand.Reader, max)
		if err != nil {
			panic("crypto/rand: " + err.Error())
		}
		b[i] = passwordAlphabet[v.Int64()]
	}
	return string(b)
}
