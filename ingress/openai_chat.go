package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/usage"
)

// VerticalStudio is what the OpenAI-compatible routes are served with.
type VerticalStudio struct {
	Caller  *vs.Caller
	Models  *vs.Models
	Archive ChatArchiver
	// MaxBodyBytes caps a chat request's body (default 4 MB).
	MaxBodyBytes int
	// HistoryChars caps the transcript sent upstream (0: no cap).
	HistoryChars int
	// UpstreamIdle ends an answer whose upstream sent nothing for this long
	// (default 5 minutes).
	UpstreamIdle time.Duration
}

// ChatArchiver queues the throw-away upstream chats for archiving
// (workers.ArchiveQueue): Opened records a chat as soon as it exists, so
// it is archived even if this process dies mid-request; Enqueue queues the
// request's chats when it is over.
type ChatArchiver interface {
	Opened(ctx context.Context, corner, chatID string) error
	Enqueue(ctx context.Context, corner string, chatIDs ...string) error
}

const defaultChatBodyLimit = 4 << 20

// VerticalStudioAccount is the account id usage events of the
// OpenAI-compatible routes carry: the one Vertical Studio account.
const VerticalStudioAccount = "vertical-studio"

// chatRequest is the part of an OpenAI chat completion request the relay uses.
type chatRequest struct {
	Model        string
	Messages     []vs.Message
	Stream       bool
	IncludeUsage bool
}

// parseChatRequest validates body and says precisely what is wrong with it.
func parseChatRequest(body []byte) (chatRequest, *Error) {
	bad := func(param, format string, args ...any) *Error {
		return &Error{Status: http.StatusBadRequest, Code: "invalid_request_error", Param: param, Message: fmt.Sprintf(format, args...)}
	}
	var raw struct {
		Model         json.RawMessage `json:"model"`
		Messages      json.RawMessage `json:"messages"`
		Stream        json.RawMessage `json:"stream"`
		StreamOptions json.RawMessage `json:"stream_options"`
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return chatRequest{}, bad("", "The request body is empty; send a JSON object with `model` and `messages`.")
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return chatRequest{}, bad("", "The request body must be a JSON object.")
		}
		return chatRequest{}, bad("", "The request body is not valid JSON: %s.", err.Error())
	}
	var r chatRequest
	if isNull(raw.Model) {
		return r, bad("model", "`model` is required.")
	}
	if json.Unmarshal(raw.Model, &r.Model) != nil {
		return r, bad("model", "`model` must be a string.")
	}
	if r.Model == "" {
		return r, bad("model", "`model` must not be empty.")
	}
	if isNull(raw.Messages) {
		return r, bad("messages", "`messages` is required.")
	}
	var msgs []json.RawMessage
	if json.Unmarshal(raw.Messages, &msgs) != nil {
		return r, bad("messages", "`messages` must be an array of message objects.")
	}
	if len(msgs) == 0 {
		return r, bad("messages", "`messages` must hold at least one message.")
	}
	r.Messages = make([]vs.Message, 0, len(msgs))
	for i, m := range msgs {
		msg, field, problem := parseMessage(m)
		if problem != "" {
			param := fmt.Sprintf("messages[%d]%s", i, field)
			return r, bad(param, "`%s` %s", param, problem)
		}
		r.Messages = append(r.Messages, msg)
	}
	if !isNull(raw.Stream) && json.Unmarshal(raw.Stream, &r.Stream) != nil {
		return r, bad("stream", "`stream` must be true or false.")
	}
	if !isNull(raw.StreamOptions) {
		var so struct {
			IncludeUsage *bool `json:"include_usage"`
		}
		if json.Unmarshal(raw.StreamOptions, &so) != nil {
			return r, bad("stream_options", "`stream_options` must be an object such as {\"include_usage\": true}.")
		}
		r.IncludeUsage = so.IncludeUsage != nil && *so.IncludeUsage
	}
	return r, nil
}

func isNull(b json.RawMessage) bool {
	b = bytes.TrimSpace(b)
	return len(b) == 0 || string(b) == "null"
}

