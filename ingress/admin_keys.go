package ingress

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/relaydev/relay/internal/apikeys"
)

// adminKeyRoutes are the API-key routes of the admin API (under g, which
// already requires an admin token).
func (s *Server) adminKeyRoutes(g fiber.Router) {
	g.Get("/keys", s.handleListKeys)
	g.Post("/keys", s.handleCreateKey)
	g.Get("/keys/:id", s.handleGetKey)
	g.Patch("/keys/:id", s.handleUpdateKey)
	g.Delete("/keys/:id", s.handleDeleteKey)
	g.Post("/keys/:id/enable", s.handleEnableKey(true))
	g.Post("/keys/:id/disable", s.handleEnableKey(false))
	g.Post("/keys/:id/regenerate", s.handleRegenerateKey)
	g.Get("/keys/:id/usage", s.handleKeyUsage)
}

// keyView is a key as the admin API shows it (costs in dollars).
type keyView struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Description   string            `json:"description"`
	Tags          []string          `json:"tags"`
	Enabled       bool              `json:"enabled"`
	Hint          string            `json:"hint"`
	CreatedAt     time.Time         `json:"created_at"`
	UpdatedAt     time.Time         `json:"updated_at"`
	Expiry        expiryView        `json:"expiry"`
	ExpiresAt     *time.Time        `json:"expires_at"` // when it stops working; null: no end (yet)
	Permissions   []string          `json:"permissions"`
	AllowModels   []string          `json:"allow_models"`
	DenyModels    []string          `json:"deny_models"`
	Limits        limitsView        `json:"limits"`
	BoundAccounts map[string]string `json:"bound_accounts,omitempty"`
}

type expiryView struct {
	Mode        string     `json:"mode"`                   // never, fixed, activation
	At          *time.Time `json:"at,omitempty"`           // fixed
	DurationSec int64      `json:"duration_sec,omitempty"` // activation
	ActivatedAt *time.Time `json:"activated_at,omitempty"` // activation, once used
}

type limitsView struct {
	WindowSec         int64   `json:"window_sec"`
	RequestsPerWindow int64   `json:"requests_per_window"`
	TokensPerWindow   int64   `json:"tokens_per_window"`
	MaxConcurrent     int64   `json:"max_concurrent"`
	DailyCostUSD      float64 `json:"daily_cost_usd"`
	TotalCostUSD      float64 `json:"total_cost_usd"`
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func viewKey(k *apikeys.Key, withBindings bool) keyView {
	v := keyView{
		ID: k.ID, Name: k.Name, Description: k.Description, Tags: orEmpty(k.Tags), Enabled: k.Enabled, Hint: k.Hint,
		CreatedAt: k.CreatedAt, UpdatedAt: k.UpdatedAt,
		Expiry:      expiryView{Mode: k.Expiry.Mode, At: timePtr(k.Expiry.At), DurationSec: k.Expiry.Secs, ActivatedAt: timePtr(k.ActivatedAt)},
		Permissions: orEmpty(k.Permissions), AllowModels: orEmpty(k.AllowModels), DenyModels: orEmpty(k.DenyModels),
		Limits: limitsView{
			WindowSec: k.Limits.WindowSec, RequestsPerWindow: k.Limits.RequestsPerWindow,
			TokensPerWindow: k.Limits.TokensPerWindow, MaxConcurrent: k.Limits.MaxConcurrent,
			DailyCostUSD: float64(k.Limits.DailyCostNanos) / 1e9, TotalCostUSD: float64(k.Limits.TotalCostNanos) / 1e9,
		},
	}
	if at, ok := k.ExpiresAt(); ok {
		v.ExpiresAt = timePtr(at)
	}
	if withBindings {
		v.BoundAccounts = k.BoundAccounts
	}
	return v
}

// keyInput is the body of create and update; on update, absent fields keep
// their value.
type keyInput struct {
	Name          *string            `json:"name"`
	Description   *string            `json:"description"`
	Tags          *[]string          `json:"tags"`
	Enabled       *bool              `json:"enabled"`
	Expiry        *expiryInput       `json:"expiry"`
	Permissions   *[]string          `json:"permissions"`
	AllowModels   *[]string          `json:"allow_models"`
	DenyModels    *[]string          `json:"deny_models"`
	Limits        *limitsInput       `json:"limits"`
	BoundAccounts *map[string]string `json:"bound_accounts"`
}

type expiryInput struct {
	Mode        string     `json:"mode"`         // never, fixed, activation
	At          *time.Time `json:"at"`           // fixed (RFC 3339)
	DurationSec int64      `json:"duration_sec"` // activation: seconds from first use
	Duration    string     `json:"duration"`     // activation, alternatively: "30d", "12h"
}

type limitsInput struct {
	WindowSec         *int64   `json:"window_sec"`
	RequestsPerWindow *int64   `json:"requests_per_window"`
	TokensPerWindow   *int64   `json:"tokens_per_window"`
	MaxConcurrent     *int64   `json:"max_concurrent"`
	DailyCostUSD      *float64 `json:"daily_cost_usd"`
	TotalCostUSD      *float64 `json:"total_cost_usd"`
}

func badField(param, msg string) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "invalid_request", Param: param, Message: msg}
}

