package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/usage"
)

// ClaudeTokens gives the access token to send for a Claude OAuth account
// (session.Claude implements it).
type ClaudeTokens interface {
	// AccessToken is the account's token, refreshed first if it is near
	// expiry.
	AccessToken(ctx context.Context, a accounts.Account, c accounts.Credentials) (string, error)
	// Refresh replaces a token the upstream rejected (stale); concurrent
	// callers share one refresh.
	Refresh(ctx context.Context, id, stale string) (string, error)
}

// maxUpstreamError is how much of an upstream error body is read.
const maxUpstreamError = 1 << 20

// maxUpstreamBody bounds a non-streaming upstream answer.
const maxUpstreamBody = 64 << 20

func (s *Server) anthropicRoutes() {
	for _, prefix := range []string{"/api", "/claude"} {
		s.app.Post(prefix+"/v1/messages", s.requireKey(usage.ServiceClaude), s.handleMessages)
		s.app.Post(prefix+"/v1/messages/count_tokens", s.requireKey(usage.ServiceClaude), s.handleCountTokens)
		s.app.Get(prefix+"/v1/models", s.requireKey(usage.ServiceClaude), s.handleClaudeModels)
	}
}

func (s *Server) claudeReady() error {
	if s.sched == nil || s.anthropic == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "Claude accounts are not configured on this relay.")
	}
	return nil
}

// claudeCall is one client request on its way upstream, copied out of the
// Fiber context.
type claudeCall struct {
	path     string // upstream path
	query    string
	header   http.Header
	body     []byte
	model    string
	session  string
	bound    string
	log      zerolog.Logger
	maxTries int
}

// upstreamReply is an upstream answer that goes back to the client as is.
type upstreamReply struct {
	status      int
	body        []byte
	contentType string
	retryAfter  string
	class       string
}

func badRequest(err error) error {
	var br *anthropic.BadRequest
	if errors.As(err, &br) {
		return &Error{Status: http.StatusBadRequest, Code: "invalid_request_error", Message: br.Msg}
	}
	return err
}

func (s *Server) newClaudeCall(c *fiber.Ctx, path string, body []byte, req anthropic.Request) claudeCall {
	h := make(http.Header, 16)
	c.Request().Header.VisitAll(func(k, v []byte) {
		if anthropic.Forwarded(string(k)) {
			h.Add(string(k), string(v))
		}
	})
	var bound string
	if k := apiKey(c); k != nil {
		bound = k.BoundAccounts[usage.ServiceClaude]
	}
	return claudeCall{
		path: path, query: string(c.Request().URI().QueryString()), header: h, body: body,
		model: req.Model, session: req.SessionID(c.Get("X-Claude-Code-Session-Id")), bound: bound,
		log: s.log.With().Str("request_id", requestID(c)).Logger(), maxTries: max(1, s.cfg.Accounts.MaxAttempts),
	}
}

func (s *Server) handleMessages(c *fiber.Ctx) error {
	start := time.Now()
	if err := s.claudeReady(); err != nil {
		return err
	}
	body := append([]byte(nil), c.Body()...)
	req, err := anthropic.ParseMessages(body)
	if err != nil {
		return badRequest(err)
	}
	adm, err := s.admit(c, usage.ServiceClaude, req.Model)
	if err != nil {
		return err
	}
	handedOff := false
	defer func() {
		if !handedOff {
			adm.Release()
		}
	}()
	call := s.newClaudeCall(c, "/v1/messages", body, req)
	ev := usage.Event{
		ID: uuid.NewString(), RequestID: requestID(c), Time: start, KeyID: adm.KeyID,
		Service: usage.ServiceClaude, Model: req.Model, TokenWindowSec: adm.TokenWindowSec,
	}
	ctx, cancel := context.WithTimeout(s.base, s.cfg.Claude.UpstreamTimeout)
	pick, resp, reply, err := s.sendClaude(ctx, call)
	if err != nil || reply != nil {
		cancel()
		return s.upstreamFailed(c, ev, start, reply, err)
	}
	ev.AccountID = pick.Account.ID
	if !req.Stream {
		defer cancel()
		return s.claudeJSON(c, ev, start, call, resp)
	}

	st := newEventStream(s.cfg.StreamHeartbeat)
	startSSE(c, st)
	handedOff = true
	go s.pumpClaude(ctx, cancel, st, resp, ev, start, call, adm)
	return nil
}

