package fakeanthropic

import (
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// BenchOptions shape the benchmark fake's answers. Zero values take the
// defaults in the comments.
type BenchOptions struct {
	// Latency is the pause before a non-streaming answer.
	Latency time.Duration
	// ReplyBytes is the length of a non-streaming answer's text (default
	// 1,000: a response of about 1.4 KB, as in the peers' benchmarks).
	ReplyBytes int
	// FirstDelay is the pause before a stream's first event (message_start).
	FirstDelay time.Duration
	// Events is the number of content_block_delta events per stream
	// (default 20).
	Events int
	// EventBytes is the text length of each delta (default 16).
	EventBytes int
	// Gap is the pause before every event after the first, so each event
	// leaves on its own and the client can tell whether anything between
	// merged or delayed them.
	Gap time.Duration
	// Usage is reported in every answer (default: 25 input tokens).
	Usage Usage
}

func (o BenchOptions) withDefaults() BenchOptions {
	if o.ReplyBytes <= 0 {
		o.ReplyBytes = 1000
	}
	if o.Events <= 0 {
		o.Events = 20
	}
	if o.EventBytes <= 0 {
		o.EventBytes = 16
	}
	if o.Usage == (Usage{}) {
		o.Usage = Usage{Input: 25}
	}
	return o
}

// Bench is a lean fake of POST /v1/messages for load tests: it answers as
// the real Messages API does (JSON or SSE, with usage), accepts any
// x-api-key or Bearer token, and keeps only counters, so it can run for
// millions of requests. Its shape can change between runs (SetOptions).
type Bench struct {
	shape    atomic.Pointer[benchShape]
	requests atomic.Int64
	streams  atomic.Int64
	open     atomic.Int64
}

// benchShape is the options with their pre-built frames.
type benchShape struct {
	o        BenchOptions
	reply    string // JSON string literal of the non-streaming text
	delta    []byte // one content_block_delta frame
	usageEnd string
}

// NewBench returns a benchmark fake answering with o.
func NewBench(o BenchOptions) *Bench {
	b := &Bench{}
	b.SetOptions(o)
	return b
}

// SetOptions changes the shape of the answers to come.
func (b *Bench) SetOptions(o BenchOptions) {
	o = o.withDefaults()
	s := &benchShape{o: o}
	s.reply = strconv.Quote(filler(o.ReplyBytes))
	s.delta = []byte(`event: content_block_delta` + "\n" +
		`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":` +
		strconv.Quote(filler(o.EventBytes)) + "}}\n\n")
	s.usageEnd = benchUsage(o.Usage, int64(o.Events))
	b.shape.Store(s)
}

// Options returns the current options.
func (b *Bench) Options() BenchOptions { return b.shape.Load().o }

// BenchCounts are the benchmark fake's counters.
type BenchCounts struct {
	Requests int64 // Messages requests answered (streaming or not)
	Streams  int64 // of which streams
	Open     int64 // streams open now
}

// Counts returns the counters.
func (b *Bench) Counts() BenchCounts {
	return BenchCounts{Requests: b.requests.Load(), Streams: b.streams.Load(), Open: b.open.Load()}
}

// filler is n bytes of readable text.
func filler(n int) string {
	const words = "lorem ipsum dolor sit amet consectetur adipiscing elit "
	var sb strings.Builder
	sb.Grow(n)
	for sb.Len() < n {
		sb.WriteString(words[:min(len(words), n-sb.Len())])
	}
	return sb.String()
}

func benchUsage(u Usage, output int64) string {
	return `{"input_tokens":` + strconv.FormatInt(u.Input, 10) +
		`,"cache_creation_input_tokens":` + strconv.FormatInt(u.CacheCreate, 10) +
		`,"cache_read_input_tokens":` + strconv.FormatInt(u.CacheRead, 10) +
		`,"cache_creation":{"ephemeral_5m_input_tokens":` + strconv.FormatInt(u.Cache5m, 10) +
		`,"ephemeral_1h_input_tokens":` + strconv.FormatInt(u.Cache1h, 10) +
		`},"output_tokens":` + strconv.FormatInt(output, 10) + `,"service_tier":"standard"}`
}

// benchRequest is the part of a Messages request the fake looks at. It
// reads the model and the stream flag without decoding the whole body.
func benchRequest(body []byte) (model string, stream, ok bool) {
	s := string(body)
	i := strings.Index(s, `"model"`)
	if i < 0 || !strings.Contains(s, `"max_tokens"`) || !strings.Contains(s, `"messages"`) {
		return "", false, false
	}
	rest := strings.TrimLeft(s[i+len(`"model"`):], " \t\r\n:")
	if !strings.HasPrefix(rest, `"`) {
		return "", false, false
	}
	end := strings.IndexByte(rest[1:], '"')
	if end < 0 {
		return "", false, false
	}
	model = rest[1 : 1+end]
	stream = strings.Contains(strings.ReplaceAll(s, " ", ""), `"stream":true`)
	return model, stream, model != ""
}

var benchIDs atomic.Int64

// ServeHTTP answers POST /v1/messages.
func (b *Bench) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/messages" {
		writeError(w, http.StatusNotFound, "not_found_error", "Not found")
		return
	}
	if r.Header.Get("x-api-key") == "" && !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		writeError(w, http.StatusUnauthorized, "authentication_error", "x-api-key header is required")
		return
	}
	if r.Header.Get("anthropic-version") == "" {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "anthropic-version: header is required")
		return
	}
	body := make([]byte, 0, 512)
	buf := make([]byte, 512)
	for {
		n, err := r.Body.Read(buf)
		body = append(body, buf[:n]...)
		if err != nil {
			break
		}
	}
	model, stream, ok := benchRequest(body)
	if !ok {
		writeError(w, http.StatusBadRequest, "invalid_request_error", "model, max_tokens and messages are required")
		return
	}
	b.requests.Add(1)
	s := b.shape.Load()
	id := "msg_bench" + strconv.FormatInt(benchIDs.Add(1), 10)
	h := w.Header()
	h.Set("request-id", "req_bench"+strconv.FormatInt(benchIDs.Load(), 10))
	h.Set("anthropic-ratelimit-unified-status", "allowed")
	if !stream {
		if s.o.Latency > 0 && !sleep(r, s.o.Latency) {
			return
		}
		h.Set("Content-Type", "application/json")
		out := make([]byte, 0, 256+len(s.reply)+len(s.usageEnd))
		out = append(out, `{"id":"`...)
		out = append(out, id...)
		out = append(out, `","type":"message","role":"assistant","model":`...)
		out = strconv.AppendQuote(out, model)
		out = append(out, `,"content":[{"type":"text","text":`...)
		out = append(out, s.reply...)
		out = append(out, `}],"stop_reason":"end_turn","stop_sequence":null,"usage":`...)
		out = append(out, s.usageEnd...)
		out = append(out, '}')
		h.Set("Content-Length", strconv.Itoa(len(out)))
		_, _ = w.Write(out)
		return
	}
	b.streams.Add(1)
	b.open.Add(1)
	defer b.open.Add(-1)
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(frame []byte, pause time.Duration) bool {
		if pause > 0 && !sleep(r, pause) {
			return false
		}
		if _, err := w.Write(frame); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	start := []byte(`event: message_start` + "\n" + `data: {"type":"message_start","message":{"id":"` + id +
		`","type":"message","role":"assistant","model":` + strconv.Quote(model) +
		`,"content":[],"stop_reason":null,"stop_sequence":null,"usage":` + benchUsage(s.o.Usage, 1) + "}}\n\n")
	if !send(start, s.o.FirstDelay) ||
		!send([]byte("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"), s.o.Gap) {
		return
	}
	for range s.o.Events {
		if !send(s.delta, s.o.Gap) {
			return
		}
	}
	_ = send([]byte("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"), s.o.Gap) &&
		send([]byte("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":"+
			s.usageEnd+"}\n\n"), s.o.Gap) &&
		send([]byte("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"), s.o.Gap)
}

// sleep waits d, or until the client goes away (false).
func sleep(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}
