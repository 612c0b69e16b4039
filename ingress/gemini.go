package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/gemini"
	"github.com/relaydev/relay/usage"
)

// relayProject is the Code Assist project the relay names to Gemini CLI
// when the client named none. Requests are sent upstream under the serving
// account's own project, whatever the client says.
const relayProject = "relay-gemini"

// Project discovery on first use of a Google OAuth account: onboarding
// polls this often, this many times.
const (
	onboardPoll  = 2 * time.Second
	onboardTries = 10
)

// geminiRoutes serves Gemini under /gemini:
//
//	POST /gemini/{v1beta|v1}/models/{model}:{generateContent|streamGenerateContent|countTokens}
//	GET  /gemini/{v1beta|v1}/models[/{model}]
//	POST /gemini/v1internal:{generateContent|streamGenerateContent|countTokens}   (Code Assist, Gemini CLI)
//	POST /gemini/v1internal:{loadCodeAssist|onboardUser|retrieveUserQuota|listExperiments}
//
// The "{model}:{method}" segment holds a colon, which Fiber's route patterns
// read as a parameter (a literal one is escaped), so the handlers parse the
// path after the prefix themselves. Other paths under /gemini get Fiber's
// 404, in Google's format.
func (s *Server) geminiRoutes() {
	key := s.requireKey(usage.ServiceGemini)
	s.app.Post("/gemini/v1internal\\:*", key, s.handleGeminiPost)
	for _, v := range []string{"v1beta", "v1"} {
		s.app.Post("/gemini/"+v+"/models/*", key, s.handleGeminiPost)
		s.app.Get("/gemini/"+v+"/models", key, s.handleGeminiGet)
		s.app.Get("/gemini/"+v+"/models/*", key, s.handleGeminiGet)
	}
}

func (s *Server) geminiReady() error {
	if s.sched == nil || s.gemini == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "Gemini accounts are not configured on this relay.")
	}
	return nil
}

// geminiPath is the path after /gemini/, unescaped.
func geminiPath(c *fiber.Ctx) string {
	p := strings.TrimPrefix(c.Path(), "/gemini")
	p = strings.TrimPrefix(p, "/")
	if u, err := url.PathUnescape(p); err == nil {
		p = u
	}
	return p
}

func notFound(what string) *Error {
	return Errorf(http.StatusNotFound, "not_found", "%s", what)
}

// nativeVersion splits "v1beta/models/..." into its version and the rest.
func nativeVersion(p string) (version, rest string, ok bool) {
	for _, v := range []string{"v1beta", "v1"} {
		if r, found := strings.CutPrefix(p, v+"/models"); found && (r == "" || r[0] == '/') {
			return v, strings.TrimPrefix(r, "/"), true
		}
	}
	return "", "", false
}

func (s *Server) handleGeminiPost(c *fiber.Ctx) error {
	p := geminiPath(c)
	if method, ok := strings.CutPrefix(p, "v1internal:"); ok {
		switch method {
		case gemini.MethodGenerate, gemini.MethodStream, gemini.MethodCount:
			call, err := gemini.ParseCodeAssist(method, c.Body())
			if err != nil {
				return geminiBadRequest(err)
			}
			return s.geminiModelCall(c, call, "v1beta")
		case "loadCodeAssist", "onboardUser", "retrieveUserQuota", "listExperiments":
			return s.codeAssistSetup(c, method)
		}
		return notFound(fmt.Sprintf("Method v1internal:%s is not served by this relay (it serves generateContent, "+
			"streamGenerateContent, countTokens, loadCodeAssist, onboardUser, retrieveUserQuota, listExperiments).", method))
	}
	version, rest, ok := nativeVersion(p)
	if !ok || rest == "" {
		return notFound("There is no such Gemini route. Use /gemini/v1beta/models/{model}:generateContent or /gemini/v1internal:{method}.")
	}
	model, method := gemini.SplitModelMethod(rest)
	if !gemini.KnownMethod(method) {
		return notFound(fmt.Sprintf("Method %q is not served for models (use generateContent, streamGenerateContent or countTokens).", method))
	}
	call, err := gemini.ParseNative(model, method, c.Body())
	if err != nil {
		return geminiBadRequest(err)
	}
	return s.geminiModelCall(c, call, version)
}

