// Package apikeys holds the relay's API keys: the key record and its limits,
// the Redis store (with a short in-process cache on the request path), and
// the admission check that enforces a key's limits on every client request.
//
// A key is "<prefix><64 hex>" from crypto/rand. It is shown once, when it is
// created or regenerated, and stored only as its SHA-256 digest. The key has
// 256 bits of entropy, so the digest needs no pepper: rotating ENCRYPTION_KEY
// leaves every key working.
package apikeys

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"
)

// Services a key can be permitted to use.
const (
	ServiceOpenAI = "openai" // the Vertical Studio routes
	ServiceClaude = "claude"
	ServiceGemini = "gemini"
)

// AllServices is every service, the default permission of a new key.
var AllServices = []string{ServiceOpenAI, ServiceClaude, ServiceGemini}

// DefaultPrefix is the key prefix when none is configured.
const DefaultPrefix = "cr_"

// secretHexLen is the number of hex characters after the prefix.
const secretHexLen = 64

// Expiry modes.
const (
	ExpiryNever      = "never"
	ExpiryFixed      = "fixed"      // at Expiry.At
	ExpiryActivation = "activation" // Expiry.Duration after the first admitted request
)

// Expiry says when a key stops working.
type Expiry struct {
	Mode string    `json:"mode"`
	At   time.Time `json:"at,omitzero"`   // ExpiryFixed
	Secs int64     `json:"secs,omitzero"` // ExpiryActivation: lifetime in seconds from first use
}

// Limits are a key's limits. Zero means no limit.
type Limits struct {
	// WindowSec is the length of the fixed window that RequestsPerWindow and
	// TokensPerWindow count in. Windows start at multiples of WindowSec since
	// the Unix epoch (UTC).
	WindowSec         int64 `json:"window_sec,omitzero"`
	RequestsPerWindow int64 `json:"requests_per_window,omitzero"`
	TokensPerWindow   int64 `json:"tokens_per_window,omitzero"`
	MaxConcurrent     int64 `json:"max_concurrent,omitzero"`
	// Costs in nano-dollars (1e-9 USD). The daily limit counts the UTC day.
	DailyCostNanos int64 `json:"daily_cost_nanos,omitzero"`
	TotalCostNanos int64 `json:"total_cost_nanos,omitzero"`
}