// upstreamFailed answers a Claude or Gemini request that got no upstream
// success: the last upstream error as the upstream sent it, or why no
// account could serve. Either way the request's usage event is recorded.
func (s *Server) upstreamFailed(c *fiber.Ctx, ev usage.Event, start time.Time, reply *upstreamReply, err error) error {
	ev.LatencyMs = time.Since(start).Milliseconds()
	if reply != nil {
		ev.Status, ev.ErrorClass = reply.status, reply.class
		s.recordUsage(ev)
		if reply.retryAfter != "" {
			c.Set(fiber.HeaderRetryAfter, reply.retryAfter)
		}
		c.Set(fiber.HeaderContentType, reply.contentType)
		return c.Status(reply.status).Send(reply.body)
	}
	e := s.accountError(err)
	ev.Status, ev.ErrorClass = e.Status, e.Code
	s.recordUsage(ev)
	return e
}

// accountError turns a failure to reach any account into a client error.
func (s *Server) accountError(err error) *Error {
	var na *accounts.NoAccountError
	var e *Error
	switch {
	case errors.As(err, &na):
		out := &Error{Status: na.Status(), Code: "no_account_available", Message: na.Error()}
		if t := na.RetryAt(); !t.IsZero() {
			out.RetryAfter = max(time.Second, t.Sub(s.sched.Store().Now()))
		}
		return out
	case errors.As(err, &e):
		return e
	case errors.Is(err, context.DeadlineExceeded):
		return Errorf(http.StatusGatewayTimeout, "upstream_timeout", "The upstream did not answer in time.")
	}
	s.log.Error().Err(err).Msg("upstream request failed")
	return Errorf(http.StatusBadGateway, "upstream_error", "The relay could not reach the upstream.")
}

// sendClaude sends the call to an account, and to the next one when an
// account fails before answering (rate limit, overload, server error,
// connection failure, rejected credentials). It returns the open response
// of the first success, or the reply to give the client, or an error.
func (s *Server) sendClaude(ctx context.Context, call claudeCall) (*accounts.Pick, *http.Response, *upstreamReply, error) {
	var exclude []string
	var last *upstreamReply
	refreshed := map[string]bool{}
	for attempt := 0; attempt < call.maxTries; attempt++ {
		pick, err := s.sched.Pick(ctx, accounts.Request{Service: usage.ServiceClaude, Model: call.model,
			Session: call.session, Bound: call.bound, Exclude: exclude})
		if err != nil {
			var na *accounts.NoAccountError
			if errors.As(err, &na) && last != nil && na.Tried > 0 && na.Tried == na.Configured-na.NoModel {
				return nil, nil, last, nil // nothing was marked: give the upstream's own answer
			}
			return nil, nil, nil, err
		}
		id := pick.Account.ID
		log := call.log.With().Str("account", id).Logger()
		target, err := s.claudeTarget(ctx, pick)
		if err != nil {
			log.Warn().Err(err).Msg("account has no usable token; trying another")
			exclude = append(exclude, id)
			continue
		}
		resp, err := s.anthropic.Send(ctx, target, http.MethodPost, call.path, call.query, call.header, call.body)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, nil, ctx.Err()
			}
			s.metrics.UpstreamRequests.WithLabelValues("anthropic", "error").Inc()
			log.Warn().Err(err).Msg("upstream unreachable; trying another account")
			s.failed(ctx, id, accounts.Failure{Reason: "connection failed"})
			exclude = append(exclude, id)
			last = &upstreamReply{status: http.StatusBadGateway, contentType: fiber.MIMEApplicationJSON, class: "upstream_unreachable",
				body: anthropicErrorBody("api_error", "The upstream could not be reached.")}
			continue
		}
		s.metrics.UpstreamRequests.WithLabelValues("anthropic", strconv.Itoa(resp.StatusCode)).Inc()
		if resp.StatusCode < 400 {
			return pick, resp, nil, nil
		}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamError))
		resp.Body.Close()
		_, msg := anthropic.ErrorFromJSON(raw)
		f := accounts.Failure{Status: resp.StatusCode, ResetAt: resetAt(resp.Header, s.sched.Store().Now()), Reason: msg}
		reply := &upstreamReply{status: resp.StatusCode, body: raw, contentType: resp.Header.Get("Content-Type"),
			retryAfter: resp.Header.Get("Retry-After"), class: fmt.Sprintf("upstream_%d", resp.StatusCode)}
		if reply.contentType == "" {
			reply.contentType = fiber.MIMEApplicationJSON
		}
		if !f.Failover() {
			return nil, nil, reply, nil // the request itself was refused: the client learns why
		}
		if resp.StatusCode == http.StatusUnauthorized && pick.Account.Kind == accounts.KindClaudeOAuth &&
			s.claudeTokens != nil && !refreshed[id] {
			refreshed[id] = true
			if _, err := s.claudeTokens.Refresh(ctx, id, target.BearerToken); err == nil {
				log.Info().Msg("upstream rejected the access token; refreshed it and retrying")
				attempt--
				continue
			}
		}
		state := s.failed(ctx, id, f)
		log.Warn().Int("status", resp.StatusCode).Str("state", state).Msg("upstream refused; trying another account")
		exclude = append(exclude, id)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			// The client's key is fine: do not pass on the upstream's
			// credential complaint as if it were about the client.
			reply = &upstreamReply{status: http.StatusServiceUnavailable, contentType: fiber.MIMEApplicationJSON,
				class: reply.class, body: anthropicErrorBody("overloaded_error",
					"The upstream account was refused ("+strconv.Itoa(resp.StatusCode)+") and needs re-authorization; no other account could serve.")}
		}
		last = reply
	}
	if last == nil {
		return nil, nil, nil, Errorf(http.StatusServiceUnavailable, "no_account_available", "No Claude account could serve this request.")
	}
	return nil, nil, last, nil
}

