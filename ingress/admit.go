package ingress

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/relaydev/relay/internal/apikeys"
)

// admission is a client request that passed its key's checks. Release must
// be called once the request is over (it frees the concurrency lease).
//
// CONTRACT (callers rely only on this):
//   - requireKey(service) middleware authenticates the key (401s) before the
//     handler runs and stores it in the request's locals; a key without
//     permission for service is refused there already (403);
//   - the handler parses its body, then calls admit(c, service, model), which
//     checks permission and model lists (403), rate and concurrency (429 with
//     Retry-After) and budgets (402), and returns *Error in those cases;
//   - the handler defers adm.Release() and fills usage events with
//     adm.KeyID and adm.TokenWindowSec.
//
// Release may be called from another goroutine than the handler's (a stream
// pump) and after the handler returned; until it is called, the admission
// renews its concurrency lease, so long streams keep their slot.
type admission struct {
	KeyID          string
	TokenWindowSec int64
	release        func()
}

// Release frees what admit took. It is safe to call more than once.
func (a *admission) Release() {
	if a != nil && a.release != nil {
		a.release()
		a.release = nil
	}
}

const localAPIKey = "relay.api_key"

// keyLookupTimeout bounds the Redis work of authentication and admission.
const keyLookupTimeout = 3 * time.Second

// requireKey authenticates the request's relay API key for service ("" for
// routes every key may use, such as key-info).
func (s *Server) requireKey(service string) fiber.Handler {
	return func(c *fiber.Ctx) error {
		k, err := s.authenticate(c)
		if err != nil {
			return err
		}
		if service != "" && !k.Permits(service) {
			return permissionError(service)
		}
		c.Locals(localAPIKey, k)
		return c.Next()
	}
}

// apiKey is the key requireKey stored for this request (nil if none). It is
// shared with the key cache: read it, never change it.
func apiKey(c *fiber.Ctx) *apikeys.Key {
	k, _ := c.Locals(localAPIKey).(*apikeys.Key)
	return k
}

func (s *Server) authenticate(c *fiber.Ctx) (*apikeys.Key, error) {
	if s.keys == nil {
		return nil, Errorf(http.StatusServiceUnavailable, "service_unavailable", "API keys are not configured on this relay.")
	}
	raw := clientKey(c, s.keys.Prefix())
	if raw == "" {
		return nil, &Error{Status: http.StatusUnauthorized, Code: "missing_api_key",
			Message: "No API key was sent. Send your relay key as \"Authorization: Bearer <key>\" or \"x-api-key: <key>\" " +
				"(Gemini clients: \"x-goog-api-key\" or ?key=)."}
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), keyLookupTimeout)
	defer cancel()
	k, err := s.keys.Authenticate(ctx, raw)
	switch {
	case err == nil:
		return k, nil
	case errors.Is(err, apikeys.ErrInvalidKey):
		return nil, &Error{Status: http.StatusUnauthorized, Code: "invalid_api_key",
			Message: "The API key is not valid: it is mistyped, was deleted, or was regenerated."}
	case errors.Is(err, apikeys.ErrDisabled):
		return nil, &Error{Status: http.StatusUnauthorized, Code: "api_key_disabled",
			Message: "This API key is disabled. Ask the relay's admin to enable it."}
	case errors.Is(err, apikeys.ErrExpired):
		at, _ := k.ExpiresAt()
		return nil, &Error{Status: http.StatusUnauthorized, Code: "api_key_expired",
			Message: "This API key expired at " + at.UTC().Format(time.RFC3339) + "."}
	default:
		s.requestLog(c).Error().Err(err).Msg("api key lookup failed")
		return nil, unavailableError()
	}
}

func unavailableError() *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "service_unavailable", RetryAfter: time.Second,
		Message: "The relay cannot check API keys right now because its database does not answer. Try again shortly."}
}

func permissionError(service string) *Error {
	return &Error{Status: http.StatusForbidden, Code: "permission_denied",
		Message: fmt.Sprintf("This API key may not use the %s service.", service)}
}

