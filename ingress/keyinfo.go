package ingress

import (
	"context"
	"time"

	"github.com/gofiber/fiber/v2"
)

// keyInfoRoutes let a key holder read its own key's settings, limits and
// counters, authenticated by the key itself: GET /api/v1/key-info (Anthropic
// error format) and GET /v1/key-info (OpenAI error format). Nothing about
// any other key, nor the key's bound upstream accounts, is shown.
func (s *Server) keyInfoRoutes() {
	s.app.Get("/api/v1/key-info", s.requireKey(""), s.handleKeyInfo)
	s.app.Get("/v1/key-info", s.requireKey(""), s.handleKeyInfo)
}

func (s *Server) handleKeyInfo(c *fiber.Ctx) error {
	k := apiKey(c)
	ctx, cancel := context.WithTimeout(c.UserContext(), keyLookupTimeout)
	defer cancel()
	cs, err := s.keys.Counters(ctx, k)
	if err != nil {
		s.requestLog(c).Error().Err(err).Msg("api key counters unavailable")
		return unavailableError()
	}
	v := viewKey(k, false)
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(fiber.Map{
		"id": v.ID, "name": v.Name, "description": v.Description, "tags": v.Tags, "hint": v.Hint,
		"enabled": v.Enabled, "created_at": v.CreatedAt, "expiry": v.Expiry, "expires_at": v.ExpiresAt,
		"permissions": v.Permissions, "allow_models": v.AllowModels, "deny_models": v.DenyModels,
		"limits": v.Limits, "usage": viewCounters(cs), "now": time.Now().UTC(),
	})
}
