package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/relaydev/relay/internal/adminauth"
)

const localAdmin = "relay.admin"

// adminTimeout bounds the Redis work of one admin request.
const adminTimeout = 10 * time.Second

// adminRoutes creates the /admin group: login answers without a token, every
// other route (including unknown ones) requires a valid admin token.
func (s *Server) adminRoutes() fiber.Router {
	g := s.app.Group("/admin")
	g.Post("/login", s.handleAdminLogin)
	g.Use(s.requireAdmin)
	g.Post("/logout", s.handleAdminLogout)
	g.Get("/session", s.handleAdminSession)
	g.Post("/password", s.handleAdminPassword)
	s.adminKeyRoutes(g)
	s.usageAdminRoutes(g)
	s.accountAdminRoutes(g)
	s.dashboardAdminRoutes(g)
	return g
}

// requireAdmin lets a request through only with a live admin token in
// "Authorization: Bearer <token>".
func (s *Server) requireAdmin(c *fiber.Ctx) error {
	if s.admin == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "The admin API is not configured on this relay.")
	}
	tok := c.Get(fiber.HeaderAuthorization)
	if len(tok) > 7 && strings.EqualFold(tok[:7], "bearer ") {
		tok = strings.TrimSpace(tok[7:])
	} else {
		tok = ""
	}
	if tok == "" {
		return Errorf(http.StatusUnauthorized, "admin_token_required",
			"This route needs an admin token: log in with POST /admin/login and send \"Authorization: Bearer <token>\".")
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
	defer cancel()
	claims, err := s.admin.Verify(ctx, tok)
	switch {
	case err == nil:
	case errors.Is(err, adminauth.ErrExpiredToken):
		return Errorf(http.StatusUnauthorized, "admin_token_expired", "The admin token expired; log in again.")
	case errors.Is(err, adminauth.ErrRevokedToken):
		return Errorf(http.StatusUnauthorized, "admin_session_ended", "This admin session has ended (logout or password change); log in again.")
	case errors.Is(err, adminauth.ErrInvalidToken):
		return Errorf(http.StatusUnauthorized, "invalid_admin_token", "The admin token is not valid.")
	case errors.Is(err, adminauth.ErrNoSecret):
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "The admin API needs JWT_SECRET to be set.")
	default:
		s.requestLog(c).Error().Err(err).Msg("admin token check failed")
		return unavailableError()
	}
	c.Locals(localAdmin, claims)
	return c.Next()
}

func adminClaims(c *fiber.Ctx) adminauth.Claims {
	cl, _ := c.Locals(localAdmin).(adminauth.Claims)
	return cl
}

// decodeJSON reads the request body into v, refusing unknown fields so a
// misspelt setting is an error rather than silently ignored.
func decodeJSON(c *fiber.Ctx, v any) error {
	dec := json.NewDecoder(bytes.NewReader(c.Body()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &Error{Status: http.StatusBadRequest, Code: "invalid_json", Message: "The request body is not valid: " + err.Error()}
	}
	return nil
}

func (s *Server) adminAuthError(c *fiber.Ctx, err error) error {
	var t *adminauth.Throttled
	switch {
	case errors.As(err, &t):
		return &Error{Status: http.StatusTooManyRequests, Code: "too_many_attempts", RetryAfter: t.RetryAfter,
			Message: "Too many failed attempts from this address or for this username; wait before trying again."}
	case errors.Is(err, adminauth.ErrBadCredentials):
		return Errorf(http.StatusUnauthorized, "invalid_credentials", "Wrong username or password.")
	case errors.Is(err, adminauth.ErrWeakPassword):
		return &Error{Status: http.StatusBadRequest, Code: "weak_password", Param: "new_password", Message: err.Error() + "."}
	case errors.Is(err, adminauth.ErrNoSecret):
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "The admin API needs JWT_SECRET to be set.")
	}
	s.requestLog(c).Error().Err(err).Msg("admin authentication failed")
	return unavailableError()
}

func (s *Server) handleAdminLogin(c *fiber.Ctx) error {
	if s.admin == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "The admin API is not configured on this relay.")
	}
	var in struct {
		Username string `json:"username"`
		Password string `json:"password"`
	}
	if err := decodeJSON(c, &in); err != nil {
		return err
	}
	if in.Username == "" || in.Password == "" {
		return Errorf(http.StatusBadRequest, "invalid_request", "Send {\"username\": ..., \"password\": ...}.")
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
	defer cancel()
	sess, err := s.admin.Login(ctx, c.IP(), in.Username, in.Password)
	if err != nil {
		return s.adminAuthError(c, err)
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(sess)
}

func (s *Server) handleAdminLogout(c *fiber.Ctx) error {
	ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
	defer cancel()
	if err := s.admin.Logout(ctx, adminClaims(c)); err != nil {
		s.requestLog(c).Error().Err(err).Msg("admin logout failed")
		return unavailableError()
	}
	return c.JSON(fiber.Map{"logged_out": true})
}

func (s *Server) handleAdminSession(c *fiber.Ctx) error {
	cl := adminClaims(c)
	return c.JSON(fiber.Map{"username": cl.Subject, "expires_at": time.Unix(cl.Expires, 0).UTC()})
}

func (s *Server) handleAdminPassword(c *fiber.Ctx) error {
	var in struct {
		Current string `json:"current_password"`
		New     string `json:"new_password"`
	}
	if err := decodeJSON(c, &in); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
	defer cancel()
	sess, err := s.admin.ChangePassword(ctx, c.IP(), adminClaims(c), in.Current, in.New)
	if errors.Is(err, adminauth.ErrBadCredentials) {
		return &Error{Status: http.StatusForbidden, Code: "wrong_password", Param: "current_password",
			Message: "The current password is wrong."}
	}
	if err != nil {
		return s.adminAuthError(c, err)
	}
	c.Set(fiber.HeaderCacheControl, "no-store")
	return c.JSON(sess)
}
