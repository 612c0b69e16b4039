package ingress_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/ingress"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/usage"
	"github.com/relaydev/relay/workers"
)

// captureRecorder is a UsageRecorder that keeps the events it is given.
type captureRecorder struct {
	mu     sync.Mutex
	events []usage.Event
}

func (r *captureRecorder) Record(_ context.Context, ev usage.Event) error {
	r.mu.Lock()
	r.events = append(r.events, ev)
	r.mu.Unlock()
	return nil
}

func (r *captureRecorder) all() []usage.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// vsRig is the fake upstream, a Redis, and relay instances in front of them.
type vsRig struct {
	t     testing.TB
	env   *testredis.Env
	fake  *fakevs.Fake
	fakeU string
	keys  keyspace.Keyspace
	box   *secretbox.Box
	key   string
	rec   *captureRecorder
}

type relayInstance struct {
	url     string
	srv     *ingress.Server
	session *session.VS
	client  openai.Client
}

func newVSRig(t *testing.T, o fakevs.Options) *vsRig { return newVSRigB(t, o) }

func newVSRigB(t testing.TB, o fakevs.Options) *vsRig {
	t.Helper()
	env := testredis.New(t)
	f := fakevs.New(o)
	up := httptest.NewServer(f)
	t.Cleanup(up.Close)
	box, err := secretbox.New(strings.Repeat("e", 32))
	if err != nil {
		t.Fatal(err)
	}
	r := &vsRig{t: t, env: env, fake: f, fakeU: up.URL, keys: keyspace.New(env.Prefix), box: box, rec: &captureRecorder{}}
	store := apikeys.NewStore(env.Client, r.keys, apikeys.Options{})
	raw, _, err := store.Create(context.Background(), apikeys.Key{Name: "e2e", Enabled: true, Expiry: apikeys.Expiry{Mode: apikeys.ExpiryNever}})
	if err != nil {
		t.Fatal(err)
	}
	r.key = raw
	return r
}

