package accounts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/secretbox"
)

// ErrNotFound is returned for an account id that does not exist.
var ErrNotFound = errors.New("accounts: no such account")

// InvalidError is an account that cannot be saved as given; its message says
// what is wrong and can be shown to an administrator.
type InvalidError struct{ Msg string }

func (e *InvalidError) Error() string { return e.Msg }

func invalid(format string, args ...any) error {
	return &InvalidError{Msg: fmt.Sprintf(format, args...)}
}

// Fields of an account's hash. The state lives in one field per value, so
// two replicas marking different things never overwrite each other's.
const (
	fRecord      = "record"    // JSON of Account without State and LastUsedAt
	fSecret      = "secret"    // sealed JSON of Credentials
	fLastUsed    = "last_used" // unix milliseconds
	fRLUntil     = "s:rl_until"
	fRLReason    = "s:rl_reason"
	fPauseUntil  = "s:pause_until"
	fPauseReason = "s:pause_reason"
	fReauth      = "s:reauth"
	fReauthWhy   = "s:reauth_reason"
	fReauthSince = "s:reauth_since"
	fErr         = "s:err"
	fErrAt       = "s:err_at"
)

// Store keeps accounts in Redis. Request paths read them from an in-process
// view that is checked against a version counter at most once per sync
// interval and reloaded only when something changed; admin paths read Redis
// directly. It is safe for concurrent use.
type Store struct {
	rdb       redis.UniversalClient
	keys      keyspace.Keyspace
	box       *secretbox.Box
	syncEvery time.Duration
	now       func() time.Time

	mu      sync.Mutex
	view    *view
	syncing bool
}

// view is a replica's copy of every account. Its entries are guarded by
// Store.mu.
type view struct {
	version  int64
	checked  time.Time
	accounts map[string]*entry
}

type entry struct {
	acct   Account
	sealed string
	creds  *Credentials // opened on first use
}

// NewStore makes a store. now is the clock the scheduler's states are read
// against (time.Now in production; tests pass one they move).
func NewStore(rdb redis.UniversalClient, keys keyspace.Keyspace, box *secretbox.Box, syncEvery time.Duration, now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{rdb: rdb, keys: keys, box: box, syncEvery: syncEvery, now: now}
}

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }

func credPurpose(id string) string { return "account:" + id + ":credentials" }

// Create validates a and saves it with creds under a new id.
func (s *Store) Create(ctx context.Context, a Account, creds Credentials) (Account, error) {
	now := s.now().UTC()
	a.ID = uuid.NewString()
	a.CreatedAt, a.UpdatedAt = now, now
	a.State, a.LastUsedAt = State{}, time.Time{}
	if a.Priority == 0 {
		a.Priority = 50
	}
	a.Proxy = MaskProxy(creds.Proxy)
	if err := validate(&a, creds); err != nil {
		return Account{}, err
	}
	rec, err := json.Marshal(a)
	if err != nil {
		return Account{}, err
	}
	sealed, err := s.seal(a.ID, creds)
	if err != nil {
		return Account{}, err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.keys.Account(a.ID), fRecord, rec, fSecret, sealed)
		p.SAdd(ctx, s.keys.AccountIndex(), a.ID)
		p.Incr(ctx, s.keys.AccountVersion())
		return nil
	})
	if err != nil {
		return Account{}, fmt.Errorf("save account: %w", err)
	}
	s.invalidate()
	return a, nil
}

