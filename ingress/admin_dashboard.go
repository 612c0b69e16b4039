package ingress

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/usage"
)

// dashboardTop is how many models and keys the dashboard ranks.
const dashboardTop = 10

// dashboardAdminRoutes serve what the web UI's dashboard shows in one
// request, under the (authenticated) admin group g:
//
//	GET /dashboard?from=&to=&granularity=hour|day
//
// It answers the usage of today and of the range (default: today, by hour),
// the trend over the range, usage by model, the top keys (with their names),
// every upstream account with the reason it is out of service, the parts
// /health checks (the Vertical Studio session) and Redis.
func (s *Server) dashboardAdminRoutes(g fiber.Router) {
	rd := usage.NewReader(s.rdb, keyspace.New(s.cfg.Redis.KeyPrefix))
	g.Get("/dashboard", s.handleDashboard(rd))
}

type dashboardKey struct {
	ID      string       `json:"id"`
	Name    string       `json:"name"`
	Hint    string       `json:"hint"`
	Enabled bool         `json:"enabled"`
	Deleted bool         `json:"deleted,omitempty"`
	Totals  usage.Totals `json:"totals"`
}

type dashboardAccount struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Kind        string     `json:"kind"`
	Status      string     `json:"status"`
	Reason      string     `json:"reason,omitempty"`
	Until       *time.Time `json:"until,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	LastErrorAt *time.Time `json:"last_error_at,omitempty"`
	LastUsedAt  *time.Time `json:"last_used_at,omitempty"`
}

type dashboardService struct {
	State string `json:"state"`
	OK    bool   `json:"ok"`
}

type dashboardRedis struct {
	OK        bool    `json:"ok"`
	Error     string  `json:"error,omitempty"`
	LatencyMs float64 `json:"latency_ms"`
	Version   string  `json:"version,omitempty"`
	Mode      string  `json:"mode,omitempty"`
	Memory    string  `json:"used_memory,omitempty"`
	Clients   string  `json:"connected_clients,omitempty"`
	UptimeSec string  `json:"uptime_sec,omitempty"`
}

func (s *Server) handleDashboard(rd *usage.Reader) fiber.Handler {
	return func(c *fiber.Ctx) error {
		now := time.Now().UTC()
		today := startOfDay(now)
		from, to, err := usageRange(c, now, today)
		if err != nil {
			return err
		}
		gran := c.Query("granularity", usage.Hour)
		if gran != usage.Hour && gran != usage.Day {
			return badUsageQuery("granularity", "granularity must be hour or day, not %q.", gran)
		}
		ctx, cancel := adminCtx(c)
		defer cancel()

		out := fiber.Map{"now": now, "public_url": s.cfg.PublicURL}
		// Redis and the other parts first: when Redis is down the dashboard
		// still says so instead of failing as a whole.
		out["redis"] = s.dashboardRedis(ctx)
		services := map[string]dashboardService{}
		for _, h := range s.health {
			st, ok := h.Check(ctx)
			services[h.Name] = dashboardService{State: st, OK: ok}
		}
		out["services"] = services

		todayTotals, err := rd.Range(ctx, usage.DimGlobal, usage.GlobalID, today, now)
		if err != nil {
			return s.usageError(c, err)
		}
		rangeTotals, err := rd.Range(ctx, usage.DimGlobal, usage.GlobalID, from, to)
		if err != nil {
			return s.usageError(c, err)
		}
		allTime, err := rd.AllTime(ctx, usage.DimGlobal, usage.GlobalID)
		if err != nil {
			return s.usageError(c, err)
		}
		points, err := rd.Series(ctx, usage.DimGlobal, usage.GlobalID, gran, from, to)
		if err != nil {
			return s.usageError(c, err)
		}
		models, err := rd.Top(ctx, usage.DimModel, usage.ByRequests, from, to, dashboardTop)
		if err != nil {
			return s.usageError(c, err)
		}
		ranked, err := rd.Top(ctx, usage.DimKey, usage.ByCost, from, to, dashboardTop)
		if err != nil {
			return s.usageError(c, err)
		}
		out["today"], out["all_time"] = todayTotals, allTime
		out["range"] = fiber.Map{"from": from, "to": to, "totals": rangeTotals}
		out["series"] = fiber.Map{"granularity": gran, "points": points}
		out["models"] = models
		keys, err := s.dashboardKeys(ctx, ranked)
		if err != nil {
			return s.keyStoreError(c, err)
		}
		out["top_keys"] = keys
		if s.keys != nil {
			if _, total, err := s.keys.List(ctx, apikeys.ListQuery{Limit: 1}); err == nil {
				out["key_count"] = total
			}
		}

		out["accounts_configured"] = s.sched != nil
		if s.sched != nil {
			list, err := s.sched.Store().List(ctx)
			if err != nil {
				return s.accountErr(c, err)
			}
			accs := make([]dashboardAccount, 0, len(list))
			for _, a := range list {
				accs = append(accs, dashboardAccountView(a, s.sched.Store().Now()))
			}
			out["accounts"] = accs
		} else {
			out["accounts"] = []dashboardAccount{}
		}
		c.Set(fiber.HeaderCacheControl, "no-store")
		return c.JSON(out)
	}
}

// dashboardKeys names the ranked keys; a key deleted since it was used
// keeps its id and is marked deleted.
func (s *Server) dashboardKeys(ctx context.Context, ranked []usage.Ranked) ([]dashboardKey, error) {
	out := make([]dashboardKey, 0, len(ranked))
	for _, r := range ranked {
		dk := dashboardKey{ID: r.ID, Totals: r.Totals}
		switch k, err := s.lookupKey(ctx, r.ID); {
		case err == nil:
			dk.Name, dk.Hint, dk.Enabled = k.Name, k.Hint, k.Enabled
		case errors.Is(err, apikeys.ErrNotFound):
			dk.Deleted = true
		default:
			return nil, err
		}
		out = append(out, dk)
	}
	return out, nil
}

func (s *Server) lookupKey(ctx context.Context, id string) (*apikeys.Key, error) {
	if s.keys == nil {
		return nil, apikeys.ErrNotFound
	}
	if _, err := uuid.Parse(id); err != nil {
		return nil, apikeys.ErrNotFound
	}
	return s.keys.Get(ctx, id)
}

// dashboardAccountView says why an account is out of service, and until
// when where the state ends by itself.
func dashboardAccountView(a accounts.Account, now time.Time) dashboardAccount {
	v := dashboardAccount{ID: a.ID, Name: a.Name, Kind: string(a.Kind), Status: a.Status(now),
		LastError: a.State.LastError, LastErrorAt: timePtr(a.State.LastErrorAt), LastUsedAt: timePtr(a.LastUsedAt)}
	switch v.Status {
	case "disabled":
		v.Reason = "disabled by an administrator"
	case "paused":
		v.Reason = "paused by an administrator"
		if a.PauseNote != "" {
			v.Reason += ": " + a.PauseNote
		}
	case "needs_reauth":
		v.Reason = orText(a.State.ReauthReason, "the upstream refused its credentials; authorize it again")
	case "rate_limited":
		v.Reason, v.Until = orText(a.State.RateLimitReason, "rate limited by the upstream"), timePtr(a.State.RateLimitedUntil)
	case "overloaded":
		v.Reason, v.Until = orText(a.State.PauseReason, "paused after upstream errors"), timePtr(a.State.PausedUntil)
	}
	return v
}

func orText(s, def string) string {
	if strings.TrimSpace(s) == "" {
		return def
	}
	return s
}

// dashboardRedis pings Redis and reads a few INFO fields (managed Redis may
// refuse INFO; the ping decides whether it is up).
func (s *Server) dashboardRedis(ctx context.Context) dashboardRedis {
	var r dashboardRedis
	if s.rdb == nil {
		r.Error = "not configured"
		return r
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.rdb.Ping(pctx).Err(); err != nil {
		r.Error = err.Error()
		return r
	}
	r.OK = true
	r.LatencyMs = float64(time.Since(start).Microseconds()) / 1000
	info, err := s.rdb.Info(pctx).Result()
	if err != nil {
		return r
	}
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "redis_version":
			r.Version = v
		case "redis_mode":
			r.Mode = v
		case "used_memory_human":
			r.Memory = v
		case "connected_clients":
			r.Clients = v
		case "uptime_in_seconds":
			r.UptimeSec = v
		}
	}
	return r
}