// parseMessage reads one message. On failure it names the offending field
// (relative to the message, e.g. ".role") and what is wrong with it.
func parseMessage(b json.RawMessage) (msg vs.Message, field, problem string) {
	var m struct {
		Role    json.RawMessage `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if json.Unmarshal(b, &m) != nil {
		return msg, "", "must be an object with `role` and `content`."
	}
	if json.Unmarshal(m.Role, &msg.Role) != nil || msg.Role == "" {
		return msg, ".role", "must be one of system, developer, user, assistant, tool."
	}
	switch msg.Role {
	case "system", "developer", "user", "assistant", "tool", "function":
	default:
		return msg, ".role", "must be one of system, developer, user, assistant, tool (got " + strconv.Quote(msg.Role) + ")."
	}
	if isNull(m.Content) {
		return msg, "", ""
	}
	if json.Unmarshal(m.Content, &msg.Content) == nil {
		return msg, "", ""
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(m.Content, &parts) != nil {
		return msg, ".content", "must be a string or an array of content parts."
	}
	var texts []string
	for _, p := range parts {
		if (p.Type == "text" || p.Type == "input_text") && p.Text != "" {
			texts = append(texts, p.Text)
		}
	}
	msg.Content = strings.Join(texts, "\n")
	return msg, "", ""
}

// chatCall is one chat completion in flight: what the handler copied out of
// the request, and what the answer is made of so far.
type chatCall struct {
	s      *Server
	log    zerolog.Logger
	req    chatRequest
	model  vs.Model
	prompt string // system prompt and transcript, for estimating tokens
	start  time.Time
	ev     usage.Event
	adm    *admission
	ctx    context.Context
	cancel context.CancelFunc
	chats  []string

	id      string
	created int64

	text, reasoning int // characters received
	content         strings.Builder
	reasonBuf       strings.Builder
	finish          string
	upUsage         *vs.Usage
}

// handleChatCompletions is POST /v1/chat/completions.
func (s *Server) handleChatCompletions(c *fiber.Ctx) error {
	start := time.Now()
	if s.vs == nil {
		return vsNotConfigured()
	}
	limit := s.vs.MaxBodyBytes
	if limit <= 0 {
		limit = defaultChatBodyLimit
	}
	if len(c.Body()) > limit {
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: "request_too_large",
			Message: fmt.Sprintf("The request body is %d bytes; this route accepts at most %d.", len(c.Body()), limit)}
	}
	req, perr := parseChatRequest(c.Body())
	if perr != nil {
		return perr
	}
	model, ok := s.vs.Models.Lookup(req.Model)
	if !ok {
		return unknownModel(req.Model)
	}
	adm, err := s.admit(c, usage.ServiceOpenAI, req.Model)
	if err != nil {
		return err
	}
	system, prompt := vs.BuildPrompt(req.Messages, s.vs.HistoryChars)
	ctx, cancel := context.WithCancel(s.base)
	call := &chatCall{
		s: s, log: s.requestLog(c).With().Str("model", req.Model).Logger(), req: req, model: model,
		prompt: system + prompt, start: start, adm: adm, ctx: ctx, cancel: cancel,
		id: "chatcmpl-" + strings.ReplaceAll(uuid.NewString(), "-", ""), created: start.Unix(),
		ev: usage.Event{
			ID: uuid.NewString(), RequestID: requestID(c), Time: start, KeyID: adm.KeyID, AccountID: VerticalStudioAccount,
			Service: usage.ServiceOpenAI, Model: req.Model, UpstreamModel: model.Upstream,
			TokenWindowSec: adm.TokenWindowSec,
		},
	}
	settings := vs.TextSettings{ModelID: model.Upstream, CustomSystemPrompt: system}
	if model.Reasoning {
		settings.Reasoning = "on"
	}
	upReq := vs.ChatRequest{Corner: vs.CornerText, Content: prompt, Settings: settings}

	// Everything up to the first byte to the client may be retried: the
	// caller retries chat creation and sending; a body that breaks before
	// its first part is retried here once more.
	var parts <-chan partResult
	var first partResult
	var stop func()
	for try := 0; ; try++ {
		st, err := s.vs.Caller.Open(ctx, upReq, call.opened(ctx))
		if err != nil {
			return call.fail(err)
		}
		parts, stop = readParts(st)
		if !req.Stream {
			break
		}
		wait := s.cfg.StreamHeartbeat
		if wait <= 0 {
			wait = 5 * time.Second
		}
		t := time.NewTimer(wait)
		select {
		case first = <-parts:
		case <-t.C:
		}
		t.Stop()
		if first.err != nil && vs.KindOf(first.err) == vs.KindServer && try == 0 {
			stop()
			first = partResult{}
			continue
		}
		if first.err != nil && first.err != io.EOF {
			stop()
			return call.fail(first.err)
		}
		if first.part.Type == vs.PartError {
			stop()
			return call.fail(&vs.Error{Kind: vs.KindStream, Op: "chat", Msg: first.part.Text})
		}
		break
	}
	if !req.Stream {
		return call.collect(c, parts, stop)
	}
	es := newEventStream(s.cfg.StreamHeartbeat)
	startSSE(c, es)
	go call.pump(es, first, parts, stop)
	return nil
}

// fail answers an upstream failure that happened before the first byte.
func (call *chatCall) fail(err error) error {
	e := upstreamError(err, call.ctx)
	call.finishRequest(e.Status, vs.KindOf(err).String(), time.Time{})
	return e
}

func upstreamError(err error, ctx context.Context) *Error {
	var ve *vs.Error
	errors.As(err, &ve)
	switch {
	case ctx.Err() != nil:
		return &Error{Status: http.StatusServiceUnavailable, Code: "service_unavailable", RetryAfter: time.Second,
			Message: "The relay is shutting down; try again."}
	case ve == nil:
		return &Error{Status: http.StatusBadGateway, Code: "upstream_error", Message: "Vertical Studio did not answer properly."}
	case ve.Kind == vs.KindNotReady:
		return &Error{Status: http.StatusServiceUnavailable, Code: "service_unavailable", RetryAfter: 5 * time.Second,
			Message: "The relay's Vertical Studio session is not ready (" + ve.Msg + "). Try again shortly."}
	case ve.Kind == vs.KindAuth:
		return &Error{Status: http.StatusBadGateway, Code: "upstream_auth_error",
			Message: "Vertical Studio refused the relay's session even after a fresh login."}
	case ve.Kind == vs.KindStream:
		return &Error{Status: http.StatusBadGateway, Code: "upstream_error", Message: "Vertical Studio reported an error: " + ve.Msg}
	case ve.Status != 0:
		return &Error{Status: http.StatusBadGateway, Code: "upstream_error",
			Message: fmt.Sprintf("Vertical Studio failed to %s (status %d).", ve.Op, ve.Status)}
	default:
		return &Error{Status: http.StatusBadGateway, Code: "upstream_error",
			Message: fmt.Sprintf("Vertical Studio failed to %s (no answer).", ve.Op)}
	}
}

// partResult is one part read from the upstream, or the error that ended
// the body (io.EOF at its end).
type partResult struct {
	part vs.Part
	err  error
}

// readParts reads st in a goroutine of its own (so that waiting for the
// upstream can be combined with heartbeats and client disconnects). stop
// closes the upstream body and ends the goroutine (more calls do nothing).
func readParts(st *vs.Stream) (<-chan partResult, func()) {
	ch := make(chan partResult, 16)
	done := make(chan struct{})
	go func() {
		defer close(ch)
		for {
			p, err := st.Next()
			select {
			case ch <- partResult{part: p, err: err}:
			case <-done:
				return
			}
			if err != nil || p.Type == vs.PartFinish {
				return
			}
		}
	}()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			close(done)
			_ = st.Close()
		})
	}
}

// take records a part's contribution to the answer.
func (call *chatCall) take(p vs.Part) {
	switch p.Type {
	case vs.PartText:
		call.text += len(p.Text)
		if !call.req.Stream {
			call.content.WriteString(p.Text)
		}
	case vs.PartReasoning:
		call.reasoning += len(p.Text)
		if !call.req.Stream {
			call.reasonBuf.WriteString(p.Text)
		}
	case vs.PartFinishStep, vs.PartFinish:
		if p.Finish.FinishReason != "" {
			call.finish = p.Finish.FinishReason
		}
		if u := p.Finish.Usage; u != nil {
			if p.Type == vs.PartFinish || call.upUsage == nil {
				call.upUsage = &vs.Usage{PromptTokens: u.PromptTokens, CompletionTokens: u.CompletionTokens}
			} else {
				call.upUsage.PromptTokens += u.PromptTokens
				call.upUsage.CompletionTokens += u.CompletionTokens
			}
		}
	}
}

// tokens is the usage to report: the upstream's, or an estimate (about four
// characters a token) when it sent none.
func (call *chatCall) tokens() (in, out int64, estimated bool) {
	if u := call.upUsage; u != nil {
		return u.PromptTokens, u.CompletionTokens, false
	}
	return usage.EstimateTokens(int64(len(call.prompt))), usage.EstimateTokens(int64(call.text + call.reasoning)), true
}

func finishReason(upstream string) string {
	switch upstream {
	case "length":
		return "length"
	case "content-filter":
		return "content_filter"
	case "tool-calls":
		return "tool_calls"
	}
	return "stop"
}

// finishRequest records the request's usage and queues its chats for
// archiving. It runs once per request.
func (call *chatCall) finishRequest(status int, errClass string, firstByte time.Time) {
	in, out, est := call.tokens()
	ev := call.ev
	ev.InputTokens, ev.OutputTokens, ev.Estimated = in, out, est
	ev.LatencyMs = time.Since(call.start).Milliseconds()
	if !firstByte.IsZero() {
		ev.TTFBMs = firstByte.Sub(call.start).Milliseconds()
	}
	ev.Status, ev.ErrorClass = status, errClass
	call.s.recordUsage(ev)
	if m := call.s.metrics; m != nil {
		label := "ok"
		if errClass != "" {
			label = errClass
		}
		m.UpstreamRequests.WithLabelValues("vertical_studio", label).Inc()
	}
	call.cancel()
	call.adm.Release()
	call.archive()
}

// opened records each chat the upstream call creates: in the call, and as
// open in Redis, so it is archived even if this process dies mid-request.
func (call *chatCall) opened(ctx context.Context) func(chatID string) {
	return func(id string) {
		call.chats = append(call.chats, id)
		if call.s.vs.Archive == nil {
			return
		}
		if err := call.s.vs.Archive.Opened(ctx, vs.CornerText, id); err != nil {
			call.log.Warn().Err(err).Str("chat", id).Msg("could not record the open chat; it is archived when the request ends")
		}
	}
}

func (call *chatCall) archive() {
	if len(call.chats) == 0 || call.s.vs.Archive == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := call.s.vs.Archive.Enqueue(ctx, vs.CornerText, call.chats...); err != nil {
		call.log.Error().Err(err).Strs("chats", call.chats).Msg("could not queue chats for archiving; they stay in the account")
	}
}

func (call *chatCall) idle() time.Duration {
	if d := call.s.vs.UpstreamIdle; d > 0 {
		return d
	}
	return 5 * time.Minute
}

// collect reads the whole answer and sends one chat.completion.
func (call *chatCall) collect(c *fiber.Ctx, parts <-chan partResult, stop func()) error {
	defer stop()
	t := time.NewTimer(call.idle())
	defer t.Stop()
	for {
		select {
		case r, ok := <-parts:
			if !ok {
				return call.completion(c)
			}
			if r.err == io.EOF {
				return call.completion(c)
			}
			if r.err != nil {
				return call.fail(r.err)
			}
			if r.part.Type == vs.PartError {
				return call.fail(&vs.Error{Kind: vs.KindStream, Op: "chat", Msg: r.part.Text})
			}
			call.take(r.part)
			if r.part.Type == vs.PartFinish {
				return call.completion(c)
			}
			t.Reset(call.idle())
		case <-t.C:
			return call.fail(&vs.Error{Kind: vs.KindServer, Op: "answer", Msg: "the upstream went silent"})
		}
	}
}

type completionMessage struct {
	Role             string `json:"role"`
	Content          string `json:"content"`
	ReasoningContent string `json:"reasoning_content,omitempty"`
}

type completionChoice struct {
	Index        int               `json:"index"`
	Message      completionMessage `json:"message"`
	FinishReason string            `json:"finish_reason"`
}

type openAIUsage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

type completion struct {
	ID      string             `json:"id"`
	Object  string             `json:"object"`
	Created int64              `json:"created"`
	Model   string             `json:"model"`
	Choices []completionChoice `json:"choices"`
	Usage   openAIUsage        `json:"usage"`
}

func (call *chatCall) completion(c *fiber.Ctx) error {
	in, out, _ := call.tokens()
	body, err := json.Marshal(completion{
		ID: call.id, Object: "chat.completion", Created: call.created, Model: call.req.Model,
		Choices: []completionChoice{{Message: completionMessage{Role: "assistant", Content: call.content.String(),
			ReasoningContent: call.reasonBuf.String()}, FinishReason: finishReason(call.finish)}},
		Usage: openAIUsage{PromptTokens: in, CompletionTokens: out, TotalTokens: in + out},
	})
	if err != nil {
		return err
	}
	call.finishRequest(http.StatusOK, "", time.Now())
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(http.StatusOK).Send(body)
}

// pump forwards the upstream answer as chat.completion.chunk events, one
// event per upstream line. It owns the upstream request from here on.
func (call *chatCall) pump(es *eventStream, first partResult, parts <-chan partResult, stop func()) {
	enc := newChunkEncoder(call.id, call.created, call.req.Model)
	finished := false
	defer func() {
		if v := recover(); v != nil {
			call.log.Error().Interface("panic", v).Msg("chat stream writer panicked")
			if !finished {
				call.finishRequest(http.StatusOK, "internal_error", es.FirstByte())
			}
		}
		stop()
		es.End()
	}()
	end := func(errClass string) {
		finished = true
		call.finishRequest(http.StatusOK, errClass, es.FirstByte())
	}
	t := time.NewTimer(call.idle())
	defer t.Stop()
	pending := first.part.Type != 0 || first.err != nil
	for {
		var r partResult
		if pending {
			r, pending = first, false
		} else {
			select {
			case got, ok := <-parts:
				if !ok {
					got.err = io.EOF
				}
				r = got
			case <-es.Gone():
				stop()
				end("client_gone")
				return
			case <-t.C:
				r.err = &vs.Error{Kind: vs.KindServer, Op: "answer", Msg: "the upstream went silent"}
			}
		}
		if r.err == io.EOF || r.part.Type == vs.PartFinish {
			if r.err == nil {
				call.take(r.part)
			}
			es.Send(enc.final(finishReason(call.finish)))
			if call.req.IncludeUsage {
				in, out, _ := call.tokens()
				es.Send(enc.usage(in, out))
			}
			end("")
			es.Send(doneFrame)
			return
		}
		if r.err != nil || r.part.Type == vs.PartError {
			msg := "Vertical Studio's answer broke off."
			class := vs.KindServer.String()
			if r.err == nil {
				msg, class = "Vertical Studio reported an error: "+r.part.Text, vs.KindStream.String()
			}
			es.Send(errorFrame(msg))
			end(class)
			return
		}
		call.take(r.part)
		var frame []byte
		switch r.part.Type {
		case vs.PartText:
			frame = enc.delta("content", r.part.Text)
		case vs.PartReasoning:
			frame = enc.delta("reasoning_content", r.part.Text)
		}
		if frame != nil && !es.Send(frame) {
			stop()
			end("client_gone")
			return
		}
		t.Reset(call.idle())
	}
}

var doneFrame = []byte("data: [DONE]\n\n")

// chunkEncoder writes chat.completion.chunk events by appending to a
// prefix made once per request.
type chunkEncoder struct {
	head     []byte // `data: {"id":…,"model":…,"choices":[{"index":0,"delta":{`
	usageHdr []byte // `data: {"id":…,"model":…,"choices":[],"usage":`
	roleSent bool
}

func newChunkEncoder(id string, created int64, model string) *chunkEncoder {
	var b []byte
	b = append(b, `data: {"id":`...)
	b = appendJSONString(b, id)
	b = append(b, `,"object":"chat.completion.chunk","created":`...)
	b = strconv.AppendInt(b, created, 10)
	b = append(b, `,"model":`...)
	b = appendJSONString(b, model)
	common := b
	head := append(append([]byte(nil), common...), `,"choices":[{"index":0,"delta":{`...)
	usageHdr := append(append([]byte(nil), common...), `,"choices":[],"usage":`...)
	return &chunkEncoder{head: head, usageHdr: usageHdr}
}

func (e *chunkEncoder) start(extra int) []byte {
	b := make([]byte, 0, len(e.head)+extra+64)
	b = append(b, e.head...)
	if !e.roleSent {
		e.roleSent = true
		b = append(b, `"role":"assistant"`...)
		if extra >= 0 {
			b = append(b, ',')
		}
	}
	return b
}

// delta is an event with one delta field (content or reasoning_content).
func (e *chunkEncoder) delta(field, text string) []byte {
	b := e.start(len(text) + len(field))
	b = append(b, '"')
	b = append(b, field...)
	b = append(b, `":`...)
	b = appendJSONString(b, text)
	return append(b, "},\"finish_reason\":null}]}\n\n"...)
}

// final is the event with the finish reason and an empty delta.
func (e *chunkEncoder) final(reason string) []byte {
	b := e.start(-1)
	b = append(b, `},"finish_reason":`...)
	b = appendJSONString(b, reason)
	return append(b, "}]}\n\n"...)
}

// usage is the last event when the client asked for stream_options.include_usage.
func (e *chunkEncoder) usage(in, out int64) []byte {
	b := make([]byte, 0, len(e.usageHdr)+96)
	b = append(b, e.usageHdr...)
	b = append(b, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, in, 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, out, 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, in+out, 10)
	return append(b, "}}\n\n"...)
}

// errorFrame is an error event in OpenAI's shape (the SDKs raise it).
func errorFrame(msg string) []byte {
	b := []byte(`data: {"error":{"message":`)
	b = appendJSONString(b, msg)
	return append(b, ",\"type\":\"api_error\",\"param\":null,\"code\":\"upstream_error\"}}\n\n"...)
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD;
// U+2028 and U+2029 are escaped for JavaScript consumers.
func appendJSONString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
