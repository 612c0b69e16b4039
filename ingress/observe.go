package ingress

import (
	"strconv"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/rs/zerolog"
)

const localRequestID = "relay.request_id"

// observe gives every request an id, and counts, times and logs it. The log
// line has the path without its query string (which may hold ?key=) and no
// headers, so no secret reaches the logs.
func (s *Server) observe(c *fiber.Ctx) error {
	start := time.Now()
	id := c.Get(fiber.HeaderXRequestID)
	if !validRequestID(id) {
		id = uuid.NewString()
	}
	c.Locals(localRequestID, id)
	c.Set(fiber.HeaderXRequestID, id)

	err := c.Next()
	if err != nil {
		if herr := s.handleError(c, err); herr != nil {
			_ = c.SendStatus(fiber.StatusInternalServerError)
		}
	}
	status := c.Response().StatusCode()
	route := c.Route().Path
	if route == "/" && c.Path() != "/" {
		route = "unmatched" // keep arbitrary paths out of label values
	}
	elapsed := time.Since(start)
	st := strconv.Itoa(status)
	s.metrics.Requests.WithLabelValues(route, c.Method(), st).Inc()
	s.metrics.Latency.WithLabelValues(route, st).Observe(elapsed.Seconds())

	ev := s.log.Debug()
	if status >= 500 {
		ev = s.log.Warn()
	} else if status >= 400 {
		ev = s.log.Info()
	}
	ev.Str("request_id", id).Str("method", c.Method()).Str("path", c.Path()).
		Int("status", status).Dur("duration", elapsed).Msg("request")
	return nil
}

func validRequestID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return false
		}
	}
	return true
}

func requestID(c *fiber.Ctx) string {
	id, _ := c.Locals(localRequestID).(string)
	return id
}

// requestLog is the server's logger with the request id attached.
func (s *Server) requestLog(c *fiber.Ctx) *zerolog.Logger {
	l := s.log.With().Str("request_id", requestID(c)).Logger()
	return &l
}
