//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// kind is one sort of client request in the load.
type kind string

const (
	openAIPlain  kind = "openai"
	openAIStream kind = "openai-stream"
	claudePlain  kind = "claude"
	claudeStream kind = "claude-stream"
	image        kind = "image"
)

var kinds = []kind{openAIPlain, openAIStream, claudePlain, claudeStream, image}

// outcome is what the client got.
type outcome string

const (
	outOK     outcome = "ok"          // a complete answer
	outError  outcome = "clean error" // an error status with a body in the API's format, or an error event in a stream
	outCut    outcome = "cut"         // the connection broke before the answer was complete
	outUnfit  outcome = "unclean"     // anything else: an answer the client cannot trust
	outNoConn outcome = "no replica"  // no replica accepted a connection
)

// tokens are the usage a client saw in an answer.
type tokens struct {
	In, Out, CacheCreate, CacheRead int64
}

func (t tokens) total() int64 { return t.In + t.Out + t.CacheCreate + t.CacheRead }

// result is one request of the load.
type result struct {
	seq     int
	id      string // X-Request-Id sent
	kind    kind
	phase   string
	key     string // key id
	replica string // which replica served it
	start   time.Time
	end     time.Time
	status  int
	outcome outcome
	detail  string
	tokens  tokens
}

// loadGen runs workers that send requests until stopped.
type loadGen struct {
	client *http.Client
	bal    *balancer
	phase  func() (name, rawKey, keyID string)

	seq     atomic.Int64
	mu      sync.Mutex
	results []result
}

func (g *loadGen) run(ctx context.Context, workers int) *sync.WaitGroup {
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; ctx.Err() == nil; i++ {
				r := g.one(kinds[i%len(kinds)])
				g.mu.Lock()
				g.results = append(g.results, r)
				g.mu.Unlock()
			}
		}(w)
	}
	return &wg
}

func (g *loadGen) all() []result {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]result(nil), g.results...)
}

// recentAllOK reports whether the last n finished requests were all OK.
func (g *loadGen) recentAllOK(n int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.results) < n {
		return false
	}
	for _, r := range g.results[len(g.results)-n:] {
		if r.outcome != outOK {
			return false
		}
	}
	return true
}

func (g *loadGen) one(k kind) (r result) {
	phase, raw, keyID := g.phase()
	seq := int(g.seq.Add(1))
	r = result{seq: seq, id: fmt.Sprintf("fault-%06d", seq), kind: k, phase: phase, key: keyID, start: time.Now()}
	defer func() { r.end = time.Now() }()
	var path, body string
	stream := k == openAIStream || k == claudeStream
	switch k {
	case openAIPlain, openAIStream:
		path = "/v1/chat/completions"
		body = fmt.Sprintf(`{"model":"gpt-4o","stream":%t,"stream_options":%s,"messages":[{"role":"user","content":"request %d"}]}`,
			stream, map[bool]string{true: `{"include_usage":true}`, false: "null"}[stream], seq)
	case image:
		path = "/v1/images/generations"
		body = fmt.Sprintf(`{"model":"dall-e-3","prompt":"%s","n":1,"response_format":"url"}`, imagePrompt(r.id, phase))
	default:
		path = "/api/v1/messages"
		body = fmt.Sprintf(`{"model":"claude-sonnet-4-5","max_tokens":256,"stream":%t,"messages":[{"role":"user","content":"request %d"}]}`, stream, seq)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://relay.lb"+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", r.id)
	if k == claudePlain || k == claudeStream {
		req.Header.Set("x-api-key", raw)
		req.Header.Set("anthropic-version", "2023-06-01")
	} else {
		req.Header.Set("Authorization", "Bearer "+raw)
	}
	connected := false
	req = req.WithContext(httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) {
			connected = true
			r.replica = g.bal.replicaAt(info.Conn.RemoteAddr().String())
		},
	}))
	resp, err := g.client.Do(req)
	if err != nil {
		if !connected {
			r.outcome, r.detail = outNoConn, err.Error()
		} else {
			r.outcome, r.detail = outCut, err.Error()
		}
		return r
	}
	defer resp.Body.Close()
	r.status = resp.StatusCode
	if resp.StatusCode != http.StatusOK {
		b, err := io.ReadAll(resp.Body)
		switch {
		case err != nil:
			r.outcome, r.detail = outCut, err.Error()
		case cleanError(k, b):
			r.outcome, r.detail = outError, fmt.Sprintf("%d %s", resp.StatusCode, b)
		default:
			r.outcome, r.detail = outUnfit, fmt.Sprintf("%d %q", resp.StatusCode, b)
		}
		return r
	}
	switch k {
	case openAIPlain:
		r.outcome, r.detail, r.tokens = readOpenAI(resp.Body)
	case claudePlain:
		r.outcome, r.detail, r.tokens = readClaude(resp.Body)
	case openAIStream:
		r.outcome, r.detail, r.tokens = readOpenAIStream(resp.Body)
	case claudeStream:
		r.outcome, r.detail, r.tokens = readClaudeStream(resp.Body)
	case image:
		r.outcome, r.detail = readImages(resp.Body)
	}
	return r
}