// Update changes the account's record with fn and, when creds is not nil,
// replaces its credentials (which also clears a re-authorization mark).
func (s *Store) Update(ctx context.Context, id string, fn func(a *Account) error, creds *Credentials) (Account, error) {
	a, cur, err := s.load(ctx, id)
	if err != nil {
		return Account{}, err
	}
	keep := a
	if fn != nil {
		if err := fn(&a); err != nil {
			return Account{}, err
		}
	}
	// What fn may not change.
	a.ID, a.Kind, a.CreatedAt, a.State, a.LastUsedAt = keep.ID, keep.Kind, keep.CreatedAt, keep.State, keep.LastUsedAt
	a.UpdatedAt = s.now().UTC()
	next := cur
	if creds != nil {
		next = *creds
	}
	a.Proxy = MaskProxy(next.Proxy)
	if err := validate(&a, next); err != nil {
		return Account{}, err
	}
	rec, err := json.Marshal(recordOf(a))
	if err != nil {
		return Account{}, err
	}
	_, err = s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, s.keys.Account(id), fRecord, rec)
		if creds != nil {
			sealed, err := s.seal(id, *creds)
			if err != nil {
				return err
			}
			p.HSet(ctx, s.keys.Account(id), fSecret, sealed)
			p.HDel(ctx, s.keys.Account(id), fReauth, fReauthWhy, fReauthSince)
			a.State.NeedsReauth, a.State.ReauthReason, a.State.ReauthSince = false, "", time.Time{}
		}
		p.Incr(ctx, s.keys.AccountVersion())
		return nil
	})
	if err != nil {
		return Account{}, fmt.Errorf("save account: %w", err)
	}
	s.invalidate()
	return a, nil
}

// SetTokens stores refreshed OAuth tokens: new credentials, the new expiry
// and identity, and clears a re-authorization mark. It is what the token
// refresher and the OAuth code exchange call.
func (s *Store) SetTokens(ctx context.Context, id string, creds Credentials, expiresAt time.Time, scopes string) (Account, error) {
	return s.Update(ctx, id, func(a *Account) error {
		a.TokenExpiresAt = expiresAt.UTC()
		if scopes != "" {
			a.Scopes = scopes
		}
		return nil
	}, &creds)
}

// Delete removes the account. Keys bound to it then get a clear error
// until they are rebound.
func (s *Store) Delete(ctx context.Context, id string) error {
	res, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Del(ctx, s.keys.Account(id))
		p.SRem(ctx, s.keys.AccountIndex(), id)
		p.Incr(ctx, s.keys.AccountVersion())
		return nil
	})
	if err != nil {
		return err
	}
	if res[0].(*redis.IntCmd).Val() == 0 {
		return ErrNotFound
	}
	s.invalidate()
	return nil
}

// Get reads one account from Redis.
func (s *Store) Get(ctx context.Context, id string) (Account, error) {
	a, _, err := s.loadRecord(ctx, id)
	return a, err
}

// Credentials reads and opens one account's credentials from Redis.
func (s *Store) Credentials(ctx context.Context, id string) (Account, Credentials, error) {
	return s.load(ctx, id)
}

// List reads every account from Redis, ordered by kind, priority and name.
func (s *Store) List(ctx context.Context) ([]Account, error) {
	v, err := s.loadAll(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Account, 0, len(v.accounts))
	for _, e := range v.accounts {
		out = append(out, e.acct)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		if a.Priority != b.Priority {
			return a.Priority < b.Priority
		}
		return a.Name < b.Name
	})
	return out, nil
}

// mark writes state fields (and removes others) and bumps the version, then
// applies the same change to this replica's view.
func (s *Store) mark(ctx context.Context, id string, set map[string]any, del []string, apply func(*State)) error {
	var ver *redis.IntCmd
	_, err := s.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		// Only an existing account is marked: HSET on a deleted one would
		// bring back a hash with no record.
		if len(set) > 0 {
			args := make([]any, 0, 2*len(set))
			for k, v := range set {
				args = append(args, k, v)
			}
			p.Eval(ctx, markScript, []string{s.keys.Account(id)}, args...)
		}
		if len(del) > 0 {
			p.HDel(ctx, s.keys.Account(id), del...)
		}
		ver = p.Incr(ctx, s.keys.AccountVersion())
		return nil
	})
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.view == nil {
		return nil
	}
	if e := s.view.accounts[id]; e != nil {
		apply(&e.acct.State)
	}
	if ver.Val() == s.view.version+1 {
		s.view.version = ver.Val() // nothing else changed in between: the view is current
	}
	return nil
}

// markScript sets fields of an account hash only if the account exists.
//
// KEYS[1]: the account hash. ARGV: field, value, field, value, ...
// Returns 1 if the fields were set, 0 if the account does not exist.
const markScript = `
if redis.call('HEXISTS', KEYS[1], 'record') == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1`

