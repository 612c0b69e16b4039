package accounts

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
)

// Policy is how the scheduler treats upstream failures.
type Policy struct {
	StickyTTL        time.Duration // a conversation stays on its account this long after its last request
	MaxPause         time.Duration // cap on every automatic rate limit or pause
	OverloadPause    time.Duration // after a 529
	ErrorPause       time.Duration // after a 5xx or a connection failure
	RateLimitDefault time.Duration // after a 429 that names no reset time
}

func (p Policy) capped(d time.Duration) time.Duration {
	if p.MaxPause > 0 && d > p.MaxPause {
		return p.MaxPause
	}
	if d <= 0 {
		return time.Second
	}
	return d
}

// Scheduler picks an account for each request.
type Scheduler struct {
	store  *Store
	rdb    redis.UniversalClient
	keys   keyspace.Keyspace
	policy Policy
	log    zerolog.Logger
}

// NewScheduler makes a scheduler over store.
func NewScheduler(store *Store, rdb redis.UniversalClient, keys keyspace.Keyspace, policy Policy, log zerolog.Logger) *Scheduler {
	return &Scheduler{store: store, rdb: rdb, keys: keys, policy: policy, log: log}
}

// Store is the scheduler's account store.
func (s *Scheduler) Store() *Store { return s.store }

// Request is what the scheduler needs to know about one request.
type Request struct {
	Service string   // "claude", "gemini"
	Model   string   // the model the client asked for
	Session string   // sticky-session id; empty for none
	Bound   string   // the account the relay key is bound to for this service ("" for none)
	Exclude []string // accounts that already failed this request
}

// Pick is the account chosen for one attempt.
type Pick struct {
	Account     Account
	Credentials Credentials
	Sticky      bool // it came from the conversation's sticky mapping
	Bound       bool // the key is bound to it
}

// Pick chooses an account: the key's bound account if it has one; else the
// conversation's sticky account while it can serve; else the best of the
// pool by priority, then least recently used. It returns *NoAccountError when
// nothing can serve, saying why.
func (s *Scheduler) Pick(ctx context.Context, req Request) (*Pick, error) {
	v, err := s.store.current(ctx)
	if err != nil {
		return nil, err
	}
	now := s.store.now()

	if req.Bound != "" {
		return s.pickBound(v, req, now)
	}

	var stickyID string
	stickyKey := ""
	if req.Session != "" {
		stickyKey = s.keys.StickySession(req.Service, req.Session)
		// One round trip reads the mapping and renews its TTL.
		id, err := s.rdb.GetEx(ctx, stickyKey, s.policy.StickyTTL).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			s.log.Warn().Err(err).Msg("sticky session lookup failed; picking from the pool")
		}
		stickyID = id
	}

	s.store.mu.Lock()
	var chosen *entry
	if stickyID != "" {
		if e := v.accounts[stickyID]; e != nil && e.acct.Kind.Service() == req.Service &&
			reasonOut(&e.acct, req, now) == "" {
			chosen = e
		}
	}
	sticky := chosen != nil
	var why *NoAccountError
	if chosen == nil {
		why = &NoAccountError{Service: req.Service, Model: req.Model}
		for _, e := range v.accounts {
			if e.acct.Kind.Service() != req.Service {
				continue
			}
			why.Configured++
			if r := reasonOut(&e.acct, req, now); r != "" {
				why.add(r, &e.acct)
				continue
			}
			if chosen == nil || better(&e.acct, &chosen.acct) {
				chosen = e
			}
		}
	}
	if chosen == nil {
		s.store.mu.Unlock()
		return nil, why
	}
	chosen.acct.LastUsedAt = now
	pick := &Pick{Account: chosen.acct, Sticky: sticky}
	creds, cerr := s.store.credentialsOf(chosen)
	s.store.mu.Unlock()
	if cerr != nil {
		return nil, cerr
	}
	pick.Credentials = creds

	if !sticky {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			if stickyKey != "" {
				p.Set(ctx, stickyKey, pick.Account.ID, s.policy.StickyTTL)
			}
			p.HSet(ctx, s.keys.Account(pick.Account.ID), fLastUsed, ms(now))
			return nil
		})
		if err != nil {
			s.log.Warn().Err(err).Msg("could not save the sticky session or last use")
		}
	}
	return pick, nil
}

