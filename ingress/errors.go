package ingress

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/relaydev/relay/internal/gemini"
	"github.com/valyala/fasthttp"
)

// Error is a client-facing error. Handlers return it (or a plain error, which
// becomes a 500 that hides its text); the error handler renders it in the
// format of the API that was called.
type Error struct {
	Status     int
	Code       string // machine-readable, e.g. model_not_found, invalid_api_key
	Message    string // says what is wrong, for a person
	Param      string // the offending field, where there is one (OpenAI's "param")
	RetryAfter time.Duration
}

func (e *Error) Error() string { return e.Message }

// Errorf is an Error with a formatted message.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// dialect is the error format of one API family.
type dialect int

const (
	dialectOpenAI    dialect = iota // {"error":{"message","type","param","code"}}
	dialectAnthropic                // {"type":"error","error":{"type","message"}}
	dialectGoogle                   // {"error":{"code","message","status"}}
)

// dialectFor picks the error format from the path that was called.
func dialectFor(path string) dialect {
	switch {
	case strings.HasPrefix(path, "/api/"), strings.HasPrefix(path, "/claude/"):
		return dialectAnthropic
	case strings.HasPrefix(path, "/gemini"):
		return dialectGoogle
	default:
		return dialectOpenAI
	}
}

// body renders e in the dialect.
func (d dialect) body(e *Error) any {
	switch d {
	case dialectAnthropic:
		return fiber.Map{"type": "error", "error": fiber.Map{"type": anthropicType(e.Status), "message": e.Message}}
	case dialectGoogle:
		return fiber.Map{"error": fiber.Map{"code": e.Status, "message": e.Message, "status": gemini.StatusName(e.Status)}}
	default:
		var param, code any
		if e.Param != "" {
			param = e.Param
		}
		if e.Code != "" {
			code = e.Code
		}
		return fiber.Map{"error": fiber.Map{"message": e.Message, "type": openAIType(e.Status), "param": param, "code": code}}
	}
}

func openAIType(status int) string {
	switch {
	case status == http.StatusUnauthorized:
		return "authentication_error"
	case status == http.StatusForbidden:
		return "permission_error"
	case status == http.StatusNotFound:
		return "invalid_request_error"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error"
	case status == http.StatusPaymentRequired:
		return "insufficient_quota"
	case status >= 500:
		return "api_error"
	default:
		return "invalid_request_error"
	}
}

func anthropicType(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "authentication_error"
	case http.StatusPaymentRequired:
		return "billing_error"
	case http.StatusForbidden:
		return "permission_error"
	case http.StatusNotFound:
		return "not_found_error"
	case http.StatusRequestEntityTooLarge:
		return "request_too_large"
	case http.StatusTooManyRequests:
		return "rate_limit_error"
	case http.StatusGatewayTimeout:
		return "timeout_error"
	case 529, http.StatusServiceUnavailable:
		return "overloaded_error"
	}
	if status >= 500 {
		return "api_error"
	}
	return "invalid_request_error"
}

// handleError is Fiber's error handler: every error a handler returns, and
// every error fasthttp meets before a handler runs (a body over the limit, a
// malformed request line), is answered here in the called API's format.
func (s *Server) handleError(c *fiber.Ctx, err error) error {
	var e *Error
	var fe *fiber.Error
	switch {
	case errors.As(err, &e):
	case errors.As(err, &fe):
		e = fromFiber(fe)
	default:
		s.requestLog(c).Error().Err(err).Msg("internal error")
		e = &Error{Status: http.StatusInternalServerError, Code: "internal_error",
			Message: "The relay failed to handle the request; it has been logged under request id " + requestID(c) + "."}
	}
	return s.writeError(c, e)
}

func (s *Server) writeError(c *fiber.Ctx, e *Error) error {
	if e.RetryAfter > 0 {
		secs := int((e.RetryAfter + time.Second - 1) / time.Second)
		c.Set(fiber.HeaderRetryAfter, strconv.Itoa(secs))
	}
	return c.Status(e.Status).JSON(dialectFor(c.Path()).body(e))
}

func fromFiber(fe *fiber.Error) *Error {
	switch fe.Code {
	case fiber.StatusRequestEntityTooLarge:
		return &Error{Status: fe.Code, Code: "request_too_large", Message: "The request body is larger than the relay accepts."}
	case fiber.StatusNotFound:
		return &Error{Status: fe.Code, Code: "not_found", Message: "There is no such route. Check the base URL and the path."}
	case fiber.StatusMethodNotAllowed:
		return &Error{Status: fe.Code, Code: "method_not_allowed", Message: "This route does not accept that method."}
	}
	msg := fe.Message
	if fe.Code >= 500 {
		msg = http.StatusText(fe.Code)
	}
	if strings.HasPrefix(msg, "error when reading request") {
		// fasthttp's parse errors quote the raw request ("Buffer size=…,
		// contents: …"), Authorization header and all: never send that back.
		msg = "The request could not be read: its request line or headers are malformed " +
			"(for example a control character in a header value)."
	}
	return &Error{Status: fe.Code, Code: strings.ToLower(strings.ReplaceAll(http.StatusText(fe.Code), " ", "_")), Message: msg}
}

// knownMethods answers a request whose method Fiber does not know (e.g.
// BREW) with a 405 in the called API's error format; Fiber itself answers
// those with a plain-text 400 that no client SDK can read.
func knownMethods(next fasthttp.RequestHandler) fasthttp.RequestHandler {
	return func(ctx *fasthttp.RequestCtx) {
		m := ctx.Method()
		for _, known := range fiber.DefaultMethods {
			if string(m) == known {
				next(ctx)
				return
			}
		}
		e := &Error{Status: fiber.StatusMethodNotAllowed, Code: "method_not_allowed", Message: "The relay does not know that HTTP method."}
		body, _ := json.Marshal(dialectFor(string(ctx.Path())).body(e))
		ctx.Response.Header.SetContentType(fiber.MIMEApplicationJSON)
		ctx.SetStatusCode(e.Status)
		ctx.SetBody(body)
	}
}