// relay starts one relay instance (its own session, archive pool and HTTP
// server) on the rig's Redis; several share one login and one queue.
func (r *vsRig) relay() *relayInstance {
	t := r.t
	t.Helper()
	log := zerolog.Nop()
	client := vs.New(vs.Options{BaseURL: r.fakeU})
	sess := session.NewVS(session.VSOptions{
		Redis: r.env.Client, Keys: r.keys, Box: r.box, Client: client,
		Email: "user@example.com", Password: "secret", Log: log, Poll: 10 * time.Millisecond,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond,
	})
	if err := sess.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.Stop)
	m := metrics.New()
	pool, err := workers.New(r.env.Client, workers.ArchivePoolConfig(r.keys, fmt.Sprintf("c%p", sess),
		workers.ArchiveHandler(client, sess), 4, log, m))
	if err != nil {
		t.Fatal(err)
	}
	if err := pool.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Stop)
	models, err := vs.LoadModels("", vs.DefaultTextModels)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Config{
		Host: "127.0.0.1", ShutdownTimeout: 5 * time.Second, StreamHeartbeat: 40 * time.Millisecond,
		MaxBodyBytes: 32 << 20, KeyCacheTTL: 500 * time.Millisecond, APIKeyPrefix: apikeys.DefaultPrefix,
		Redis: config.Redis{KeyPrefix: r.env.Prefix}, JWTSecret: strings.Repeat("j", 32),
		EncryptionKey: strings.Repeat("e", 32),
	}
	srv := ingress.New(ingress.Deps{
		Config: cfg, Log: log, Redis: r.env.Client, Metrics: m, Usage: r.rec,
		Health: []ingress.HealthCheck{{Name: "vertical_studio", Check: sess.Health}},
		VS: &ingress.VerticalStudio{
			Caller: &vs.Caller{Client: client, Creds: sess, Backoff: 10 * time.Millisecond},
			Models: models, Archive: workers.NewArchiveQueue(r.env.Client, r.keys), HistoryChars: 100_000,
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	url := "http://" + ln.Addr().String()
	return &relayInstance{url: url, srv: srv, session: sess,
		client: openai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey(r.key), option.WithMaxRetries(0))}
}

func TestMain(m *testing.M) { testredis.Main(m) }

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// allArchived waits until the fake saw n chats and every one archived.
func (r *vsRig) allArchived(n int) {
	r.t.Helper()
	eventually(r.t, fmt.Sprintf("%d chats created and archived", n), func() bool {
		return len(r.fake.Chats()) == n && len(r.fake.Unarchived()) == 0
	})
	for _, c := range r.fake.Chats() {
		if c.Archived != 1 {
			r.t.Fatalf("chat %s archived %d times", c.ID, c.Archived)
		}
	}
}

// events waits for n usage events.
func (r *vsRig) events(n int) []usage.Event {
	r.t.Helper()
	eventually(r.t, fmt.Sprintf("%d usage events", n), func() bool { return len(r.rec.all()) >= n })
	evs := r.rec.all()
	if len(evs) != n {
		r.t.Fatalf("%d usage events, want %d", len(evs), n)
	}
	return evs
}

func userMessages(texts ...string) []openai.ChatCompletionMessageParamUnion {
	var out []openai.ChatCompletionMessageParamUnion
	for _, s := range texts {
		out = append(out, openai.UserMessage(s))
	}
	return out
}

func TestModelsList(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	page, err := in.client.Models.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
		if m.Object != "model" || m.OwnedBy != "vertical-studio" || m.Created == 0 {
			t.Fatalf("model entry %+v", m)
		}
	}
	var want []string
	for _, m := range vs.DefaultTextModels {
		want = append(want, m.Name)
	}
	if !slices.Equal(ids, want) {
		t.Fatalf("models %v, want %v", ids, want)
	}
	m, err := in.client.Models.Get(context.Background(), "claude-4-sonnet-thinking")
	if err != nil || m.ID != "claude-4-sonnet-thinking" {
		t.Fatalf("get model: %+v %v", m, err)
	}
	_, err = in.client.Models.Get(context.Background(), "gpt-4o-mini")
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Fatalf("unknown model: %v", err)
	}
}

func TestChatNonStreaming(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	resp, err := in.client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model: "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.SystemMessage("Be brief."),
			openai.UserMessage("hi"),
			openai.AssistantMessage("hello"),
			openai.UserMessage([]openai.ChatCompletionContentPartUnionParam{
				openai.TextContentPart("part one"), openai.TextContentPart("part two")}),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Object != "chat.completion" || !strings.HasPrefix(resp.ID, "chatcmpl-") || resp.Model != "gpt-4o" ||
		len(resp.Choices) != 1 || resp.Choices[0].Message.Content != "Hello, world!" || resp.Choices[0].FinishReason != "stop" {
		t.Fatalf("response %+v", resp)
	}
	if u := resp.Usage; u.PromptTokens != 11 || u.CompletionTokens != 7 || u.TotalTokens != 18 {
		t.Fatalf("usage %+v", u)
	}
	chats := r.fake.Chats()
	if len(chats) != 1 || len(chats[0].Requests) != 1 {
		t.Fatalf("fake chats %+v", chats)
	}
	sent := chats[0].Requests[0]
	if want := "Human: hi\n\nAssistant: hello\n\nHuman: part one\npart two\n\nAssistant:"; sent.Content != want {
		t.Fatalf("prompt %q, want %q", sent.Content, want)
	}
	if sent.Settings["modelId"] != "gpt-4o" || sent.Settings["customSystemPrompt"] != "Be brief." || sent.Settings["reasoning"] != nil {
		t.Fatalf("settings %v", sent.Settings)
	}
	r.allArchived(1)
	ev := r.events(1)[0]
	if ev.InputTokens != 11 || ev.OutputTokens != 7 || ev.Estimated || ev.Status != 200 || ev.Model != "gpt-4o" ||
		ev.UpstreamModel != "gpt-4o" || ev.Service != usage.ServiceOpenAI || ev.KeyID == "" || ev.ErrorClass != "" {
		t.Fatalf("usage event %+v", ev)
	}
}