// apply writes the input's fields onto k.
func (in *keyInput) apply(k *apikeys.Key) error {
	if in.Name != nil {
		k.Name = *in.Name
	}
	if in.Description != nil {
		k.Description = *in.Description
	}
	if in.Tags != nil {
		k.Tags = *in.Tags
	}
	if in.Enabled != nil {
		k.Enabled = *in.Enabled
	}
	if in.Permissions != nil {
		k.Permissions = *in.Permissions
		if k.Permissions == nil {
			k.Permissions = []string{}
		}
	}
	if in.AllowModels != nil {
		k.AllowModels = *in.AllowModels
	}
	if in.DenyModels != nil {
		k.DenyModels = *in.DenyModels
	}
	if in.BoundAccounts != nil {
		k.BoundAccounts = *in.BoundAccounts
	}
	if e := in.Expiry; e != nil {
		k.Expiry = apikeys.Expiry{Mode: e.Mode}
		switch e.Mode {
		case apikeys.ExpiryFixed:
			if e.At == nil {
				return badField("expiry.at", "A fixed expiry needs \"at\" (RFC 3339 time).")
			}
			k.Expiry.At = e.At.UTC()
		case apikeys.ExpiryActivation:
			k.Expiry.Secs = e.DurationSec
			if e.Duration != "" {
				d, err := apikeys.ParseLifetime(e.Duration)
				if err != nil {
					return badField("expiry.duration", err.Error())
				}
				k.Expiry.Secs = int64(d / time.Second)
			}
		}
	}
	if l := in.Limits; l != nil {
		set := func(dst *int64, src *int64) {
			if src != nil {
				*dst = *src
			}
		}
		set(&k.Limits.WindowSec, l.WindowSec)
		set(&k.Limits.RequestsPerWindow, l.RequestsPerWindow)
		set(&k.Limits.TokensPerWindow, l.TokensPerWindow)
		set(&k.Limits.MaxConcurrent, l.MaxConcurrent)
		for _, c := range []struct {
			param string
			usd   *float64
			dst   *int64
		}{{"limits.daily_cost_usd", l.DailyCostUSD, &k.Limits.DailyCostNanos}, {"limits.total_cost_usd", l.TotalCostUSD, &k.Limits.TotalCostNanos}} {
			if c.usd == nil {
				continue
			}
			n, err := apikeys.USDToNanos(*c.usd)
			if err != nil {
				return badField(c.param, err.Error())
			}
			*c.dst = n
		}
	}
	return nil
}

// keyStoreError turns a store error into a client error.
func (s *Server) keyStoreError(c *fiber.Ctx, err error) error {
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, apikeys.ErrNotFound):
		return Errorf(http.StatusNotFound, "key_not_found", "There is no API key with this id.")
	case errors.Is(err, context.DeadlineExceeded):
		return unavailableError()
	}
	if v := (*apikeys.InvalidError)(nil); errors.As(err, &v) {
		return badField("", v.Error())
	}
	s.requestLog(c).Error().Err(err).Msg("api key admin operation failed")
	return unavailableError()
}

func (s *Server) keyStore() (*apikeys.Store, error) {
	if s.keys == nil {
		return nil, Errorf(http.StatusServiceUnavailable, "service_unavailable", "API keys are not configured on this relay.")
	}
	return s.keys, nil
}

func keyID(c *fiber.Ctx) (string, error) {
	id := c.Params("id")
	if _, err := uuid.Parse(id); err != nil {
		return "", Errorf(http.StatusNotFound, "key_not_found", "There is no API key with this id.")
	}
	return id, nil
}

func adminCtx(c *fiber.Ctx) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.UserContext(), adminTimeout)
}

// onKey runs do with the key store, the key id of the route and an admin
// deadline: what every single-key route needs first.
func (s *Server) onKey(c *fiber.Ctx, do func(ctx context.Context, st *apikeys.Store, id string) error) error {
	st, err := s.keyStore()
	if err != nil {
		return err
	}
	id, err := keyID(c)
	if err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	return do(ctx, st, id)
}