func ms(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// MarkRateLimited keeps the account out of the pool until until.
func (s *Store) MarkRateLimited(ctx context.Context, id string, until time.Time, reason string) error {
	now := s.now()
	return s.mark(ctx, id, map[string]any{fRLUntil: ms(until), fRLReason: reason, fErr: reason, fErrAt: ms(now)}, nil,
		func(st *State) {
			st.RateLimitedUntil, st.RateLimitReason, st.LastError, st.LastErrorAt = until, reason, reason, now
		})
}

// MarkPaused keeps the account out of the pool until until (an overload, a
// 5xx, a connection failure).
func (s *Store) MarkPaused(ctx context.Context, id string, until time.Time, reason string) error {
	now := s.now()
	return s.mark(ctx, id, map[string]any{fPauseUntil: ms(until), fPauseReason: reason, fErr: reason, fErrAt: ms(now)}, nil,
		func(st *State) {
			st.PausedUntil, st.PauseReason, st.LastError, st.LastErrorAt = until, reason, reason, now
		})
}

// MarkNeedsReauth keeps the account out of the pool until its credentials
// are replaced or refreshed.
func (s *Store) MarkNeedsReauth(ctx context.Context, id, reason string) error {
	now := s.now()
	return s.mark(ctx, id, map[string]any{fReauth: "1", fReauthWhy: reason, fReauthSince: ms(now), fErr: reason, fErrAt: ms(now)}, nil,
		func(st *State) {
			st.NeedsReauth, st.ReauthReason, st.ReauthSince, st.LastError, st.LastErrorAt = true, reason, now, reason, now
		})
}

// ClearState clears rate limits, pauses and the re-authorization mark (an
// administrator's "reset status").
func (s *Store) ClearState(ctx context.Context, id string) error {
	return s.mark(ctx, id, nil, []string{fRLUntil, fRLReason, fPauseUntil, fPauseReason, fReauth, fReauthWhy, fReauthSince},
		func(st *State) { *st = State{LastError: st.LastError, LastErrorAt: st.LastErrorAt} })
}

// current returns this replica's view, reloading it when it is older than
// the sync interval and Redis has a newer version. Only one request reloads
// at a time; the others keep using the view they have.
func (s *Store) current(ctx context.Context) (*view, error) {
	s.mu.Lock()
	v := s.view
	if v != nil && (s.syncing || s.now().Sub(v.checked) < s.syncEvery && !v.checked.IsZero()) {
		s.mu.Unlock()
		return v, nil
	}
	s.syncing = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.syncing = false
		s.mu.Unlock()
	}()

	if v != nil && !v.checked.IsZero() {
		ver, err := s.rdb.Get(ctx, s.keys.AccountVersion()).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			return v, nil // Redis trouble: keep serving with what we know
		}
		s.mu.Lock()
		if ver == s.view.version {
			s.view.checked = s.now()
			s.mu.Unlock()
			return v, nil
		}
		s.mu.Unlock()
	}
	nv, err := s.loadAll(ctx)
	if err != nil {
		if v != nil {
			return v, nil
		}
		return nil, err
	}
	s.mu.Lock()
	// Keep the later of the local and the loaded last-use times: a replica's
	// own picks are written to Redis in the same round trip, but may not be
	// there yet.
	if s.view != nil {
		for id, e := range nv.accounts {
			if old := s.view.accounts[id]; old != nil && old.acct.LastUsedAt.After(e.acct.LastUsedAt) {
				e.acct.LastUsedAt = old.acct.LastUsedAt
			}
		}
	}
	s.view = nv
	s.mu.Unlock()
	return nv, nil
}

// invalidate makes the next request reload the view.
func (s *Store) invalidate() {
	s.mu.Lock()
	if s.view != nil {
		s.view.checked = time.Time{}
	}
	s.mu.Unlock()
}

// Sync reloads this replica's view now.
func (s *Store) Sync(ctx context.Context) error {
	s.invalidate()
	_, err := s.current(ctx)
	return err
}

// loadAll reads every account.
func (s *Store) loadAll(ctx context.Context) (*view, error) {
	ver, err := s.rdb.Get(ctx, s.keys.AccountVersion()).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	ids, err := s.rdb.SMembers(ctx, s.keys.AccountIndex()).Result()
	if err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	p := s.rdb.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(ids))
	for i, id := range ids {
		cmds[i] = p.HGetAll(ctx, s.keys.Account(id))
	}
	if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	v := &view{version: ver, checked: s.now(), accounts: make(map[string]*entry, len(ids))}
	for i, id := range ids {
		h := cmds[i].Val()
		if h[fRecord] == "" {
			continue
		}
		a, err := decode(h)
		if err != nil {
			return nil, fmt.Errorf("account %s: %w", id, err)
		}
		v.accounts[id] = &entry{acct: a, sealed: h[fSecret]}
	}
	return v, nil
}