func (s *Server) failed(ctx context.Context, id string, f accounts.Failure) string {
	mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	state, err := s.sched.Failed(mctx, id, f)
	if err != nil {
		s.log.Warn().Err(err).Str("account", id).Msg("could not record the account's state")
	}
	return state
}

func (s *Server) claudeTarget(ctx context.Context, p *accounts.Pick) (anthropic.Target, error) {
	t := anthropic.Target{BaseURL: p.Account.BaseURL, Proxy: p.Credentials.Proxy}
	switch p.Account.Kind {
	case accounts.KindClaudeConsole:
		t.APIKey = p.Credentials.APIKey
	case accounts.KindClaudeOAuth:
		if s.claudeTokens == nil {
			t.BearerToken = p.Credentials.AccessToken
			break
		}
		tok, err := s.claudeTokens.AccessToken(ctx, p.Account, p.Credentials)
		if err != nil {
			return t, err
		}
		t.BearerToken = tok
	default:
		return t, fmt.Errorf("account kind %s cannot serve Claude", p.Account.Kind)
	}
	if t.APIKey == "" && t.BearerToken == "" {
		return t, errors.New("account has no credential")
	}
	return t, nil
}

// resetAt is when a 429 says the limit resets: the unified reset (unix
// seconds), else retry-after, else the latest of the per-limit resets.
func resetAt(h http.Header, now time.Time) time.Time {
	if v := strings.TrimSpace(h.Get("anthropic-ratelimit-unified-reset")); v != "" {
		if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 0 {
			if n > 1e12 {
				return time.UnixMilli(n)
			}
			return time.Unix(n, 0)
		}
		if t, err := time.Parse(time.RFC3339, v); err == nil {
			return t
		}
	}
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if n, err := strconv.ParseFloat(v, 64); err == nil && n >= 0 {
			return now.Add(time.Duration(n * float64(time.Second)))
		}
		if t, err := http.ParseTime(v); err == nil {
			return t
		}
	}
	var latest time.Time
	for _, k := range []string{"anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-reset",
		"anthropic-ratelimit-input-tokens-reset", "anthropic-ratelimit-output-tokens-reset"} {
		if t, err := time.Parse(time.RFC3339, h.Get(k)); err == nil && t.After(latest) {
			latest = t
		}
	}
	return latest
}

func anthropicErrorBody(typ, msg string) []byte {
	b, _ := json.Marshal(fiber.Map{"type": "error", "error": fiber.Map{"type": typ, "message": msg}})
	return b
}

// claudeJSON answers a non-streaming request with the upstream's body.
func (s *Server) claudeJSON(c *fiber.Ctx, ev usage.Event, start time.Time, call claudeCall, resp *http.Response) error {
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	ev.LatencyMs = time.Since(start).Milliseconds()
	if err != nil {
		ev.Status, ev.ErrorClass, ev.Estimated = http.StatusBadGateway, "upstream_read", true
		ev.InputTokens = usage.EstimateTokens(int64(len(call.body)))
		s.recordUsage(ev)
		return Errorf(http.StatusBadGateway, "upstream_error", "The upstream connection broke before the answer was complete.")
	}
	if u, ok := anthropic.UsageFromJSON(raw); ok {
		fillUsage(&ev, u, call.model)
	}
	ev.Status = resp.StatusCode
	ev.TTFBMs = ev.LatencyMs
	s.recordUsage(ev)
	ct := resp.Header.Get("Content-Type")
	if ct == "" {
		ct = fiber.MIMEApplicationJSON
	}
	c.Set(fiber.HeaderContentType, ct)
	return c.Status(resp.StatusCode).Send(raw)
}

func fillUsage(ev *usage.Event, u anthropic.Usage, model string) {
	ev.InputTokens, ev.OutputTokens = u.InputTokens, u.OutputTokens
	ev.CacheCreateTokens, ev.CacheReadTokens = u.CacheCreateTokens, u.CacheReadTokens
	if u.Model != "" && u.Model != model {
		ev.UpstreamModel = u.Model
	}
}