// clientKey finds the key among the places clients send it: Authorization
// (Bearer), x-api-key, x-goog-api-key, api-key, then ?key=. The first value
// with the relay's prefix wins, so an unrelated Authorization header (e.g.
// from a proxy) does not hide the key in x-api-key; failing that, the first
// value given is returned, to be refused as invalid.
func clientKey(c *fiber.Ctx, prefix string) string {
	first := ""
	try := func(v string) bool {
		v = strings.TrimSpace(v)
		if v == "" {
			return false
		}
		if strings.HasPrefix(v, prefix) {
			first = v
			return true
		}
		if first == "" {
			first = v
		}
		return false
	}
	auth := c.Get(fiber.HeaderAuthorization)
	if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		auth = auth[7:]
	}
	_ = try(auth) || try(c.Get("x-api-key")) || try(c.Get("x-goog-api-key")) || try(c.Get("api-key")) ||
		try(c.Query("key"))
	return first
}

// admit checks the authenticated key's limits for one request to model.
func (s *Server) admit(c *fiber.Ctx, service, model string) (*admission, error) {
	k := apiKey(c)
	if k == nil {
		var err error
		if k, err = s.authenticate(c); err != nil {
			return nil, err
		}
	}
	if !k.Permits(service) {
		return nil, permissionError(service)
	}
	if !k.ModelAllowed(model) {
		return nil, &Error{Status: http.StatusForbidden, Code: "model_not_allowed", Param: "model",
			Message: fmt.Sprintf("This API key may not use the model %q.", model)}
	}
	ctx, cancel := context.WithTimeout(c.UserContext(), keyLookupTimeout)
	defer cancel()
	k, err := s.keys.Activate(ctx, k)
	switch {
	case errors.Is(err, apikeys.ErrExpired):
		at, _ := k.ExpiresAt()
		return nil, &Error{Status: http.StatusUnauthorized, Code: "api_key_expired",
			Message: "This API key expired at " + at.UTC().Format(time.RFC3339) + "."}
	case errors.Is(err, apikeys.ErrInvalidKey):
		return nil, &Error{Status: http.StatusUnauthorized, Code: "invalid_api_key", Message: "The API key was deleted."}
	case err != nil:
		s.requestLog(c).Error().Err(err).Msg("api key activation failed")
		return nil, unavailableError()
	}
	adm, err := s.keys.Admit(ctx, k)
	if err != nil {
		var d *apikeys.Denial
		if errors.As(err, &d) {
			return nil, denialError(d)
		}
		s.requestLog(c).Error().Err(err).Msg("api key limit check failed")
		return nil, unavailableError()
	}
	return &admission{KeyID: adm.KeyID, TokenWindowSec: adm.TokenWindowSec, release: adm.Release}, nil
}

func denialError(d *apikeys.Denial) *Error {
	e := &Error{RetryAfter: d.RetryAfter}
	reset := ""
	if !d.ResetAt.IsZero() {
		reset = " It resets at " + d.ResetAt.UTC().Format(time.RFC3339) + "."
	}
	switch d.Reason {
	case apikeys.DeniedConcurrency:
		e.Status, e.Code = http.StatusTooManyRequests, "concurrency_limit_exceeded"
		e.Message = fmt.Sprintf("This API key already has %d requests in progress, its limit. Retry when one has finished.", d.Limit)
	case apikeys.DeniedRate:
		e.Status, e.Code = http.StatusTooManyRequests, "rate_limit_exceeded"
		e.Message = fmt.Sprintf("This API key has used its %d requests for the current window.%s", d.Limit, reset)
	case apikeys.DeniedTokens:
		e.Status, e.Code = http.StatusTooManyRequests, "token_limit_exceeded"
		e.Message = fmt.Sprintf("This API key has used its %d tokens for the current window.%s", d.Limit, reset)
	case apikeys.DeniedDailyCost:
		e.Status, e.Code = http.StatusPaymentRequired, "daily_cost_limit_exceeded"
		e.Message = fmt.Sprintf("This API key has spent its daily budget of $%s (UTC day).%s", usd(d.Limit), reset)
	default:
		e.Status, e.Code = http.StatusPaymentRequired, "total_cost_limit_exceeded"
		e.Message = fmt.Sprintf("This API key has spent its total budget of $%s. Ask the relay's admin to raise it.", usd(d.Limit))
	}
	return e
}

// usd formats nano-dollars as dollars with up to 6 decimals.
func usd(nanos int64) string {
	s := fmt.Sprintf("%.6f", float64(nanos)/1e9)
	s = strings.TrimRight(s, "0")
	if strings.HasSuffix(s, ".") {
		s += "00"
	}
	return s
}