// streamAll runs a streaming completion and returns the deltas in order, as
// "r:<reasoning>" and "c:<content>", and the last chunk's usage.
func streamAll(t *testing.T, c openai.Client, params openai.ChatCompletionNewParams) ([]string, []openai.ChatCompletionChunk, error) {
	t.Helper()
	st := c.Chat.Completions.NewStreaming(context.Background(), params)
	defer st.Close()
	var deltas []string
	var chunks []openai.ChatCompletionChunk
	for st.Next() {
		ch := st.Current()
		chunks = append(chunks, ch)
		if len(ch.Choices) == 0 {
			continue
		}
		d := ch.Choices[0].Delta
		if f, ok := d.JSON.ExtraFields["reasoning_content"]; ok {
			var s string
			_ = json.Unmarshal([]byte(f.Raw()), &s)
			deltas = append(deltas, "r:"+s)
		}
		if d.Content != "" {
			deltas = append(deltas, "c:"+d.Content)
		}
	}
	return deltas, chunks, st.Err()
}

func TestChatStreamingWithReasoning(t *testing.T) {
	for _, enc := range []string{"", "br", "gzip"} {
		t.Run("encoding="+enc, func(t *testing.T) {
			r := newVSRig(t, fakevs.Options{Encoding: enc})
			in := r.relay()
			deltas, chunks, err := streamAll(t, in.client, openai.ChatCompletionNewParams{
				Model: "claude-4-sonnet-thinking", Messages: userMessages("hi"),
				StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
			})
			if err != nil {
				t.Fatal(err)
			}
			want := []string{"r:Let me think", "r: about it.", "c:Hello", "c:, ", "c:world", "c:!"}
			if !slices.Equal(deltas, want) {
				t.Fatalf("deltas %q, want %q", deltas, want)
			}
			if chunks[0].Choices[0].Delta.Role != "assistant" {
				t.Fatalf("first delta has no role: %+v", chunks[0])
			}
			for _, ch := range chunks[1:] {
				if len(ch.Choices) > 0 && ch.Choices[0].Delta.Role != "" {
					t.Fatalf("role repeated in %+v", ch)
				}
			}
			n := len(chunks)
			if fin := chunks[n-2]; len(fin.Choices) != 1 || fin.Choices[0].FinishReason != "stop" {
				t.Fatalf("final chunk %+v", fin)
			}
			if last := chunks[n-1]; len(last.Choices) != 0 || last.Usage.PromptTokens != 11 ||
				last.Usage.CompletionTokens != 7 || last.Usage.TotalTokens != 18 {
				t.Fatalf("usage chunk %+v", last)
			}
			for _, ch := range chunks {
				if ch.Object != "chat.completion.chunk" || ch.ID != chunks[0].ID || ch.Model != "claude-4-sonnet-thinking" {
					t.Fatalf("chunk %+v", ch)
				}
			}
			if sent := r.fake.Chats()[0].Requests[0]; sent.Settings["reasoning"] != "on" ||
				sent.Settings["modelId"] != "claude-4-sonnet-20250514" || sent.Encoding != enc {
				t.Fatalf("fake saw %+v", sent)
			}
			r.allArchived(1)
			if ev := r.events(1)[0]; ev.InputTokens != 11 || ev.OutputTokens != 7 || ev.Estimated || ev.TTFBMs > ev.LatencyMs {
				t.Fatalf("usage event %+v", ev)
			}
		})
	}
}