func geminiBadRequest(err error) error {
	var br *gemini.BadRequest
	if errors.As(err, &br) {
		return &Error{Status: http.StatusBadRequest, Code: "invalid_argument", Message: br.Msg}
	}
	return err
}

func (s *Server) handleGeminiGet(c *fiber.Ctx) error {
	_, rest, ok := nativeVersion(geminiPath(c))
	if !ok {
		return notFound("There is no such Gemini route. Use /gemini/v1beta/models.")
	}
	if rest == "" {
		return c.JSON(fiber.Map{"models": gemini.Models})
	}
	m, found := gemini.FindModel(rest)
	if !found {
		return notFound(fmt.Sprintf("models/%s is not found on this relay; GET /gemini/v1beta/models lists the models.", rest))
	}
	return c.JSON(m)
}

// codeAssistSetup answers Gemini CLI's start-up calls. The relay is the
// client's Code Assist: it names one project and a tier, and sends model
// calls upstream under each serving account's own project.
func (s *Server) codeAssistSetup(c *fiber.Ctx, method string) error {
	var in struct {
		Project  string `json:"project"`
		CAP      string `json:"cloudaicompanionProject"`
		TierID   string `json:"tierId"`
		Metadata struct {
			DuetProject string `json:"duetProject"`
		} `json:"metadata"`
	}
	if b := bytes.TrimSpace(c.Body()); len(b) > 0 {
		if err := json.Unmarshal(b, &in); err != nil {
			return Errorf(http.StatusBadRequest, "invalid_argument", "Invalid JSON payload received: %s", strings.TrimPrefix(err.Error(), "json: "))
		}
	}
	project := relayProject
	for _, p := range []string{in.CAP, in.Metadata.DuetProject, in.Project} {
		if p != "" {
			project = p
			break
		}
	}
	tier := gemini.Tier{ID: "standard-tier", Name: "Gemini Code Assist (relay)",
		Description: "Served by this relay's Gemini accounts.", IsDefault: true}
	switch method {
	case "loadCodeAssist":
		return c.JSON(fiber.Map{"currentTier": tier, "allowedTiers": []gemini.Tier{tier},
			"cloudaicompanionProject": project, "gcpManaged": false})
	case "onboardUser":
		return c.JSON(fiber.Map{"name": "operations/relay-onboard", "done": true, "response": fiber.Map{
			"@type":                   "type.googleapis.com/google.internal.cloud.code.v1internal.OnboardUserResponse",
			"cloudaicompanionProject": fiber.Map{"id": project, "name": project}}})
	case "retrieveUserQuota":
		reset := time.Now().UTC().Add(24 * time.Hour).Truncate(time.Hour).Format(time.RFC3339)
		buckets := make([]fiber.Map, 0, len(gemini.Models))
		for _, m := range gemini.Models {
			buckets = append(buckets, fiber.Map{"modelId": m.BaseModelID, "remainingFraction": 1, "resetTime": reset,
				"tokenType": "REQUESTS"})
		}
		return c.JSON(fiber.Map{"buckets": buckets})
	default: // listExperiments
		return c.JSON(fiber.Map{"experimentIds": []int{}, "flags": []any{}})
	}
}

// geminiCall is one client model call on its way upstream, copied out of
// the Fiber context.
type geminiCall struct {
	gemini.Call
	version   string // native API version for API-key accounts
	sse       bool   // the client asked for alt=sse (else a streamed JSON array)
	bound     string
	userAgent string
	log       zerolog.Logger
	maxTries  int
}

