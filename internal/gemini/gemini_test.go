package gemini

import (
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParseNativeAndConvertToCodeAssist(t *testing.T) {
	body := []byte(`{"contents":[{"role":"user","parts":[{"text":"hi"}]}],"generationConfig":{"temperature":0.2}}`)
	c, err := ParseNative("gemini-2.5-flash", MethodGenerate, body)
	if err != nil {
		t.Fatal(err)
	}
	if nb, _ := c.NativeBody(); string(nb) != string(body) {
		t.Fatalf("native body changed: %s", nb)
	}
	ca, err := c.CodeAssistBody("proj-1")
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Model, Project string
		UserPromptID   string          `json:"user_prompt_id"`
		Request        json.RawMessage `json:"request"`
	}
	if err := json.Unmarshal(ca, &env); err != nil || env.Model != "gemini-2.5-flash" || env.Project != "proj-1" ||
		env.UserPromptID == "" || string(env.Request) != string(body) {
		t.Fatalf("envelope = %s", ca)
	}
}

func TestParseCodeAssistAndConvertToNative(t *testing.T) {
	body := []byte(`{"model":"gemini-2.5-pro","project":"p","user_prompt_id":"u1","request":{"contents":[{"role":"user","parts":[{"text":"a"}]}],"session_id":"s1","labels":{"a":"b"}}}`)
	c, err := ParseCodeAssist(MethodStream, body)
	if err != nil {
		t.Fatal(err)
	}
	if c.Model != "gemini-2.5-pro" || c.Session != "s1" || c.PromptID != "u1" || !c.CodeAssist {
		t.Fatalf("call = %+v", c)
	}
	nb, err := c.NativeBody()
	if err != nil || strings.Contains(string(nb), "session_id") || strings.Contains(string(nb), "labels") || !strings.Contains(string(nb), `"contents"`) {
		t.Fatalf("native body = %s, %v", nb, err)
	}
	// The project is the serving account's, not the client's.
	ca, _ := c.CodeAssistBody("acct-project")
	if !strings.Contains(string(ca), `"project":"acct-project"`) || !strings.Contains(string(ca), `"user_prompt_id":"u1"`) {
		t.Fatalf("code assist body = %s", ca)
	}
}