func (s *Scheduler) pickBound(v *view, req Request, now time.Time) (*Pick, error) {
	s.store.mu.Lock()
	defer s.store.mu.Unlock()
	e := v.accounts[req.Bound]
	why := &NoAccountError{Service: req.Service, Model: req.Model, Bound: true}
	if e == nil || e.acct.Kind.Service() != req.Service {
		return nil, why
	}
	why.Configured = 1
	if r := reasonOut(&e.acct, req, now); r != "" {
		why.add(r, &e.acct)
		why.BoundName = e.acct.Name
		return nil, why
	}
	creds, err := s.store.credentialsOf(e)
	if err != nil {
		return nil, err
	}
	e.acct.LastUsedAt = now
	return &Pick{Account: e.acct, Credentials: creds, Bound: true}, nil
}

// better orders the pool: priority, then least recently used, then oldest.
func better(a, b *Account) bool {
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	if !a.LastUsedAt.Equal(b.LastUsedAt) {
		return a.LastUsedAt.Before(b.LastUsedAt)
	}
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.Before(b.CreatedAt)
	}
	return a.ID < b.ID
}

// Reasons an account cannot take a request.
const (
	outDisabled    = "disabled"
	outPaused      = "paused"
	outReauth      = "reauth"
	outRateLimited = "rate_limited"
	outOverloaded  = "overloaded"
	outModel       = "model"
	outTried       = "tried"
)

func reasonOut(a *Account, req Request, now time.Time) string {
	switch {
	case !a.Serves(req.Model):
		return outModel
	case !a.Enabled:
		return outDisabled
	case !a.Schedulable:
		return outPaused
	case a.State.NeedsReauth:
		return outReauth
	case a.State.RateLimitedUntil.After(now):
		return outRateLimited
	case a.State.PausedUntil.After(now):
		return outOverloaded
	}
	for _, id := range req.Exclude {
		if id == a.ID {
			return outTried
		}
	}
	return ""
}

// Failure is what went wrong with one upstream attempt.
type Failure struct {
	Status  int       // upstream HTTP status; 0 for a connection failure
	ResetAt time.Time // when a 429 says the limit resets (zero if it did not say)
	Reason  string    // short text for the account's state, e.g. the upstream error message
}

// Failover reports whether a failure should move the request to another
// account (before the first byte reached the client): rate limits,
// overloads, server errors, connection failures and credential rejections.
// Other 4xx are about the request itself and go back to the client.
func (f Failure) Failover() bool {
	switch {
	case f.Status == 0, f.Status == http.StatusTooManyRequests, f.Status == 529, f.Status >= 500,
		f.Status == http.StatusUnauthorized, f.Status == http.StatusForbidden:
		return true
	}
	return false
}

// Failed records what an upstream failure means for the account: a 429
// rate-limits it until the reset (capped), a 529 or 5xx or a connection
// failure pauses it briefly, a 401 or 403 marks it for re-authorization.
// It returns the state the account was put in ("" if none).
func (s *Scheduler) Failed(ctx context.Context, id string, f Failure) (string, error) {
	now := s.store.now()
	reason := f.Reason
	if len(reason) > 300 {
		reason = reason[:300]
	}
	switch {
	case f.Status == http.StatusTooManyRequests:
		d := s.policy.RateLimitDefault
		why := "upstream 429 without a reset time"
		if !f.ResetAt.IsZero() {
			d = f.ResetAt.Sub(now)
			why = "upstream 429, resets at " + f.ResetAt.UTC().Format(time.RFC3339)
		}
		d = s.policy.capped(d)
		if reason != "" {
			why += ": " + reason
		}
		return outRateLimited, s.store.MarkRateLimited(ctx, id, now.Add(d), why)
	case f.Status == 529:
		return outOverloaded, s.store.MarkPaused(ctx, id, now.Add(s.policy.capped(s.policy.OverloadPause)), join("upstream 529 overloaded", reason))
	case f.Status >= 500:
		return outOverloaded, s.store.MarkPaused(ctx, id, now.Add(s.policy.capped(s.policy.ErrorPause)), join(fmt.Sprintf("upstream %d", f.Status), reason))
	case f.Status == 0:
		return outOverloaded, s.store.MarkPaused(ctx, id, now.Add(s.policy.capped(s.policy.ErrorPause)), join("upstream unreachable", reason))
	case f.Status == http.StatusUnauthorized, f.Status == http.StatusForbidden:
		return outReauth, s.store.MarkNeedsReauth(ctx, id, join(fmt.Sprintf("upstream %d", f.Status), reason))
	}
	return "", nil
}

func join(a, b string) string {
	if b == "" {
		return a
	}
	return a + ": " + b
}

// NoAccountError says why no account could serve a request.
type NoAccountError struct {
	Service    string
	Model      string
	Bound      bool   // the key is bound to one account
	BoundName  string // its name, when it exists
	Configured int    // accounts of the service

	Disabled, Paused, Reauth, RateLimited, Overloaded, NoModel, Tried int

	RateLimitedUntil time.Time // earliest end of a rate limit
	OverloadedUntil  time.Time // earliest end of a pause
	ReauthReason     string    // one of the re-authorization reasons
}

