package apikeys

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
)

// Errors of authentication and of the admin operations.
var (
	ErrInvalidKey = errors.New("invalid api key") // malformed, unknown, deleted or regenerated
	ErrDisabled   = errors.New("api key disabled")
	ErrExpired    = errors.New("api key expired")
	ErrNotFound   = errors.New("no such api key")
)

// InvalidError is a setting that does not validate (Create, Update).
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

// Record hash fields.
const (
	fieldRecord      = "rec"
	fieldActivatedAt = "activated_at"
)

// Options configure a Store. Zero values take the defaults in the comments.
type Options struct {
	Prefix   string           // key prefix; DefaultPrefix
	CacheTTL time.Duration    // in-process lookup cache; 500ms
	LeaseTTL time.Duration    // concurrency lease lifetime, renewed at a third of it; 60s
	Now      func() time.Time // clock; time.Now
	Log      zerolog.Logger
}

// Store keeps API keys in Redis. It is safe for concurrent use.
type Store struct {
	rdb      redis.UniversalClient
	ks       keyspace.Keyspace
	prefix   string
	cache    *cache
	leaseTTL time.Duration
	now      func() time.Time
	log      zerolog.Logger

	rel *releaser
}

// NewStore returns a store of keys in rdb under ks.
func NewStore(rdb redis.UniversalClient, ks keyspace.Keyspace, o Options) *Store {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.CacheTTL <= 0 {
		o.CacheTTL = 500 * time.Millisecond
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 60 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Store{
		rdb: rdb, ks: ks, prefix: o.Prefix, cache: newCache(o.CacheTTL, 100_000),
		leaseTTL: o.LeaseTTL, now: o.Now, log: o.Log,
	}
	s.rel = newReleaser(s)
	return s
}

// Prefix is the prefix every key of this store starts with.
func (s *Store) Prefix() string { return s.prefix }

// Start runs the background releaser that frees concurrency leases off the
// response path. Without it (or after Stop) leases are freed inline.
func (s *Store) Start(ctx context.Context) error { return s.rel.start(ctx) }

// Stop frees the leases still queued and stops the releaser. Idempotent.
func (s *Store) Stop() { s.rel.stop() }

// Authenticate finds the key a client sent. It returns ErrInvalidKey for a
// key that is malformed or unknown, and the key with ErrDisabled or
// ErrExpired for one that exists but may not be used. Most calls are
// answered from the in-process cache; the rest cost one Redis round trip.
func (s *Store) Authenticate(ctx context.Context, raw string) (*Key, error) {
	if !WellFormed(s.prefix, raw) {
		return nil, ErrInvalidKey
	}
	digest := Digest(raw)
	now := s.now()
	k, ok := s.cache.get(digest, now)
	if !ok {
		var err error
		k, err = s.load(ctx, digest)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		s.cache.put(digest, k, now)
	}
	if k == nil || subtle.ConstantTimeCompare([]byte(k.Digest), []byte(digest)) != 1 {
		return nil, ErrInvalidKey
	}
	if !k.Enabled {
		return k, ErrDisabled
	}
	if k.Expired(now) {
		return k, ErrExpired
	}
	return k, nil
}

// load reads the record stored under digest (ErrNotFound if none).
func (s *Store) load(ctx context.Context, digest string) (*Key, error) {
	vals, err := s.rdb.HMGet(ctx, s.ks.APIKeyRecord(digest), fieldRecord, fieldActivatedAt).Result()
	if err != nil {
		return nil, fmt.Errorf("read api key: %w", err)
	}
	return decodeRecord(vals)
}

func decodeRecord(vals []any) (*Key, error) {
	rec, _ := vals[0].(string)
	if rec == "" {
		return nil, ErrNotFound
	}
	k := new(Key)
	if err := json.Unmarshal([]byte(rec), k); err != nil {
		return nil, fmt.Errorf("decode api key record: %w", err)
	}
	if a, _ := vals[1].(string); a != "" {
		if ms, err := strconv.ParseInt(a, 10, 64); err == nil {
			k.ActivatedAt = time.UnixMilli(ms).UTC()
		}
	}
	return k, nil
}

// Create stores a new key built from k's settings and returns the plaintext
// key, which exists nowhere else afterwards, and the stored record.
func (s *Store) Create(ctx context.Context, k Key) (string, *Key, error) {
	if k.Permissions == nil {
		k.Permissions = slices.Clone(AllServices)
	}
	if err := k.Validate(); err != nil {
		return "", nil, &InvalidError{err}
	}
	raw, digest, err := NewSecret(s.prefix)
	if err != nil {
		return "", nil, err
	}
	now := s.now().UTC()
	k.ID = uuid.NewString()
	k.Digest, k.Hint = digest, hint(s.prefix, raw)
	k.CreatedAt, k.UpdatedAt = now, now
	k.ActivatedAt = time.Time{}
	rec, err := json.Marshal(&k)
	if err != nil {
		return "", nil, err
	}
	pipe := s.rdb.Pipeline()
	pipe.HSet(ctx, s.ks.APIKeyRecord(digest), fieldRecord, rec)
	pipe.Set(ctx, s.ks.APIKeyDigest(k.ID), digest, 0)
	pipe.ZAdd(ctx, s.ks.APIKeyIndex(), redis.Z{Score: float64(now.UnixMilli()), Member: k.ID})
	if _, err := pipe.Exec(ctx); err != nil {
		return "", nil, fmt.Errorf("store api key: %w", err)
	}
	s.cache.forget(digest)
	return raw, &k, nil
}

// Get returns the key with id.
func (s *Store) Get(ctx context.Context, id string) (*Key, error) {
	ks, err := s.loadIDs(ctx, []string{id})
	if err != nil {
		return nil, err
	}
	if ks[0] == nil {
		return nil, ErrNotFound
	}
	return ks[0], nil
}

// loadIDs reads the records of ids in two round trips; a missing one is nil.
func (s *Store) loadIDs(ctx context.Context, ids []string) ([]*Key, error) {
	out := make([]*Key, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	pipe := s.rdb.Pipeline()
	digests := make([]*redis.StringCmd, len(ids))
	for i, id := range ids {
		digests[i] = pipe.Get(ctx, s.ks.APIKeyDigest(id))
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("read api key ids: %w", err)
	}
	pipe = s.rdb.Pipeline()
	recs := make([]*redis.SliceCmd, len(ids))
	for i := range ids {
		if d := digests[i].Val(); d != "" {
			recs[i] = pipe.HMGet(ctx, s.ks.APIKeyRecord(d), fieldRecord, fieldActivatedAt)
		}
	}
	if pipe.Len() == 0 {
		return out, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("read api keys: %w", err)
	}
	for i, cmd := range recs {
		if cmd == nil {
			continue
		}
		k, err := decodeRecord(cmd.Val())
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[i] = k
	}
	return out, nil
}

// writeIfExists replaces the record under KEYS[1] only while the record
// exists, so an update racing a delete or a regenerate cannot bring back a
// key that was just removed.
//
// KEYS[1] record hash; ARGV[1] record JSON. Returns 1 if written, 0 if the
// record no longer exists.
var writeIfExists = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then return 0 end
redis.call('HSET', KEYS[1], 'rec', ARGV[1])
return 1
`)

// Update applies change to the key with id and stores the result. change
// may not alter the id, digest or creation time.
func (s *Store) Update(ctx context.Context, id string, change func(*Key) error) (*Key, error) {
	for attempt := 0; attempt < 5; attempt++ {
		k, err := s.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		next := *k
		next.Tags = slices.Clone(k.Tags)
		next.Permissions = slices.Clone(k.Permissions)
		next.AllowModels = slices.Clone(k.AllowModels)
		next.DenyModels = slices.Clone(k.DenyModels)
		if err := change(&next); err != nil {
			return nil, err
		}
		next.ID, next.Digest, next.Hint, next.CreatedAt, next.ActivatedAt = k.ID, k.Digest, k.Hint, k.CreatedAt, k.ActivatedAt
		if err := next.Validate(); err != nil {
			return nil, &InvalidError{err}
		}
		next.UpdatedAt = s.now().UTC()
		rec, err := json.Marshal(&next)
		if err != nil {
			return nil, err
		}
		n, err := writeIfExists.Run(ctx, s.rdb, []string{s.ks.APIKeyRecord(k.Digest)}, rec).Int()
		if err != nil {
			return nil, fmt.Errorf("store api key: %w", err)
		}
		s.cache.forget(k.Digest)
		if n == 1 {
			return &next, nil
		}
		// Regenerated or deleted meanwhile: read it again.
	}
	return nil, errors.New("api key changed too often while updating it; try again")
}

// Regenerate replaces the key's secret: the old key stops working (on other
// replicas within the cache TTL) and the new plaintext key is returned once.
// Settings, counters and the first-use time stay.
func (s *Store) Regenerate(ctx context.Context, id string) (string, *Key, error) {
	k, err := s.Get(ctx, id)
	if err != nil {
		return "", nil, err
	}
	raw, digest, err := NewSecret(s.prefix)
	if err != nil {
		return "", nil, err
	}
	next := *k
	next.Digest, next.Hint = digest, hint(s.prefix, raw)
	next.UpdatedAt = s.now().UTC()
	rec, err := json.Marshal(&next)
	if err != nil {
		return "", nil, err
	}
	pipe := s.rdb.Pipeline()
	pipe.HSet(ctx, s.ks.APIKeyRecord(digest), fieldRecord, rec)
	if !k.ActivatedAt.IsZero() {
		pipe.HSet(ctx, s.ks.APIKeyRecord(digest), fieldActivatedAt, k.ActivatedAt.UnixMilli())
	}
	pipe.Set(ctx, s.ks.APIKeyDigest(id), digest, 0)
	pipe.Del(ctx, s.ks.APIKeyRecord(k.Digest))
	if _, err := pipe.Exec(ctx); err != nil {
		return "", nil, fmt.Errorf("store api key: %w", err)
	}
	s.cache.forget(k.Digest)
	return raw, &next, nil
}

// Delete removes the key for good.
func (s *Store) Delete(ctx context.Context, id string) error {
	k, err := s.Get(ctx, id)
	if err != nil {
		return err
	}
	pipe := s.rdb.Pipeline()
	pipe.Del(ctx, s.ks.APIKeyRecord(k.Digest))
	pipe.Del(ctx, s.ks.APIKeyDigest(id))
	pipe.ZRem(ctx, s.ks.APIKeyIndex(), id)
	pipe.Del(ctx, s.ks.APIKeyLeases(id))
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("delete api key: %w", err)
	}
	s.cache.forget(k.Digest)
	return nil
}

// ListQuery selects and pages keys, newest first.
type ListQuery struct {
	Offset, Limit int    // Limit defaults to 50, at most 500
	Search        string // substring of the name, description, hint or id (case-insensitive)
	Tag           string // exact tag
	Enabled       *bool
}

func (q ListQuery) filtered() bool { return q.Search != "" || q.Tag != "" || q.Enabled != nil }

func (q ListQuery) match(k *Key) bool {
	if q.Enabled != nil && k.Enabled != *q.Enabled {
		return false
	}
	if q.Tag != "" && !slices.Contains(k.Tags, q.Tag) {
		return false
	}
	if q.Search != "" {
		s := strings.ToLower(q.Search)
		if !strings.Contains(strings.ToLower(k.Name), s) && !strings.Contains(strings.ToLower(k.Description), s) &&
			!strings.Contains(k.ID, s) && !strings.HasSuffix(k.Hint, s) {
			return false
		}
	}
	return true
}

// List returns one page of keys and how many keys match in all.
func (s *Store) List(ctx context.Context, q ListQuery) ([]*Key, int, error) {
	if q.Limit <= 0 {
		q.Limit = 50
	}
	q.Limit = min(q.Limit, 500)
	q.Offset = max(q.Offset, 0)
	idx := s.ks.APIKeyIndex()
	if !q.filtered() {
		pipe := s.rdb.Pipeline()
		total := pipe.ZCard(ctx, idx)
		ids := pipe.ZRevRange(ctx, idx, int64(q.Offset), int64(q.Offset+q.Limit-1))
		if _, err := pipe.Exec(ctx); err != nil {
			return nil, 0, fmt.Errorf("list api keys: %w", err)
		}
		ks, err := s.loadIDs(ctx, ids.Val())
		if err != nil {
			return nil, 0, err
		}
		return compact(ks), int(total.Val()), nil
	}
	// Filtered: read every key in batches (admin scale: thousands at most).
	var out []*Key
	total := 0
	for start := int64(0); ; start += 500 {
		ids, err := s.rdb.ZRevRange(ctx, idx, start, start+499).Result()
		if err != nil {
			return nil, 0, fmt.Errorf("list api keys: %w", err)
		}
		ks, err := s.loadIDs(ctx, ids)
		if err != nil {
			return nil, 0, err
		}
		for _, k := range ks {
			if k == nil || !q.match(k) {
				continue
			}
			if total >= q.Offset && len(out) < q.Limit {
				out = append(out, k)
			}
			total++
		}
		if len(ids) < 500 {
			break
		}
	}
	return out, total, nil
}

func compact(ks []*Key) []*Key {
	out := ks[:0]
	for _, k := range ks {
		if k != nil {
			out = append(out, k)
		}
	}
	return out
}

// activate records the first use of an activation key, once: of two
// replicas activating at the same moment, both end up with the same time.
//
// KEYS[1] record hash; ARGV[1] now (unix ms). Returns the activation time
// (unix ms), or false if the record no longer exists.
var activate = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], 'rec') == 0 then return false end
redis.call('HSETNX', KEYS[1], 'activated_at', ARGV[1])
return redis.call('HGET', KEYS[1], 'activated_at')
`)

// Activate starts the clock of an activation key on its first use and
// returns the key with ActivatedAt set. Other keys are returned as they are.
func (s *Store) Activate(ctx context.Context, k *Key) (*Key, error) {
	if k.Expiry.Mode != ExpiryActivation || !k.ActivatedAt.IsZero() {
		return k, nil
	}
	now := s.now()
	v, err := activate.Run(ctx, s.rdb, []string{s.ks.APIKeyRecord(k.Digest)}, now.UnixMilli()).Text()
	if errors.Is(err, redis.Nil) {
		s.cache.forget(k.Digest)
		return nil, ErrInvalidKey
	}
	if err != nil {
		return nil, fmt.Errorf("activate api key: %w", err)
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil, fmt.Errorf("activate api key: bad time %q", v)
	}
	next := *k
	next.ActivatedAt = time.UnixMilli(ms).UTC()
	s.cache.put(k.Digest, &next, now)
	if next.Expired(now) {
		return &next, ErrExpired
	}
	return &next, nil
}