func (s *Server) geminiModelCall(c *fiber.Ctx, call gemini.Call, version string) error {
	start := time.Now()
	if err := s.geminiReady(); err != nil {
		return err
	}
	// The parsed call points into the request body, which fasthttp reuses.
	call.Request = append(json.RawMessage(nil), call.Request...)
	adm, err := s.admit(c, usage.ServiceGemini, call.Model)
	if err != nil {
		return err
	}
	handedOff := false
	defer func() {
		if !handedOff {
			adm.Release()
		}
	}()
	gc := geminiCall{Call: call, version: version, sse: c.Query("alt") == "sse", userAgent: c.Get(fiber.HeaderUserAgent),
		log: s.log.With().Str("request_id", requestID(c)).Logger(), maxTries: max(1, s.cfg.Accounts.MaxAttempts)}
	if k := apiKey(c); k != nil {
		gc.bound = k.BoundAccounts[usage.ServiceGemini]
	}
	if call.Method == gemini.MethodCount {
		gc.Session = "" // counting tokens does not start a conversation
		return s.geminiCount(c, gc)
	}
	ev := usage.Event{
		ID: uuid.NewString(), RequestID: requestID(c), Time: start, KeyID: adm.KeyID,
		Service: usage.ServiceGemini, Model: call.Model, TokenWindowSec: adm.TokenWindowSec,
	}
	ctx, cancel := context.WithTimeout(s.base, s.cfg.Gemini.UpstreamTimeout)
	pick, resp, reply, err := s.sendGemini(ctx, gc)
	if err != nil || reply != nil {
		cancel()
		return s.upstreamFailed(c, ev, start, reply, err)
	}
	ev.AccountID = pick.Account.ID
	conv := geminiConv{upstreamCA: pick.Account.Kind == accounts.KindGeminiOAuth, clientCA: call.CodeAssist}
	if call.Method != gemini.MethodStream {
		defer cancel()
		return s.geminiJSON(c, ev, start, gc, conv, resp)
	}
	st := newEventStream(0) // no heartbeat: Gemini clients refuse any line that is not data
	startSSE(c, st)
	if !gc.sse {
		c.Set(fiber.HeaderContentType, "application/json; charset=UTF-8")
	}
	handedOff = true
	go s.pumpGemini(ctx, cancel, st, resp, ev, start, gc, conv, adm)
	return nil
}

// geminiConv converts answers between the native and the Code Assist
// shapes.
type geminiConv struct{ upstreamCA, clientCA bool }

func (v geminiConv) body(raw []byte) []byte {
	switch {
	case v.upstreamCA && !v.clientCA:
		return gemini.UnwrapResponse(raw)
	case !v.upstreamCA && v.clientCA:
		return gemini.WrapResponse(raw)
	}
	return raw
}

func (v geminiConv) same() bool { return v.upstreamCA == v.clientCA }