func (e *NoAccountError) add(reason string, a *Account) {
	earliest := func(t *time.Time, v time.Time) {
		if t.IsZero() || v.Before(*t) {
			*t = v
		}
	}
	switch reason {
	case outDisabled:
		e.Disabled++
	case outPaused:
		e.Paused++
	case outReauth:
		e.Reauth++
		if e.ReauthReason == "" {
			e.ReauthReason = a.State.ReauthReason
		}
	case outRateLimited:
		e.RateLimited++
		earliest(&e.RateLimitedUntil, a.State.RateLimitedUntil)
	case outOverloaded:
		e.Overloaded++
		earliest(&e.OverloadedUntil, a.State.PausedUntil)
	case outModel:
		e.NoModel++
	case outTried:
		e.Tried++
	}
}

func serviceName(s string) string {
	switch s {
	case "claude":
		return "Claude"
	case "gemini":
		return "Gemini"
	}
	return s
}

// Status is the HTTP status the client should get.
func (e *NoAccountError) Status() int {
	serving := e.Configured - e.NoModel
	switch {
	case e.Configured > 0 && serving == 0:
		return http.StatusNotFound
	case serving > 0 && e.RateLimited == serving:
		return http.StatusTooManyRequests
	}
	return http.StatusServiceUnavailable
}

// RetryAt is when an account should be able to serve again (zero if no
// state ends by itself).
func (e *NoAccountError) RetryAt() time.Time {
	t := e.RateLimitedUntil
	if !e.OverloadedUntil.IsZero() && (t.IsZero() || e.OverloadedUntil.Before(t)) {
		t = e.OverloadedUntil
	}
	return t
}

func (e *NoAccountError) Error() string {
	svc := serviceName(e.Service)
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	if e.Bound {
		if e.Configured == 0 {
			return fmt.Sprintf("The %s account bound to this API key no longer exists; ask an administrator to rebind the key.", svc)
		}
		name := fmt.Sprintf("The %s account bound to this API key (%s)", svc, e.BoundName)
		switch {
		case e.NoModel > 0:
			return fmt.Sprintf("%s does not serve model %s.", name, e.Model)
		case e.RateLimited > 0:
			return fmt.Sprintf("%s is rate-limited until %s.", name, ts(e.RateLimitedUntil))
		case e.Overloaded > 0:
			return fmt.Sprintf("%s is paused after upstream errors until %s.", name, ts(e.OverloadedUntil))
		case e.Reauth > 0:
			return fmt.Sprintf("%s needs re-authorization (%s).", name, e.ReauthReason)
		case e.Disabled > 0:
			return name + " is disabled."
		case e.Paused > 0:
			return name + " is paused by an administrator."
		case e.Tried > 0:
			return name + " failed for this request."
		}
		return name + " cannot serve this request."
	}
	serving := e.Configured - e.NoModel
	switch {
	case e.Configured == 0:
		return fmt.Sprintf("No %s accounts are configured on this relay.", svc)
	case serving == 0:
		return fmt.Sprintf("None of the %d %s accounts supports model %s.", e.Configured, svc, e.Model)
	case e.RateLimited == serving:
		return fmt.Sprintf("All %d %s accounts that serve %s are rate-limited; the first is available again at %s.",
			serving, svc, e.Model, ts(e.RateLimitedUntil))
	case e.Reauth == serving:
		return fmt.Sprintf("All %d %s accounts that serve %s need re-authorization (%s).", serving, svc, e.Model, e.ReauthReason)
	case e.Overloaded == serving:
		return fmt.Sprintf("All %d %s accounts that serve %s are paused after upstream errors until at least %s.",
			serving, svc, e.Model, ts(e.OverloadedUntil))
	}
	var parts []string
	add := func(n int, what string) {
		if n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, what))
		}
	}
	if e.RateLimited > 0 {
		add(e.RateLimited, "rate-limited (first free at "+ts(e.RateLimitedUntil)+")")
	}
	if e.Overloaded > 0 {
		add(e.Overloaded, "paused after upstream errors (until "+ts(e.OverloadedUntil)+")")
	}
	add(e.Reauth, "need re-authorization")
	add(e.Disabled, "disabled")
	add(e.Paused, "paused by an administrator")
	add(e.Tried, "failed for this request")
	return fmt.Sprintf("No %s account can serve %s right now: %s.", svc, e.Model, strings.Join(parts, ", "))
}