// pumpClaude forwards the upstream's SSE events to the client, each as it
// arrives and byte for byte, and records the request's usage before the
// final event goes out.
func (s *Server) pumpClaude(ctx context.Context, cancel context.CancelFunc, st *eventStream, resp *http.Response,
	ev usage.Event, start time.Time, call claudeCall, adm *admission) {
	recorded := false
	er := anthropic.NewEventReader(resp.Body)
	record := func(class string) {
		if recorded {
			return
		}
		recorded = true
		u := er.Usage()
		fillUsage(&ev, u, call.model)
		if !u.SeenEnd {
			ev.Estimated = true
			ev.OutputTokens = max(ev.OutputTokens, usage.EstimateTokens(er.GeneratedBytes()))
			if !u.SeenStart {
				ev.InputTokens = usage.EstimateTokens(int64(len(call.body)))
			}
		}
		s.recordStreamed(ev, start, st, class)
	}
	stopWatch := st.CancelOnGone(cancel) // the client left: stop the upstream request
	defer func() {
		if r := recover(); r != nil {
			call.log.Error().Interface("panic", r).Msg("claude stream writer panicked")
			record("relay_panic")
		}
		stopWatch()
		resp.Body.Close()
		cancel()
		st.End()
		adm.Release()
	}()

	for {
		e, err := er.Next()
		if err != nil {
			switch {
			case st.Left():
				record("client_gone")
			case errors.Is(err, io.EOF) && (er.Stopped() || errType(er) != ""):
				record(streamClass(er))
			default:
				// The upstream stream broke or ended early: say so in the
				// protocol's own error event, then end.
				class := "upstream_truncated"
				if !errors.Is(err, io.EOF) {
					class = "upstream_stream_error"
					if ctx.Err() == context.DeadlineExceeded {
						class = "upstream_timeout"
					}
				}
				call.log.Warn().Err(err).Str("class", class).Msg("upstream stream ended without message_stop")
				record(class)
				st.Send(anthropic.ErrorEvent("api_error", "The upstream stream ended before the message was complete."))
			}
			return
		}
		if e.Type == "message_stop" || e.Type == "error" {
			if e.Type == "error" {
				s.streamErrorState(ctx, ev.AccountID, er)
			}
			record(streamClass(er)) // usage is durable before the client sees the end
		}
		if !st.Send(e.Frame) {
			record("client_gone")
			return
		}
	}
}

func errType(er *anthropic.EventReader) string {
	t, _ := er.StreamError()
	return t
}

func streamClass(er *anthropic.EventReader) string {
	if t := errType(er); t != "" {
		return "upstream_error_event:" + t
	}
	return ""
}

// streamErrorState records what an error event in the middle of a stream
// says about the account (an overload, a rate limit).
func (s *Server) streamErrorState(ctx context.Context, id string, er *anthropic.EventReader) {
	typ, msg := er.StreamError()
	var status int
	switch typ {
	case "overloaded_error":
		status = 529
	case "rate_limit_error":
		status = http.StatusTooManyRequests
	case "api_error":
		status = http.StatusInternalServerError
	default:
		return
	}
	s.failed(ctx, id, accounts.Failure{Status: status, Reason: "error event in stream: " + msg})
}

func (s *Server) handleCountTokens(c *fiber.Ctx) error {
	if err := s.claudeReady(); err != nil {
		return err
	}
	body := append([]byte(nil), c.Body()...)
	req, err := anthropic.ParseCountTokens(body)
	if err != nil {
		return badRequest(err)
	}
	adm, err := s.admit(c, usage.ServiceClaude, req.Model)
	if err != nil {
		return err
	}
	defer adm.Release()
	call := s.newClaudeCall(c, "/v1/messages/count_tokens", body, req)
	call.session = "" // counting tokens does not start a conversation
	ctx, cancel := context.WithTimeout(s.base, 2*time.Minute)
	defer cancel()
	// count_tokens is free upstream and uses no tokens, so it produces no
	// usage event (counting it as a request would inflate request counts).
	_, resp, reply, err := s.sendClaude(ctx, call)
	if err != nil {
		return s.accountError(err)
	}
	if reply != nil {
		c.Set(fiber.HeaderContentType, reply.contentType)
		return c.Status(reply.status).Send(reply.body)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamError))
	if err != nil {
		return Errorf(http.StatusBadGateway, "upstream_error", "The upstream connection broke before the answer was complete.")
	}
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(resp.StatusCode).Send(raw)
}

func (s *Server) handleClaudeModels(c *fiber.Ctx) error {
	list := anthropic.Models
	first, last := "", ""
	if len(list) > 0 {
		first, last = list[0].ID, list[len(list)-1].ID
	}
	return c.JSON(fiber.Map{"data": list, "has_more": false, "first_id": first, "last_id": last})
}