// sendGemini sends the call to an account, and to the next one when an
// account fails before answering. It returns the open response of the
// first success, or the reply to give the client, or an error.
func (s *Server) sendGemini(ctx context.Context, gc geminiCall) (*accounts.Pick, *http.Response, *upstreamReply, error) {
	var exclude []string
	var last *upstreamReply
	refreshed := map[string]bool{}
	for attempt := 0; attempt < gc.maxTries; attempt++ {
		pick, err := s.sched.Pick(ctx, accounts.Request{Service: usage.ServiceGemini, Model: gc.Model,
			Session: gc.Session, Bound: gc.bound, Exclude: exclude})
		if err != nil {
			var na *accounts.NoAccountError
			if errors.As(err, &na) && last != nil && na.Tried > 0 && na.Tried == na.Configured-na.NoModel {
				return nil, nil, last, nil
			}
			return nil, nil, nil, err
		}
		id := pick.Account.ID
		log := gc.log.With().Str("account", id).Logger()
		target, path, body, err := s.geminiTarget(ctx, pick, gc)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, nil, ctx.Err()
			}
			log.Warn().Err(err).Msg("account cannot be used right now; trying another")
			exclude = append(exclude, id)
			continue
		}
		query := ""
		if gc.Method == gemini.MethodStream {
			query = "alt=sse"
		}
		resp, err := s.gemini.Send(ctx, target, http.MethodPost, path, query, body, gc.userAgent)
		if err != nil {
			if ctx.Err() != nil {
				return nil, nil, nil, ctx.Err()
			}
			s.metrics.UpstreamRequests.WithLabelValues("gemini", "error").Inc()
			log.Warn().Err(err).Msg("upstream unreachable; trying another account")
			s.failed(ctx, id, accounts.Failure{Reason: "connection failed"})
			exclude = append(exclude, id)
			last = &upstreamReply{status: http.StatusBadGateway, contentType: fiber.MIMEApplicationJSON,
				class: "upstream_unreachable", body: gemini.ErrorBody(http.StatusBadGateway, "The upstream could not be reached.")}
			continue
		}
		s.metrics.UpstreamRequests.WithLabelValues("gemini", strconv.Itoa(resp.StatusCode)).Inc()
		if resp.StatusCode < 400 {
			return pick, resp, nil, nil
		}
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamError))
		resp.Body.Close()
		ue := gemini.ErrorFromJSON(raw)
		status := resp.StatusCode
		if status == http.StatusBadRequest && bytes.Contains(raw, []byte("API_KEY_INVALID")) {
			status = http.StatusUnauthorized // the account's key, not the client's request
		}
		now := s.sched.Store().Now()
		reset := resetAt(resp.Header, now)
		if ue.RetryDelay > 0 {
			reset = now.Add(ue.RetryDelay)
		}
		f := accounts.Failure{Status: status, ResetAt: reset, Reason: ue.Message}
		reply := &upstreamReply{status: resp.StatusCode, body: raw, contentType: resp.Header.Get("Content-Type"),
			retryAfter: resp.Header.Get("Retry-After"), class: fmt.Sprintf("upstream_%d", resp.StatusCode)}
		if reply.retryAfter == "" {
			reply.retryAfter = gemini.RetryAfter(ue.RetryDelay)
		}
		if reply.contentType == "" {
			reply.contentType = fiber.MIMEApplicationJSON
		}
		if !f.Failover() {
			return nil, nil, reply, nil // the request itself was refused: the client learns why
		}
		if status == http.StatusUnauthorized && pick.Account.Kind == accounts.KindGeminiOAuth &&
			s.geminiTokens != nil && !refreshed[id] {
			refreshed[id] = true
			if _, err := s.geminiTokens.Refresh(ctx, id, target.BearerToken); err == nil {
				log.Info().Msg("upstream rejected the access token; refreshed it and retrying")
				attempt--
				continue
			}
		}
		state := s.failed(ctx, id, f)
		log.Warn().Int("status", resp.StatusCode).Str("state", state).Msg("upstream refused; trying another account")
		exclude = append(exclude, id)
		if status == http.StatusUnauthorized || status == http.StatusForbidden {
			reply = &upstreamReply{status: http.StatusServiceUnavailable, contentType: fiber.MIMEApplicationJSON,
				class: reply.class, body: gemini.ErrorBody(http.StatusServiceUnavailable,
					"The upstream account was refused ("+strconv.Itoa(resp.StatusCode)+") and needs re-authorization; no other account could serve.")}
		}
		last = reply
	}
	if last == nil {
		return nil, nil, nil, Errorf(http.StatusServiceUnavailable, "no_account_available", "No Gemini account could serve this request.")
	}
	return nil, nil, last, nil
}