func (s *Store) loadRecord(ctx context.Context, id string) (Account, string, error) {
	h, err := s.rdb.HGetAll(ctx, s.keys.Account(id)).Result()
	if err != nil {
		return Account{}, "", err
	}
	if h[fRecord] == "" {
		return Account{}, "", ErrNotFound
	}
	a, err := decode(h)
	return a, h[fSecret], err
}

func (s *Store) load(ctx context.Context, id string) (Account, Credentials, error) {
	a, sealed, err := s.loadRecord(ctx, id)
	if err != nil {
		return Account{}, Credentials{}, err
	}
	c, err := s.open(id, sealed)
	return a, c, err
}

func (s *Store) seal(id string, c Credentials) (string, error) {
	b, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	return s.box.Seal(credPurpose(id), b), nil
}

func (s *Store) open(id, sealed string) (Credentials, error) {
	var c Credentials
	if sealed == "" {
		return c, nil
	}
	b, err := s.box.Open(credPurpose(id), sealed)
	if err != nil {
		return c, fmt.Errorf("account %s credentials: %w", id, err)
	}
	err = json.Unmarshal(b, &c)
	return c, err
}

// credentialsOf opens an entry's credentials once; the caller holds s.mu.
func (s *Store) credentialsOf(e *entry) (Credentials, error) {
	if e.creds != nil {
		return *e.creds, nil
	}
	c, err := s.open(e.acct.ID, e.sealed)
	if err != nil {
		return c, err
	}
	e.creds = &c
	return c, nil
}

func recordOf(a Account) Account {
	a.State, a.LastUsedAt = State{}, time.Time{}
	return a
}

func decode(h map[string]string) (Account, error) {
	var a Account
	if err := json.Unmarshal([]byte(h[fRecord]), &a); err != nil {
		return a, fmt.Errorf("decode record: %w", err)
	}
	t := func(f string) time.Time {
		n, err := strconv.ParseInt(h[f], 10, 64)
		if err != nil || n == 0 {
			return time.Time{}
		}
		return time.UnixMilli(n)
	}
	a.LastUsedAt = t(fLastUsed)
	a.State = State{
		RateLimitedUntil: t(fRLUntil), RateLimitReason: h[fRLReason],
		PausedUntil: t(fPauseUntil), PauseReason: h[fPauseReason],
		NeedsReauth: h[fReauth] == "1", ReauthReason: h[fReauthWhy], ReauthSince: t(fReauthSince),
		LastError: h[fErr], LastErrorAt: t(fErrAt),
	}
	return a, nil
}

func validate(a *Account, c Credentials) error {
	a.Name = strings.TrimSpace(a.Name)
	switch {
	case a.Name == "":
		return invalid("name is required")
	case len(a.Name) > 100:
		return invalid("name is longer than 100 characters")
	case !a.Kind.Valid():
		return invalid("kind must be one of claude-oauth, claude-console, gemini-oauth, gemini-api")
	case a.Priority < 1 || a.Priority > 100:
		return invalid("priority must be from 1 (preferred) to 100")
	}
	if a.BaseURL != "" {
		u, err := url.Parse(a.BaseURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return invalid("base_url must be an absolute http(s) URL")
		}
		a.BaseURL = strings.TrimRight(a.BaseURL, "/")
	}
	if err := CheckProxy(c.Proxy); err != nil {
		return invalid("%s", err.Error())
	}
	for i, m := range a.Models {
		a.Models[i] = strings.TrimSpace(m)
		if a.Models[i] == "" {
			return invalid("models must not contain empty names")
		}
	}
	if a.Kind.OAuth() {
		if c.AccessToken == "" && c.RefreshToken == "" {
			return invalid("an OAuth account needs an access token or a refresh token")
		}
	} else if c.APIKey == "" {
		return invalid("api_key is required for a %s account", a.Kind)
	}
	return nil
}