func (s *Server) handleCreateKey(c *fiber.Ctx) error {
	st, err := s.keyStore()
	if err != nil {
		return err
	}
	var in keyInput
	if err := decodeJSON(c, &in); err != nil {
		return err
	}
	k := apikeys.Key{Enabled: true}
	if err := in.apply(&k); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	raw, stored, err := st.Create(ctx, k)
	if err != nil {
		return s.keyStoreError(c, err)
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.Status(http.StatusCreated).JSON(fiber.Map{
		"key":  raw,
		"note": "This is the only time the key is shown; store it now.",
		"data": viewKey(stored, true),
	})
}

func (s *Server) handleListKeys(c *fiber.Ctx) error {
	st, err := s.keyStore()
	if err != nil {
		return err
	}
	q := apikeys.ListQuery{Search: c.Query("q"), Tag: c.Query("tag")}
	for name, dst := range map[string]*int{"offset": &q.Offset, "limit": &q.Limit} {
		if v := c.Query(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 {
				return badField(name, name+" must be a whole number of 0 or more.")
			}
			*dst = n
		}
	}
	if v := c.Query("enabled"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return badField("enabled", "enabled must be true or false.")
		}
		q.Enabled = &b
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	ks, total, err := st.List(ctx, q)
	if err != nil {
		return s.keyStoreError(c, err)
	}
	data := make([]keyView, len(ks))
	for i, k := range ks {
		data[i] = viewKey(k, true)
	}
	limit := q.Limit
	if limit == 0 {
		limit = 50
	}
	return c.JSON(fiber.Map{"data": data, "total": total, "offset": q.Offset, "limit": min(limit, 500)})
}

func (s *Server) handleGetKey(c *fiber.Ctx) error {
	return s.onKey(c, func(ctx context.Context, st *apikeys.Store, id string) error {
		k, err := st.Get(ctx, id)
		if err != nil {
			return s.keyStoreError(c, err)
		}
		return c.JSON(fiber.Map{"data": viewKey(k, true)})
	})
}

func (s *Server) updateKey(c *fiber.Ctx, change func(*apikeys.Key) error) error {
	return s.onKey(c, func(ctx context.Context, st *apikeys.Store, id string) error {
		k, err := st.Update(ctx, id, change)
		if err != nil {
			return s.keyStoreError(c, err)
		}
		return c.JSON(fiber.Map{"data": viewKey(k, true)})
	})
}

func (s *Server) handleUpdateKey(c *fiber.Ctx) error {
	var in keyInput
	if err := decodeJSON(c, &in); err != nil {
		return err
	}
	return s.updateKey(c, in.apply)
}

func (s *Server) handleEnableKey(enabled bool) fiber.Handler {
	return func(c *fiber.Ctx) error {
		return s.updateKey(c, func(k *apikeys.Key) error {
			k.Enabled = enabled
			return nil
		})
	}
}

func (s *Server) handleRegenerateKey(c *fiber.Ctx) error {
	return s.onKey(c, func(ctx context.Context, st *apikeys.Store, id string) error {
		raw, k, err := st.Regenerate(ctx, id)
		if err != nil {
			return s.keyStoreError(c, err)
		}
		c.Set(fiber.HeaderCacheControl, "no-store")
		return c.JSON(fiber.Map{
			"key":  raw,
			"note": "This is the only time the new key is shown; the old one no longer works.",
			"data": viewKey(k, true),
		})
	})
}

func (s *Server) handleDeleteKey(c *fiber.Ctx) error {
	return s.onKey(c, func(ctx context.Context, st *apikeys.Store, id string) error {
		if err := st.Delete(ctx, id); err != nil {
			return s.keyStoreError(c, err)
		}
		return c.JSON(fiber.Map{"deleted": true, "id": id})
	})
}

// countersView is a key's counters as the admin API and key-info show them.
type countersView struct {
	Concurrent     int64      `json:"concurrent"`
	WindowStart    *time.Time `json:"window_start"`
	WindowEnd      *time.Time `json:"window_end"`
	WindowRequests int64      `json:"window_requests"`
	WindowTokens   int64      `json:"window_tokens"`
	Day            string     `json:"day"`
	TodayCostUSD   float64    `json:"today_cost_usd"`
	TodayRequests  int64      `json:"today_requests"`
	TotalCostUSD   float64    `json:"total_cost_usd"`
	TotalRequests  int64      `json:"total_requests"`
	TotalTokens    int64      `json:"total_tokens"`
	LastUsed       *time.Time `json:"last_used"`
}

func viewCounters(c apikeys.Counters) countersView {
	return countersView{
		Concurrent: c.Concurrent, WindowStart: timePtr(c.WindowStart), WindowEnd: timePtr(c.WindowEnd),
		WindowRequests: c.WindowRequests, WindowTokens: c.WindowTokens, Day: c.Day,
		TodayCostUSD: float64(c.TodayCostNanos) / 1e9, TodayRequests: c.TodayRequests,
		TotalCostUSD: float64(c.TotalCostNanos) / 1e9, TotalRequests: c.TotalRequests, TotalTokens: c.TotalTokens,
		LastUsed: timePtr(c.LastUsed),
	}
}

func (s *Server) handleKeyUsage(c *fiber.Ctx) error {
	return s.onKey(c, func(ctx context.Context, st *apikeys.Store, id string) error {
		k, err := st.Get(ctx, id)
		if err != nil {
			return s.keyStoreError(c, err)
		}
		cs, err := st.Counters(ctx, k)
		if err != nil {
			return s.keyStoreError(c, err)
		}
		return c.JSON(fiber.Map{"key_id": k.ID, "limits": viewKey(k, false).Limits, "usage": viewCounters(cs)})
	})
}