func TestCountTokensConversions(t *testing.T) {
	c, err := ParseCodeAssist(MethodCount, []byte(`{"request":{"model":"models/gemini-2.5-flash","contents":[{"parts":[{"text":"x"}]}]}}`))
	if err != nil || c.Model != "gemini-2.5-flash" {
		t.Fatalf("%+v %v", c, err)
	}
	nb, _ := c.NativeBody()
	if string(nb) != `{"contents":[{"parts":[{"text":"x"}]}]}` {
		t.Fatalf("native count body = %s", nb)
	}
	n, err := ParseNative("gemini-2.5-flash", MethodCount, []byte(`{"generateContentRequest":{"contents":[{"parts":[{"text":"y"}]}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := n.CodeAssistBody("")
	if string(ca) != `{"request":{"contents":[{"parts":[{"text":"y"}]}],"model":"models/gemini-2.5-flash"}}` {
		t.Fatalf("code assist count body = %s", ca)
	}
}

func TestParseRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name   string
		native bool
		method string
		body   string
	}{
		{"empty", true, MethodGenerate, ``},
		{"not json", true, MethodGenerate, `{"contents":`},
		{"array", true, MethodGenerate, `[]`},
		{"no contents", true, MethodGenerate, `{"generationConfig":{}}`},
		{"contents not a list", true, MethodStream, `{"contents":{"parts":[]}}`},
		{"count without contents", true, MethodCount, `{}`},
		{"envelope without request", false, MethodGenerate, `{"model":"m"}`},
		{"envelope without model", false, MethodGenerate, `{"request":{"contents":[{}]}}`},
		{"count without model", false, MethodCount, `{"request":{"contents":[{}]}}`},
	} {
		var err error
		if tc.native {
			_, err = ParseNative("gemini-2.5-flash", tc.method, []byte(tc.body))
		} else {
			_, err = ParseCodeAssist(tc.method, []byte(tc.body))
		}
		var br *BadRequest
		if !errors.As(err, &br) || br.Msg == "" {
			t.Errorf("%s: err = %v", tc.name, err)
		}
	}
}

func TestSplitModelMethod(t *testing.T) {
	m, meth := SplitModelMethod("models/gemini-2.5-flash:streamGenerateContent")
	if m != "gemini-2.5-flash" || meth != MethodStream {
		t.Fatalf("%q %q", m, meth)
	}
	if m, meth = SplitModelMethod("gemini-2.5-pro"); m != "gemini-2.5-pro" || meth != "" {
		t.Fatalf("%q %q", m, meth)
	}
}

func TestWrapUnwrap(t *testing.T) {
	native := `{"candidates":[],"usageMetadata":{"promptTokenCount":3}}`
	w := WrapResponse([]byte(native))
	if string(UnwrapResponse(w)) != native {
		t.Fatalf("round trip = %s", UnwrapResponse(w))
	}
	u, ok := UsageFromJSON(w)
	if !ok || u.Prompt != 3 {
		t.Fatalf("usage = %+v", u)
	}
}

func TestEventReaderKeepsBytesAndReadsUsage(t *testing.T) {
	chunks := []string{
		"data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hel\"}]}}],\"usageMetadata\":{\"promptTokenCount\":20,\"totalTokenCount\":20}}\r\n\r\n",
		"data: {\"response\":{\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"lo\"}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":20,\"candidatesTokenCount\":2,\"cachedContentTokenCount\":5,\"thoughtsTokenCount\":4,\"totalTokenCount\":26}}}\n\n",
	}
	er := NewEventReader(strings.NewReader(chunks[0] + "\r\n" + chunks[1]))
	for i, want := range chunks {
		ev, err := er.Next()
		if err != nil {
			t.Fatal(err)
		}
		got := string(ev.Frame)
		if i == 1 {
			want = chunks[1]
		}
		if got != want {
			t.Fatalf("frame %d = %q, want %q", i, got, want)
		}
	}
	if _, err := er.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("end = %v", err)
	}
	u := er.Usage()
	if !er.Finished() || u.Input() != 15 || u.Output() != 6 || u.Cached != 5 || er.GeneratedBytes() != 5 {
		t.Fatalf("usage = %+v finished=%v bytes=%d", u, er.Finished(), er.GeneratedBytes())
	}
}

func TestErrorFromJSONReadsRetryDelay(t *testing.T) {
	raw := `{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED","details":[` +
		`{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","metadata":{"quotaResetDelay":"1.5s"}},` +
		`{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"37s"}]}}`
	e := ErrorFromJSON([]byte(raw))
	if e.Status != "RESOURCE_EXHAUSTED" || e.Message != "quota" || e.RetryDelay != 37*time.Second {
		t.Fatalf("%+v", e)
	}
	list := ErrorFromJSON([]byte(`[{"error":{"code":500,"message":"boom","status":"INTERNAL"}}]`))
	if list.Message != "boom" || list.RetryDelay != 0 {
		t.Fatalf("%+v", list)
	}
	if RetryAfter(1500*time.Millisecond) != "2" || RetryAfter(0) != "" {
		t.Fatal("RetryAfter rounds up to whole seconds")
	}
}

func TestIDTokenEmail(t *testing.T) {
	// header.payload.signature with payload {"email":"a@b.c"}
	if got := idTokenEmail("eyJhbGciOiJub25lIn0.eyJlbWFpbCI6ImFAYi5jIn0.sig"); got != "a@b.c" {
		t.Fatalf("email = %q", got)
	}
	if idTokenEmail("garbage") != "" {
		t.Fatal("garbage gave an email")
	}
}