// Key is one API key's record. The plaintext key is never part of it.
type Key struct {
	ID          string    `json:"id"`
	Digest      string    `json:"digest"` // hex SHA-256 of the key
	Hint        string    `json:"hint"`   // prefix and last 4 characters, to tell keys apart
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Tags        []string  `json:"tags,omitempty"`
	Enabled     bool      `json:"enabled"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	Expiry      Expiry    `json:"expiry"`
	// Permissions lists the services the key may use. It is never empty:
	// a new key gets AllServices, and a key that should use nothing is
	// disabled instead.
	Permissions []string `json:"permissions"`
	// AllowModels, when not empty, are the only models the key may ask for;
	// DenyModels are models it may not ask for. Entries match a model name
	// case-insensitively, exactly or, ending in '*', by prefix.
	AllowModels []string `json:"allow_models,omitempty"`
	DenyModels  []string `json:"deny_models,omitempty"`
	Limits      Limits   `json:"limits"`
	// BoundAccounts pins a service ("claude", "gemini") to one upstream
	// account id; the account scheduler reads it.
	BoundAccounts map[string]string `json:"bound_accounts,omitempty"`

	// ActivatedAt is when an ExpiryActivation key was first used (zero until
	// then). It is stored beside the record, not in it, so it is set once.
	ActivatedAt time.Time `json:"-"`
}

// ExpiresAt is when the key stops working, and false if it does not (yet)
// have an end: a key that never expires, or an activation key not used yet.
func (k *Key) ExpiresAt() (time.Time, bool) {
	switch k.Expiry.Mode {
	case ExpiryFixed:
		return k.Expiry.At, true
	case ExpiryActivation:
		if k.ActivatedAt.IsZero() {
			return time.Time{}, false
		}
		return k.ActivatedAt.Add(time.Duration(k.Expiry.Secs) * time.Second), true
	}
	return time.Time{}, false
}

// Expired reports whether the key has expired at now.
func (k *Key) Expired(now time.Time) bool {
	at, ok := k.ExpiresAt()
	return ok && !now.Before(at)
}

// Permits reports whether the key may use service.
func (k *Key) Permits(service string) bool {
	for _, p := range k.Permissions {
		if p == service {
			return true
		}
	}
	return false
}

// ModelAllowed reports whether the key may ask for model. An empty model
// (e.g. listing models) is always allowed. A name with a vendor prefix
// ("anthropic/claude-x") is matched both whole and without the prefix; a
// deny entry matching either denies it.
func (k *Key) ModelAllowed(model string) bool {
	if model == "" {
		return true
	}
	bare := model
	if i := strings.LastIndexByte(model, '/'); i >= 0 {
		bare = model[i+1:]
	}
	for _, d := range k.DenyModels {
		if matchModel(d, model) || matchModel(d, bare) {
			return false
		}
	}
	if len(k.AllowModels) == 0 {
		return true
	}
	for _, a := range k.AllowModels {
		if matchModel(a, model) || matchModel(a, bare) {
			return true
		}
	}
	return false
}

func matchModel(pattern, model string) bool {
	if p, ok := strings.CutSuffix(pattern, "*"); ok {
		return len(model) >= len(p) && strings.EqualFold(model[:len(p)], p)
	}
	return strings.EqualFold(pattern, model)
}

// Validate checks a record before it is stored, and fills defaults.
func (k *Key) Validate() error {
	k.Name = strings.TrimSpace(k.Name)
	switch {
	case k.Name == "":
		return errors.New("name: required")
	case len(k.Name) > 200:
		return errors.New("name: at most 200 characters")
	case len(k.Description) > 2000:
		return errors.New("description: at most 2000 characters")
	case len(k.Tags) > 50:
		return errors.New("tags: at most 50")
	}
	tags := k.Tags[:0]
	for _, t := range k.Tags {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if len(t) > 64 {
			return fmt.Errorf("tags: %q is longer than 64 characters", t)
		}
		tags = appendUnique(tags, t)
	}
	k.Tags = tags
	if len(k.Permissions) == 0 {
		return errors.New("permissions: name at least one of openai, claude, gemini (to stop a key, disable it)")
	}
	perms := make([]string, 0, len(k.Permissions))
	for _, p := range k.Permissions {
		p = strings.ToLower(strings.TrimSpace(p))
		if p != ServiceOpenAI && p != ServiceClaude && p != ServiceGemini {
			return fmt.Errorf("permissions: %q is not one of openai, claude, gemini", p)
		}
		perms = appendUnique(perms, p)
	}
	k.Permissions = perms
	for name, list := range map[string][]string{"allow_models": k.AllowModels, "deny_models": k.DenyModels} {
		if len(list) > 500 {
			return fmt.Errorf("%s: at most 500 entries", name)
		}
		for _, m := range list {
			if strings.TrimSpace(m) == "" {
				return fmt.Errorf("%s: empty entry", name)
			}
		}
	}
	switch k.Expiry.Mode {
	case "", ExpiryNever:
		k.Expiry = Expiry{Mode: ExpiryNever}
	case ExpiryFixed:
		if k.Expiry.At.IsZero() {
			return errors.New("expiry: a fixed expiry needs a time")
		}
		k.Expiry.Secs = 0
	case ExpiryActivation:
		if k.Expiry.Secs <= 0 {
			return errors.New("expiry: an activation expiry needs a positive duration")
		}
		k.Expiry.At = time.Time{}
	default:
		return fmt.Errorf("expiry: mode %q is not one of never, fixed, activation", k.Expiry.Mode)
	}
	l := k.Limits
	if l.WindowSec < 0 || l.RequestsPerWindow < 0 || l.TokensPerWindow < 0 || l.MaxConcurrent < 0 ||
		l.DailyCostNanos < 0 || l.TotalCostNanos < 0 {
		return errors.New("limits: must not be negative")
	}
	if (l.RequestsPerWindow > 0 || l.TokensPerWindow > 0) && l.WindowSec == 0 {
		return errors.New("limits: requests or tokens per window need window_sec")
	}
	if l.WindowSec > 366*24*3600 {
		return errors.New("limits: window_sec is at most a year")
	}
	for svc := range k.BoundAccounts {
		if svc != ServiceClaude && svc != ServiceGemini && svc != ServiceOpenAI {
			return fmt.Errorf("bound_accounts: %q is not a service", svc)
		}
	}
	return nil
}

func appendUnique(list []string, s string) []string {
	for _, v := range list {
		if v == s {
			return list
		}
	}
	return append(list, s)
}

// NewSecret returns a fresh key "<prefix><64 hex>" and its digest.
func NewSecret(prefix string) (key, digest string, err error) {
	b := make([]byte, secretHexLen/2)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("crypto/rand: %w", err)
	}
	key = prefix + hex.EncodeToString(b)
	return key, Digest(key), nil
}

// Digest is the hex SHA-256 of a key, under which its record is stored.
func Digest(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// WellFormed reports whether key has the shape of a key with prefix, so a
// malformed one is refused without asking Redis.
func WellFormed(prefix, key string) bool {
	if len(key) != len(prefix)+secretHexLen || !strings.HasPrefix(key, prefix) {
		return false
	}
	for i := len(prefix); i < len(key); i++ {
		c := key[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func hint(prefix, key string) string {
	return prefix + "…" + key[len(key)-4:]
}

// maxLifetimeDays is the longest lifetime in days ParseLifetime takes: more
// would overflow time.Duration (about 292 years) into a negative lifetime.
const maxLifetimeDays = 100 * 365

// ParseLifetime reads a key lifetime: a Go duration ("36h", "90m") or a
// number of days ("30d").
func ParseLifetime(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if d, ok := strings.CutSuffix(s, "d"); ok {
		var n int64
		if _, err := fmt.Sscanf(d, "%d", &n); err != nil || n <= 0 || fmt.Sprint(n) != d {
			return 0, fmt.Errorf("%q is not a number of days such as 30d", s)
		}
		if n > maxLifetimeDays {
			return 0, fmt.Errorf("%q is longer than %d days", s, maxLifetimeDays)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration such as 30d or 12h", s)
	}
	return v, nil
}

// USDToNanos converts dollars to nano-dollars, refusing negative and absurd
// amounts.
func USDToNanos(usd float64) (int64, error) {
	if usd < 0 || usd > 1e9 || usd != usd {
		return 0, fmt.Errorf("%v is not an amount from 0 to 1e9 dollars", usd)
	}
	return int64(math.Round(usd * 1e9)), nil
}
