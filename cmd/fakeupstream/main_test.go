package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/relaydev/relay/internal/vs"
)

func TestVSFakeUnderPrefix(t *testing.T) {
	o, err := parse([]string{"-vs-form", "location", "-vs-encoding", "br", "-vs-password", "pw"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(router(mounts(o)))
	defer srv.Close()
	c := vs.New(vs.Options{BaseURL: srv.URL + "/vs"})
	ck, err := c.Login(context.Background(), "user@example.com", "pw")
	if err != nil {
		t.Fatal(err)
	}
	id, err := c.NewChat(context.Background(), ck, vs.CornerText)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Chat(context.Background(), ck, vs.ChatRequest{ChatID: id, Corner: vs.CornerText, Content: "hi",
		Settings: vs.TextSettings{ModelID: "m"}})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var text strings.Builder
	for {
		p, err := st.Next()
		if err != nil {
			break
		}
		text.WriteString(p.Text)
	}
	if text.String() != "Hello, world!" {
		t.Fatalf("text %q", text.String())
	}
}

func TestBadFlags(t *testing.T) {
	env := func(string) string { return "" }
	for _, args := range [][]string{{"-vs-form", "carrier-pigeon"}, {"-vs-encoding", "zstd"}} {
		var errOut bytes.Buffer
		if code := run(args, env, &errOut); code != 2 || errOut.Len() == 0 {
			t.Errorf("%v: exit %d, %q", args, code, errOut.String())
		}
	}
	o, err := parse(nil, func(k string) string {
		return map[string]string{"FAKE_VS_FORM": "body", "FAKE_VS_DELAY": "5ms"}[k]
	}, io.Discard)
	if err != nil || o.vs.form != "body" || o.vs.delay.Milliseconds() != 5 {
		t.Fatalf("env defaults: %+v %v", o, err)
	}
}

func TestAnthropicAndGeminiFakesUnderPrefixes(t *testing.T) {
	o, err := parse([]string{"-api-key", "k-123"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(router(mounts(o)))
	defer srv.Close()

	post := func(key string) int {
		req, _ := http.NewRequest("POST", srv.URL+"/anthropic/v1/messages",
			strings.NewReader(`{"model":"claude-sonnet-4","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}`))
		req.Header.Set("x-api-key", key)
		req.Header.Set("anthropic-version", "2023-06-01")
		req.Header.Set("content-type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("k-123"); code != 200 {
		t.Errorf("anthropic fake with the configured key: %d", code)
	}
	if code := post("wrong"); code != 401 {
		t.Errorf("anthropic fake with a wrong key: %d", code)
	}
	resp, err := http.Get(srv.URL + "/gemini/v1beta/models?key=k-123")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("gemini fake models with the configured key: %d", resp.StatusCode)
	}
}