// cleanError reports whether b is an error body in the format of the API
// that kind calls.
func cleanError(k kind, b []byte) bool {
	if k == claudePlain || k == claudeStream {
		var e struct {
			Type  string `json:"type"`
			Error struct{ Type, Message string }
		}
		return json.Unmarshal(b, &e) == nil && e.Type == "error" && e.Error.Type != "" && e.Error.Message != ""
	}
	var e struct {
		Error *struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    any     `json:"code"`
		} `json:"error"`
	}
	return json.Unmarshal(b, &e) == nil && e.Error != nil && e.Error.Message != "" && e.Error.Type != ""
}

func readOpenAI(body io.Reader) (outcome, string, tokens) {
	b, err := io.ReadAll(body)
	if err != nil {
		return outCut, err.Error(), tokens{}
	}
	var c struct {
		Object  string `json:"object"`
		Choices []struct {
			Message struct{ Content string } `json:"message"`
		} `json:"choices"`
		Usage *struct {
			Prompt     int64 `json:"prompt_tokens"`
			Completion int64 `json:"completion_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &c); err != nil || c.Object != "chat.completion" || len(c.Choices) == 0 || c.Usage == nil {
		return outUnfit, fmt.Sprintf("not a chat.completion with usage: %q", b), tokens{}
	}
	return outOK, "", tokens{In: c.Usage.Prompt, Out: c.Usage.Completion}
}

func readClaude(body io.Reader) (outcome, string, tokens) {
	b, err := io.ReadAll(body)
	if err != nil {
		return outCut, err.Error(), tokens{}
	}
	var m struct {
		Type  string     `json:"type"`
		Usage *wireUsage `json:"usage"`
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Type != "message" || m.Usage == nil {
		return outUnfit, fmt.Sprintf("not a message with usage: %q", b), tokens{}
	}
	return outOK, "", m.Usage.tokens()
}

type wireUsage struct {
	Input       int64 `json:"input_tokens"`
	Output      int64 `json:"output_tokens"`
	CacheCreate int64 `json:"cache_creation_input_tokens"`
	CacheRead   int64 `json:"cache_read_input_tokens"`
}

func (u wireUsage) tokens() tokens {
	return tokens{In: u.Input, Out: u.Output, CacheCreate: u.CacheCreate, CacheRead: u.CacheRead}
}

// sseData calls fn with each event's data (comments and blank lines
// skipped); it returns the read error, io.EOF at a clean end.
func sseData(body io.Reader, fn func(event string, data []byte)) error {
	br := bufio.NewReaderSize(body, 64<<10)
	event := ""
	for {
		line, err := br.ReadBytes('\n')
		if err != nil {
			return err
		}
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case len(line) == 0:
			event = ""
		case bytes.HasPrefix(line, []byte("event:")):
			event = string(bytes.TrimSpace(line[6:]))
		case bytes.HasPrefix(line, []byte("data:")):
			fn(event, bytes.TrimSpace(line[5:]))
		}
	}
}

func readOpenAIStream(body io.Reader) (outcome, string, tokens) {
	var t tokens
	done, failed, content := false, "", 0
	unfit := ""
	err := sseData(body, func(_ string, data []byte) {
		if done {
			unfit = "data after [DONE]"
			return
		}
		if string(data) == "[DONE]" {
			done = true
			return
		}
		var c struct {
			Object  string `json:"object"`
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
			Usage *struct {
				Prompt     int64 `json:"prompt_tokens"`
				Completion int64 `json:"completion_tokens"`
			} `json:"usage"`
			Error *struct{ Message string } `json:"error"`
		}
		if json.Unmarshal(data, &c) != nil {
			unfit = fmt.Sprintf("event is not JSON: %q", data)
			return
		}
		if c.Error != nil {
			failed = c.Error.Message
			return
		}
		if c.Object != "chat.completion.chunk" {
			unfit = fmt.Sprintf("not a chunk: %q", data)
		}
		for _, ch := range c.Choices {
			content += len(ch.Delta.Content)
		}
		if c.Usage != nil {
			t = tokens{In: c.Usage.Prompt, Out: c.Usage.Completion}
		}
	})
	switch {
	case unfit != "":
		return outUnfit, unfit, t
	case failed != "":
		return outError, "error event: " + failed, t
	case err != io.EOF:
		return outCut, err.Error(), t
	case !done:
		return outCut, "stream ended without [DONE]", t
	case t.total() == 0 || content == 0:
		return outUnfit, "complete stream without content or usage", t
	}
	return outOK, "", t
}

func readClaudeStream(body io.Reader) (outcome, string, tokens) {
	var u wireUsage
	stopped, failed, unfit := false, "", ""
	err := sseData(body, func(event string, data []byte) {
		var m struct {
			Type    string `json:"type"`
			Message struct {
				Usage *wireUsage `json:"usage"`
			} `json:"message"`
			Usage *wireUsage                      `json:"usage"`
			Error *struct{ Type, Message string } `json:"error"`
		}
		if json.Unmarshal(data, &m) != nil || m.Type != event {
			unfit = fmt.Sprintf("event %q with data %q", event, data)
			return
		}
		switch m.Type {
		case "message_start":
			if m.Message.Usage != nil {
				u = *m.Message.Usage
			}
		case "message_delta":
			if m.Usage != nil {
				u.Output = m.Usage.Output
			}
		case "message_stop":
			stopped = true
		case "error":
			if m.Error != nil {
				failed = m.Error.Type + ": " + m.Error.Message
			}
		}
	})
	switch {
	case unfit != "":
		return outUnfit, unfit, u.tokens()
	case failed != "":
		return outError, "error event: " + failed, u.tokens()
	case err != io.EOF:
		return outCut, err.Error(), u.tokens()
	case !stopped:
		return outCut, "stream ended without message_stop", u.tokens()
	}
	return outOK, "", u.tokens()
}

// imagePrompt is the prompt of an image request: unique, naming its phase.
func imagePrompt(id, phase string) string { return "a lighthouse for " + id + " in phase " + phase }

func readImages(body io.Reader) (outcome, string) {
	b, err := io.ReadAll(body)
	if err != nil {
		return outCut, err.Error()
	}
	var m struct {
		Created int64 `json:"created"`
		Data    []struct {
			URL string `json:"url"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Created == 0 || len(m.Data) != 1 || m.Data[0].URL == "" {
		return outUnfit, fmt.Sprintf("not one image URL: %q", b)
	}
	return outOK, ""
}
