package ingress

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/relaydev/relay/internal/vs"
)

// FuzzParseChatRequest: any body is either a chat request with a model and
// messages that flatten into a prompt, or a 400 that says what is wrong in
// valid UTF-8 and names a param that exists in OpenAI's vocabulary.
func FuzzParseChatRequest(f *testing.F) {
	for _, s := range []string{
		`{"model":"gpt-4o","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}`,
		`{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]}]}`,
		`{"model":"m","messages":[{"role":"tool","content":null}]}`,
		`{"model":"","messages":[]}`, `{"model":1,"messages":"x"}`, `{"model":"m","messages":[{"role":"wizard"}]}`,
		`{"model":"m","messages":[{"role":"user","content":1}],"stream":"yes"}`, `{"model":"m","messages":[{}],"stream_options":[]}`,
		`[]`, `null`, `"x"`, `{`, ``, "{\"model\":\"\xff\",\"messages\":[{\"role\":\"user\",\"content\":\"\xfe\"}]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, e := parseChatRequest(body)
		if e != nil {
			if e.Status != http.StatusBadRequest || e.Message == "" || !utf8.ValidString(e.Message) && utf8.Valid(body) {
				t.Fatalf("bad error for %q: %+v", body, e)
			}
			if e.Param != "" && e.Param != "model" && e.Param != "stream" && e.Param != "stream_options" &&
				!strings.HasPrefix(e.Param, "messages") {
				t.Fatalf("param %q", e.Param)
			}
			return
		}
		if r.Model == "" || len(r.Messages) == 0 {
			t.Fatalf("accepted %q without model or messages", body)
		}
		_, prompt := vs.BuildPrompt(r.Messages, 1000)
		if !strings.HasSuffix(prompt, "Assistant:") {
			t.Fatalf("prompt %q", prompt)
		}
	})
}

// FuzzClientKey: whatever the headers and query hold, the key found is one
// of the values sent (trimmed), and a value with the relay's prefix in
// Authorization wins.
func FuzzClientKey(f *testing.F) {
	f.Add("Bearer cr_abc", "", "", "", "")
	f.Add("Basic xyz", "cr_def", "", "", "")
	f.Add("", "", "AIza", "", "cr_q")
	f.Add("bearer  ", " \t", "", "cr_\r\n", "%00")
	app := fiber.New()
	f.Fuzz(func(t *testing.T, auth, xAPIKey, goog, apiKey, query string) {
		rc := &fasthttp.RequestCtx{}
		rc.Request.SetRequestURI("/v1/chat/completions")
		rc.Request.URI().QueryArgs().Set("key", query)
		for name, v := range map[string]string{"Authorization": auth, "x-api-key": xAPIKey, "x-goog-api-key": goog, "api-key": apiKey} {
			if v != "" {
				rc.Request.Header.Set(name, v)
			}
		}
		c := app.AcquireCtx(rc)
		defer app.ReleaseCtx(c)
		got := clientKey(c, "cr_")
		if got != strings.TrimSpace(got) {
			t.Fatalf("key %q is not trimmed", got)
		}
		if got == "" {
			return
		}
		sent := []string{string(rc.Request.Header.Peek("Authorization")), string(rc.Request.Header.Peek("x-api-key")),
			string(rc.Request.Header.Peek("x-goog-api-key")), string(rc.Request.Header.Peek("api-key")), c.Query("key")}
		found := false
		for _, v := range sent {
			if strings.Contains(v, got) {
				found = true
			}
		}
		if !found {
			t.Fatalf("key %q was not sent (%q)", got, sent)
		}
	})
}