// rawStream posts a streaming request and returns the SSE body's lines.
func rawPost(t *testing.T, in *relayInstance, key, body string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, in.url+"/v1/chat/completions", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestStreamFramesHeartbeatsAndDone(t *testing.T) {
	r := newVSRig(t, fakevs.Options{Delay: 120 * time.Millisecond}) // longer than the 40ms heartbeat
	in := r.relay()
	resp, body := rawPost(t, in, r.key, `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(body, ": keep-alive\n") {
		t.Fatalf("no heartbeat during upstream silence:\n%s", body)
	}
	if !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("stream does not end with [DONE]:\n%s", body)
	}
	var contents []string
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok || line == "[DONE]" {
			continue
		}
		var ch struct {
			Choices []struct {
				Delta struct{ Content *string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(line), &ch); err != nil {
			t.Fatalf("bad event %q: %v", line, err)
		}
		if len(ch.Choices) > 0 && ch.Choices[0].Delta.Content != nil {
			contents = append(contents, *ch.Choices[0].Delta.Content)
		}
	}
	if !slices.Equal(contents, []string{"Hello", ", ", "world", "!"}) {
		t.Fatalf("each upstream line should be its own event; got %q", contents)
	}
	if strings.Contains(body, `"usage"`) {
		t.Fatalf("usage chunk sent without stream_options.include_usage")
	}
	r.allArchived(1)
}

func TestChatIDFormsEndToEnd(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	for i, form := range []fakevs.ChatIDForm{fakevs.FormJSONArray, fakevs.FormLocation202, fakevs.FormRedirect, fakevs.FormBody200} {
		r.fake.SetForm(form)
		r.fake.SetEncoding([]string{"", "br", "gzip", "br"}[i])
		resp, err := in.client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
			Model: "o3", Messages: userMessages("hi")})
		if err != nil {
			t.Fatalf("form %d: %v", form, err)
		}
		if resp.Choices[0].Message.Content != "Hello, world!" {
			t.Fatalf("form %d: %q", form, resp.Choices[0].Message.Content)
		}
	}
	r.allArchived(4)
}

func TestCookieExpiresMidRun(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	params := openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")}
	if _, err := in.client.Chat.Completions.New(context.Background(), params); err != nil {
		t.Fatal(err)
	}
	r.fake.ExpireSessions()
	if _, err := in.client.Chat.Completions.New(context.Background(), params); err != nil {
		t.Fatalf("request after the cookie expired: %v", err)
	}
	if n := r.fake.Logins(); n != 2 {
		t.Fatalf("logins = %d, want the first and exactly one re-login", n)
	}
	r.fake.ExpireSessions()
	deltas, _, err := streamAll(t, in.client, openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")})
	if err != nil || len(deltas) != 4 {
		t.Fatalf("streaming after expiry: %q %v", deltas, err)
	}
	if n := r.fake.Logins(); n != 3 {
		t.Fatalf("logins = %d after the second expiry", n)
	}
	r.allArchived(3)
}

func TestTwoRelaysShareOneLogin(t *testing.T) {
	r := newVSRig(t, fakevs.Options{LoginDelay: 30 * time.Millisecond})
	a, b := r.relay(), r.relay()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := a.client
			if i%2 == 1 {
				c = b.client
			}
			_, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := r.fake.Logins(); n != 1 {
		t.Fatalf("two relays logged in %d times", n)
	}
	r.fake.ExpireSessions()
	wg = sync.WaitGroup{}
	errs = make(chan error, 10)
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := a.client
			if i%2 == 1 {
				c = b.client
			}
			_, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := r.fake.Logins(); n != 2 {
		t.Fatalf("after expiry the relays logged in %d times in all, want 2", n)
	}
	r.allArchived(len(r.fake.Chats()))
	for _, url := range []string{a.url, b.url} {
		resp, err := http.Get(url + "/health")
		if err != nil {
			t.Fatal(err)
		}
		var h struct{ Services map[string]string }
		_ = json.NewDecoder(resp.Body).Decode(&h)
		resp.Body.Close()
		if h.Services["vertical_studio"] != "ok" {
			t.Fatalf("health %+v", h)
		}
	}
}

func TestBadInputNeverReachesUpstream(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	if _, err := in.session.Cookie(context.Background()); err != nil { // let the login finish first
		t.Fatal(err)
	}
	before := r.fake.Requests()
	huge := `{"model":"gpt-4o","messages":[{"role":"user","content":"` + strings.Repeat("a", 10<<20) + `"}]}`
	cases := []struct {
		name, body string
		status     int
		param      string
	}{
		{"not json", `{"model": "gpt-4o", messages: [}`, 400, ""},
		{"empty body", ``, 400, ""},
		{"array body", `[1,2]`, 400, ""},
		{"missing messages", `{"model":"gpt-4o"}`, 400, "messages"},
		{"messages not an array", `{"model":"gpt-4o","messages":"hi"}`, 400, "messages"},
		{"empty messages", `{"model":"gpt-4o","messages":[]}`, 400, "messages"},
		{"model not a string", `{"model":4,"messages":[{"role":"user","content":"hi"}]}`, 400, "model"},
		{"missing model", `{"messages":[{"role":"user","content":"hi"}]}`, 400, "model"},
		{"content a number", `{"model":"gpt-4o","messages":[{"role":"user","content":5}]}`, 400, "messages[0].content"},
		{"unknown role", `{"model":"gpt-4o","messages":[{"role":"wizard","content":"hi"}]}`, 400, "messages[0].role"},
		{"message not an object", `{"model":"gpt-4o","messages":["hi"]}`, 400, "messages[0]"},
		{"stream not a bool", `{"model":"gpt-4o","stream":"yes","messages":[{"role":"user","content":"hi"}]}`, 400, "stream"},
		{"unknown model", `{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}`, 404, "model"},
		{"10 MB body", huge, 413, ""},
	}
	for _, c := range cases {
		resp, body := rawPost(t, in, r.key, c.body)
		if resp.StatusCode != c.status {
			t.Errorf("%s: status %d, want %d: %s", c.name, resp.StatusCode, c.status, body)
			continue
		}
		var e struct {
			Error *struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
				Code    *string `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(body), &e); err != nil || e.Error == nil || e.Error.Message == "" ||
			e.Error.Type != "invalid_request_error" || e.Error.Code == nil {
			t.Errorf("%s: not an OpenAI error body: %s", c.name, body)
			continue
		}
		if got := ""; e.Error.Param != nil {
			got = *e.Error.Param
			if got != c.param {
				t.Errorf("%s: param %q, want %q", c.name, got, c.param)
			}
		} else if c.param != "" {
			t.Errorf("%s: no param, want %q", c.name, c.param)
		}
	}
	if n := r.fake.Requests() - before; n != 0 {
		t.Fatalf("bad requests reached the upstream %d times", n)
	}
	// Also through the SDK: the unknown model is a typed 404.
	_, err := in.client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{Model: "nope", Messages: userMessages("hi")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 404 || apiErr.Code != "model_not_found" {
		t.Fatalf("unknown model via the SDK: %v", err)
	}
	// A missing key is refused before anything else.
	resp, _ := rawPost(t, in, "", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`)
	if resp.StatusCode != 401 {
		t.Fatalf("no key: status %d", resp.StatusCode)
	}
}

func TestUpstreamErrorsBeforeFirstByte(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	params := openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")}

	// One 5xx: retried with a new chat, and the client never sees it.
	r.fake.FailChat(http.StatusServiceUnavailable)
	deltas, _, err := streamAll(t, in.client, params)
	if err != nil || len(deltas) != 4 {
		t.Fatalf("after one 503: %q %v", deltas, err)
	}
	if n := len(r.fake.Chats()); n != 2 {
		t.Fatalf("%d chats, want the failed one and the retry", n)
	}

	// 5xx every time: a 502 in OpenAI's format.
	r.fake.FailChat(502, 502, 502)
	_, err = in.client.Chat.Completions.New(context.Background(), params)
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 502 || apiErr.Type != "api_error" {
		t.Fatalf("persistent 5xx: %v", err)
	}

	// A 3: line before any text: a 502 carrying the upstream's message.
	r.fake.SetReply(func(fakevs.ChatRequest) fakevs.Script {
		return fakevs.Script{Text: []string{"never"}, ErrorText: "Credit limit reached", ErrorAfter: 0}
	})
	for _, stream := range []bool{false, true} {
		if stream {
			_, _, err = streamAll(t, in.client, params)
		} else {
			_, err = in.client.Chat.Completions.New(context.Background(), params)
		}
		if !errors.As(err, &apiErr) || apiErr.StatusCode != 502 || !strings.Contains(apiErr.Message, "Credit limit reached") {
			t.Fatalf("stream=%v: 3: line: %v", stream, err)
		}
	}
	r.allArchived(len(r.fake.Chats()))
	if n := len(r.fake.Chats()); n != 2+3+2 {
		t.Fatalf("%d chats", n)
	}
	evs := r.events(4)
	classes := []string{evs[0].ErrorClass, evs[1].ErrorClass, evs[2].ErrorClass, evs[3].ErrorClass}
	if !slices.Equal(classes, []string{"", "upstream_5xx", "upstream_error", "upstream_error"}) ||
		evs[1].Status != 502 || evs[2].Status != 502 {
		t.Fatalf("usage events %+v", evs)
	}
}

func TestErrorLineMidStream(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	r.fake.SetReply(func(fakevs.ChatRequest) fakevs.Script {
		return fakevs.Script{Text: []string{"Hello", " there", " and"}, ErrorText: "Model overloaded", ErrorAfter: 2}
	})
	deltas, _, err := streamAll(t, in.client, openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")})
	if !slices.Equal(deltas, []string{"c:Hello", "c: there"}) {
		t.Fatalf("deltas before the error: %q", deltas)
	}
	if err == nil || !strings.Contains(err.Error(), "Model overloaded") {
		t.Fatalf("stream error: %v", err)
	}
	r.allArchived(1)
	ev := r.events(1)[0]
	if ev.ErrorClass != "upstream_error" || !ev.Estimated || ev.OutputTokens != int64((len("Hello there")+3)/4) {
		t.Fatalf("usage event %+v", ev)
	}
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.relay()
	r.fake.SetReply(func(fakevs.ChatRequest) fakevs.Script {
		return fakevs.Script{Text: []string{"partial", " answer"}, Hang: true}
	})
	ctx, cancel := context.WithCancel(context.Background())
	st := in.client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")})
	if !st.Next() {
		t.Fatalf("no first chunk: %v", st.Err())
	}
	if st.Current().Choices[0].Delta.Content != "partial" {
		t.Fatalf("first chunk %+v", st.Current())
	}
	cancel()
	st.Close()
	select {
	case id := <-r.fake.Disconnects():
		if id != r.fake.Chats()[0].ID {
			t.Fatalf("disconnect of %s", id)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the upstream request was never cancelled")
	}
	ev := r.events(1)[0]
	if ev.ErrorClass != "client_gone" || !ev.Estimated || ev.OutputTokens != int64((len("partial answer")+3)/4) || ev.InputTokens == 0 {
		t.Fatalf("usage event %+v", ev)
	}
	r.allArchived(1)
	if c := r.fake.Chats()[0]; !c.Gone || c.Finished {
		t.Fatalf("fake chat %+v", c)
	}
}

func TestSessionNotReady(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	r.fake.SetLoginDown(http.StatusInternalServerError)
	in := r.relay()
	eventually(t, "the failed login is reported", func() bool {
		resp, err := http.Get(in.url + "/health")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var h struct{ Services map[string]string }
		_ = json.NewDecoder(resp.Body).Decode(&h)
		return resp.StatusCode == 503 && strings.HasPrefix(h.Services["vertical_studio"], "failed: ")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := in.client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{Model: "gpt-4o", Messages: userMessages("hi")})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 503 {
		t.Fatalf("chat without a session: %v", err)
	}
	if n := r.fake.RequestsTo("/api/chat"); n != 0 {
		t.Fatalf("chat sent upstream without a session")
	}
}
