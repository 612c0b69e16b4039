package ingress

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/usage"
)

// usageAdminRoutes are the admin's usage queries, read from the aggregates.
// They are mounted on the authenticated /admin group, so paths here are
// relative to it:
//
//	GET usage/summary?from=&to=[&dim=&id=]   totals of a range (default: global, today)
//	GET usage/series?dim=&id=&granularity=hour|day&from=&to=
//	GET usage/top?dim=key|model|account|keymodel&by=cost|tokens|requests&from=&to=&limit=
//	GET usage/unknown-models                  models counted at zero cost
//	GET usage/keys/:id                        one key: today, this month, total, per model
//
// from and to are RFC 3339 times or UTC dates (2006-01-02); a date as to
// includes that whole day. Ranges are rounded out to whole hours (UTC). For
// top, from=all ranks over all time.
func (s *Server) usageAdminRoutes(r fiber.Router) {
	rd := usage.NewReader(s.rdb, keyspace.New(s.cfg.Redis.KeyPrefix))
	r.Get("/usage/summary", s.handleUsageSummary(rd))
	r.Get("/usage/series", s.handleUsageSeries(rd))
	r.Get("/usage/top", s.handleUsageTop(rd))
	r.Get("/usage/unknown-models", s.handleUsageUnknownModels(rd))
	r.Get("/usage/keys/:id", s.handleUsageKey(rd))
}

func (s *Server) handleUsageSummary(rd *usage.Reader) fiber.Handler {
	return func(c *fiber.Ctx) error {
		now := time.Now().UTC()
		from, to, err := usageRange(c, now, startOfDay(now))
		if err != nil {
			return err
		}
		dim, id, err := usageDim(c, true)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
		defer cancel()
		t, err := rd.Range(ctx, dim, id, from, to)
		if err != nil {
			return s.usageError(c, err)
		}
		all, err := rd.AllTime(ctx, dim, id)
		if err != nil {
			return s.usageError(c, err)
		}
		return c.JSON(fiber.Map{"dim": dim, "id": id, "from": from, "to": to, "totals": t, "all_time": all})
	}
}

func (s *Server) handleUsageSeries(rd *usage.Reader) fiber.Handler {
	return func(c *fiber.Ctx) error {
		now := time.Now().UTC()
		gran := c.Query("granularity", usage.Hour)
		if gran != usage.Hour && gran != usage.Day {
			return badUsageQuery("granularity", "granularity must be hour or day, not %q.", gran)
		}
		def := now.Add(-24 * time.Hour)
		if gran == usage.Day {
			def = startOfDay(now).AddDate(0, 0, -29)
		}
		from, to, err := usageRange(c, now, def)
		if err != nil {
			return err
		}
		dim, id, err := usageDim(c, true)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
		defer cancel()
		points, err := rd.Series(ctx, dim, id, gran, from, to)
		if err != nil {
			return s.usageError(c, err)
		}
		return c.JSON(fiber.Map{"dim": dim, "id": id, "granularity": gran, "from": from, "to": to, "points": points})
	}
}

func (s *Server) handleUsageTop(rd *usage.Reader) fiber.Handler {
	return func(c *fiber.Ctx) error {
		now := time.Now().UTC()
		dim := c.Query("dim", usage.DimKey)
		if dim == usage.DimGlobal {
			return badUsageQuery("dim", "top ranks key, model, account or keymodel; global has one value.")
		}
		if _, _, err := usageDim(c, false); err != nil {
			return err
		}
		by := c.Query("by", usage.ByCost)
		limit := 20
		if v := c.Query("limit"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 1000 {
				return badUsageQuery("limit", "limit must be a whole number from 1 to 1000, not %q.", v)
			}
			limit = n
		}
		var from, to time.Time
		if c.Query("from") != "all" {
			var err error
			if from, to, err = usageRange(c, now, startOfDay(now)); err != nil {
				return err
			}
		}
		ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
		defer cancel()
		items, err := rd.Top(ctx, dim, by, from, to, limit)
		if err != nil {
			return s.usageError(c, err)
		}
		out := fiber.Map{"dim": dim, "by": by, "limit": limit, "items": items}
		if from.IsZero() {
			out["from"] = "all"
		} else {
			out["from"], out["to"] = from, to
		}
		return c.JSON(out)
	}
}