// geminiTarget is where and what to send for the picked account: the
// native API with its key, or Code Assist with its token and project.
func (s *Server) geminiTarget(ctx context.Context, p *accounts.Pick, gc geminiCall) (gemini.Target, string, []byte, error) {
	t := gemini.Target{BaseURL: p.Account.BaseURL, Proxy: p.Credentials.Proxy}
	switch p.Account.Kind {
	case accounts.KindGeminiAPI:
		t.APIKey = p.Credentials.APIKey
		if t.APIKey == "" {
			return t, "", nil, errors.New("account has no API key")
		}
		body, err := gc.NativeBody()
		version := gc.version
		if version == "" || gc.CodeAssist {
			version = "v1beta"
		}
		return t, "/" + version + "/models/" + url.PathEscape(gc.Model) + ":" + gc.Method, body, err
	case accounts.KindGeminiOAuth:
		tok := p.Credentials.AccessToken
		if s.geminiTokens != nil {
			var err error
			if tok, err = s.geminiTokens.AccessToken(ctx, p.Account, p.Credentials); err != nil {
				return t, "", nil, err
			}
		}
		if tok == "" {
			return t, "", nil, errors.New("account has no access token")
		}
		t.BearerToken = tok
		project := ""
		if gc.Method != gemini.MethodCount {
			var err error
			if project, err = s.geminiProject(ctx, p, t); err != nil {
				return t, "", nil, err
			}
		}
		body, err := gc.CodeAssistBody(project)
		return t, "/v1internal:" + gc.Method, body, err
	}
	return t, "", nil, fmt.Errorf("account kind %s cannot serve Gemini", p.Account.Kind)
}

// geminiProject is the account's Code Assist project, discovered (and
// saved) on first use when the sign-in did not find it.
func (s *Server) geminiProject(ctx context.Context, p *accounts.Pick, t gemini.Target) (string, error) {
	if p.Account.Project != "" {
		return p.Account.Project, nil
	}
	d, err := s.gemini.DiscoverProject(ctx, t, "", onboardPoll, onboardTries)
	if err != nil {
		return "", fmt.Errorf("discover the Code Assist project: %w", err)
	}
	if _, err := s.sched.Store().Update(ctx, p.Account.ID, func(a *accounts.Account) error {
		a.Project = d.Project
		return nil
	}, nil); err != nil {
		s.log.Warn().Err(err).Str("account", p.Account.ID).Msg("could not save the discovered Code Assist project")
	}
	return d.Project, nil
}

func fillGeminiUsage(ev *usage.Event, u gemini.Usage) {
	ev.InputTokens, ev.OutputTokens, ev.CacheReadTokens = u.Input(), u.Output(), u.Cached
}

// geminiJSON answers a non-streaming generateContent.
func (s *Server) geminiJSON(c *fiber.Ctx, ev usage.Event, start time.Time, gc geminiCall, conv geminiConv, resp *http.Response) error {
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamBody))
	ev.LatencyMs = time.Since(start).Milliseconds()
	if err != nil {
		ev.Status, ev.ErrorClass, ev.Estimated = http.StatusBadGateway, "upstream_read", true
		ev.InputTokens = usage.EstimateTokens(int64(len(gc.Request)))
		s.recordUsage(ev)
		return Errorf(http.StatusBadGateway, "upstream_error", "The upstream connection broke before the answer was complete.")
	}
	if u, ok := gemini.UsageFromJSON(raw); ok {
		fillGeminiUsage(&ev, u)
	} else {
		ev.Estimated = true
		ev.InputTokens = usage.EstimateTokens(int64(len(gc.Request)))
	}
	ev.Status = resp.StatusCode
	ev.TTFBMs = ev.LatencyMs
	s.recordUsage(ev)
	c.Set(fiber.HeaderContentType, "application/json; charset=UTF-8")
	return c.Status(resp.StatusCode).Send(conv.body(raw))
}

// geminiCount answers countTokens: free upstream and no tokens used, so it
// produces no usage event.
func (s *Server) geminiCount(c *fiber.Ctx, gc geminiCall) error {
	ctx, cancel := context.WithTimeout(s.base, 2*time.Minute)
	defer cancel()
	_, resp, reply, err := s.sendGemini(ctx, gc)
	if err != nil {
		return s.accountError(err)
	}
	if reply != nil {
		if reply.retryAfter != "" {
			c.Set(fiber.HeaderRetryAfter, reply.retryAfter)
		}
		c.Set(fiber.HeaderContentType, reply.contentType)
		return c.Status(reply.status).Send(reply.body)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxUpstreamError))
	if err != nil {
		return Errorf(http.StatusBadGateway, "upstream_error", "The upstream connection broke before the answer was complete.")
	}
	// Both APIs answer {"totalTokens": n, ...}: no conversion.
	c.Set(fiber.HeaderContentType, "application/json; charset=UTF-8")
	return c.Status(resp.StatusCode).Send(raw)
}

// pumpGemini forwards the upstream's streamed chunks to the client, each as
// it arrives (byte for byte when both sides speak the same API), and
// records the request's usage before the last chunk goes out. A client that
// did not ask for alt=sse gets the chunks as a streamed JSON array, as
// Google sends them.
func (s *Server) pumpGemini(ctx context.Context, cancel context.CancelFunc, st *eventStream, resp *http.Response,
	ev usage.Event, start time.Time, gc geminiCall, conv geminiConv, adm *admission) {
	recorded := false
	er := gemini.NewEventReader(resp.Body)
	record := func(class string) {
		if recorded {
			return
		}
		recorded = true
		u := er.Usage()
		fillGeminiUsage(&ev, u)
		if !u.Seen || !er.Finished() {
			ev.Estimated = true
			ev.OutputTokens = max(ev.OutputTokens, usage.EstimateTokens(er.GeneratedBytes()))
			if !u.Seen {
				ev.InputTokens = usage.EstimateTokens(int64(len(gc.Request)))
			}
		}
		s.recordStreamed(ev, start, st, class)
	}
	sent := 0
	frame := func(data []byte, raw []byte) []byte {
		if gc.sse {
			if conv.same() && raw != nil {
				return raw
			}
			return gemini.DataFrame(conv.body(data))
		}
		sep := ",\r\n"
		if sent == 0 {
			sep = "["
		}
		return append([]byte(sep), conv.body(data)...)
	}
	stopWatch := st.CancelOnGone(cancel) // the client left: stop the upstream request
	defer func() {
		if r := recover(); r != nil {
			gc.log.Error().Interface("panic", r).Msg("gemini stream writer panicked")
			record("relay_panic")
		}
		stopWatch()
		resp.Body.Close()
		cancel()
		st.End()
		adm.Release()
	}()
	closeArray := func() {
		if !gc.sse {
			if sent == 0 {
				st.Send([]byte("[]"))
			} else {
				st.Send([]byte("]"))
			}
		}
	}
	for {
		e, err := er.Next()
		if err != nil {
			switch {
			case st.Left():
				record("client_gone")
			case errors.Is(err, io.EOF) && er.Finished():
				record("")
				closeArray()
			default:
				class := "upstream_truncated"
				if code, _ := er.StreamError(); code != 0 {
					class = "upstream_error_event:" + strconv.Itoa(code)
				} else if !errors.Is(err, io.EOF) {
					class = "upstream_stream_error"
					if ctx.Err() == context.DeadlineExceeded {
						class = "upstream_timeout"
					}
				}
				gc.log.Warn().Err(err).Str("class", class).Msg("upstream stream ended without a finish reason")
				record(class)
				if code, _ := er.StreamError(); code == 0 {
					msg := gemini.ErrorBody(http.StatusBadGateway, "The upstream stream ended before the answer was complete.")
					if gc.sse {
						st.Send(gemini.DataFrame(msg))
					} else {
						sep := ",\r\n"
						if sent == 0 {
							sep = "["
						}
						st.Send(append([]byte(sep), msg...))
						sent++
					}
				}
				closeArray()
			}
			return
		}
		if code, msg := er.StreamError(); code != 0 {
			s.failed(ctx, ev.AccountID, accounts.Failure{Status: code, Reason: "error in stream: " + msg})
			record("upstream_error_event:" + strconv.Itoa(code))
		}
		if er.Finished() {
			record("") // usage is durable before the client sees the last chunk
		}
		if !st.Send(frame(e.Data, e.Frame)) {
			record("client_gone")
			return
		}
		sent++
	}
}