func (s *Server) handleUsageUnknownModels(rd *usage.Reader) fiber.Handler {
	return func(c *fiber.Ctx) error {
		ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
		defer cancel()
		models, err := rd.UnknownModels(ctx)
		if err != nil {
			return s.usageError(c, err)
		}
		return c.JSON(fiber.Map{"models": models})
	}
}

func (s *Server) handleUsageKey(rd *usage.Reader) fiber.Handler {
	return func(c *fiber.Ctx) error {
		id := c.Params("id")
		if id == "" {
			return badUsageQuery("id", "The key id is missing.")
		}
		ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
		defer cancel()
		sum, err := rd.KeySummary(ctx, strings.Clone(id), time.Now())
		if err != nil {
			return s.usageError(c, err)
		}
		return c.JSON(sum)
	}
}

// usageRange reads from and to (defaults: def and now).
func usageRange(c *fiber.Ctx, now, def time.Time) (from, to time.Time, err error) {
	from, to = def, now
	if v := c.Query("from"); v != "" {
		if from, err = parseUsageTime(v, false); err != nil {
			return from, to, badUsageQuery("from", "from: %v", err)
		}
	}
	if v := c.Query("to"); v != "" {
		if to, err = parseUsageTime(v, true); err != nil {
			return from, to, badUsageQuery("to", "to: %v", err)
		}
	}
	if !from.Before(to) {
		return from, to, badUsageQuery("from", "from (%s) must be before to (%s).", from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	return from, to, nil
}

// parseUsageTime reads an RFC 3339 time or a UTC date; a date that ends a
// range means the end of that day.
func parseUsageTime(v string, end bool) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t.UTC(), nil
	}
	t, err := time.Parse(time.DateOnly, v)
	if err != nil {
		return time.Time{}, errors.New("not an RFC 3339 time (2025-03-10T15:04:05Z) or a date (2025-03-10)")
	}
	if end {
		t = t.AddDate(0, 0, 1)
	}
	return t, nil
}

// usageDim reads dim and id. With needID, dim defaults to global, and every
// dimension but global needs an id.
func usageDim(c *fiber.Ctx, needID bool) (dim, id string, err error) {
	dim = c.Query("dim", usage.DimGlobal)
	valid := false
	for _, d := range usage.Dimensions {
		valid = valid || d == dim
	}
	if !valid {
		return "", "", badUsageQuery("dim", "dim must be one of %s, not %q.", strings.Join(usage.Dimensions, ", "), dim)
	}
	if !needID {
		return dim, "", nil
	}
	id = c.Query("id")
	if dim == usage.DimGlobal {
		return dim, usage.GlobalID, nil
	}
	if id == "" {
		return "", "", badUsageQuery("id", "id is required with dim=%s (for keymodel: <key id>|<model>).", dim)
	}
	return dim, id, nil
}

func badUsageQuery(param, format string, args ...any) *Error {
	e := Errorf(http.StatusBadRequest, "invalid_usage_query", format, args...)
	e.Param = param
	return e
}

// usageError turns a reader error into a 400 (the query) or a 503 (Redis).
func (s *Server) usageError(c *fiber.Ctx, err error) error {
	if errors.Is(err, usage.ErrBadQuery) {
		msg := strings.TrimPrefix(err.Error(), usage.ErrBadQuery.Error()+": ")
		return Errorf(http.StatusBadRequest, "invalid_usage_query", "%s", msg)
	}
	s.requestLog(c).Error().Err(err).Msg("usage query failed")
	return &Error{Status: http.StatusServiceUnavailable, Code: "service_unavailable", RetryAfter: time.Second,
		Message: "The usage data cannot be read right now because the database does not answer. Try again shortly."}
}

func startOfDay(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
