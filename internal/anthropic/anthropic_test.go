package anthropic

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

const stream = "event: message_start\n" +
	`data: {"type":"message_start","message":{"id":"msg_1","model":"claude-sonnet-4-5","usage":{"input_tokens":25,"cache_creation_input_tokens":12,"cache_read_input_tokens":340,"cache_creation":{"ephemeral_5m_input_tokens":12,"ephemeral_1h_input_tokens":0},"output_tokens":1}}}` + "\n\n" +
	"event: content_block_start\r\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\r\n\r\n" +
	"event: ping\ndata: {\"type\": \"ping\"}\n\n" +
	": a comment line\n" +
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello, wörld\"}}\n\n" +
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n" +
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":7}}\n\n" +
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"

func readAll(t *testing.T, r io.Reader) ([]Event, *EventReader) {
	t.Helper()
	er := NewEventReader(r)
	var out []Event
	for {
		e, err := er.Next()
		if errors.Is(err, io.EOF) {
			return out, er
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
}

func TestEventReaderKeepsBytesAndReadsUsage(t *testing.T) {
	for name, r := range map[string]io.Reader{
		"whole":    strings.NewReader(stream),
		"one byte": iotest.OneByteReader(strings.NewReader(stream)),
		"halves":   iotest.HalfReader(strings.NewReader(stream)),
	} {
		t.Run(name, func(t *testing.T) {
			evs, er := readAll(t, r)
			var joined bytes.Buffer
			var types []string
			for _, e := range evs {
				joined.Write(e.Frame)
				types = append(types, e.Type)
			}
			if joined.String() != stream {
				t.Fatalf("frames joined differ from the stream:\n%q\n%q", joined.String(), stream)
			}
			want := "message_start content_block_start ping content_block_delta content_block_stop message_delta message_stop"
			if got := strings.Join(types, " "); got != want {
				t.Fatalf("types %q, want %q", got, want)
			}
			u := er.Usage()
			if u.InputTokens != 25 || u.OutputTokens != 7 || u.CacheCreateTokens != 12 || u.CacheReadTokens != 340 ||
				u.Cache5mTokens != 12 || u.Model != "claude-sonnet-4-5" || !u.SeenStart || !u.SeenEnd {
				t.Fatalf("usage %+v", u)
			}
			if !er.Stopped() || er.GeneratedBytes() != int64(len("Hello, wörld")) {
				t.Fatalf("stopped %v generated %d", er.Stopped(), er.GeneratedBytes())
			}
		})
	}
}

func TestEventReaderErrorEventAndTruncation(t *testing.T) {
	body := "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3}}}\n\n" +
		"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n" +
		"event: content_block_delta\ndata: {\"partial"
	evs, er := readAll(t, strings.NewReader(body))
	if len(evs) != 3 || evs[1].Type != "error" || string(evs[2].Frame) != "event: content_block_delta\ndata: {\"partial" {
		t.Fatalf("events %+v", evs)
	}
	typ, msg := er.StreamError()
	if typ != "overloaded_error" || msg != "Overloaded" || er.Stopped() || er.Usage().SeenEnd {
		t.Fatalf("error %q %q stopped %v", typ, msg, er.Stopped())
	}
}

func TestErrorEventIsAnthropicShape(t *testing.T) {
	got := string(ErrorEvent("api_error", "broke"))
	want := "event: error\ndata: {\"error\":{\"message\":\"broke\",\"type\":\"api_error\"},\"type\":\"error\"}\n\n"
	if got != want {
		t.Fatalf("%q", got)
	}
}

func TestParseMessagesValidatesOnlyWhatTheRelayNeeds(t *testing.T) {
	bad := map[string]string{
		"not json":       `{"model":`,
		"array":          `[1,2]`,
		"empty":          ``,
		"no model":       `{"max_tokens":5,"messages":[]}`,
		"empty model":    `{"model":" ","max_tokens":5,"messages":[]}`,
		"no messages":    `{"model":"m","max_tokens":5}`,
		"messages obj":   `{"model":"m","max_tokens":5,"messages":{}}`,
		"no max_tokens":  `{"model":"m","messages":[]}`,
		"max_tokens str": `{"model":"m","max_tokens":"5","messages":[]}`,
		"stream string":  `{"model":"m","max_tokens":5,"messages":[],"stream":"yes"}`,
	}
	for name, body := range bad {
		if _, err := ParseMessages([]byte(body)); err == nil {
			t.Errorf("%s: accepted %s", name, body)
		} else if _, ok := err.(*BadRequest); !ok {
			t.Errorf("%s: error %T", name, err)
		}
	}
	// Claude Code: a system message mid-conversation, unknown fields, a
	// metadata.user_id JSON string.
	ok := `{"model":"claude-sonnet-4-5","max_tokens":128000,"stream":true,
	  "messages":[{"role":"user","content":"hi"},{"role":"system","content":"per-turn"},{"role":"user","content":"go"}],
	  "thinking":{"type":"adaptive","display":"omitted"},"context_management":{"edits":[]},"output_config":{"effort":"medium"},
	  "metadata":{"user_id":"{\"device_id\":\"ab\",\"account_uuid\":\"\",\"session_id\":\"5f0c-uuid\"}"}}`
	r, err := ParseMessages([]byte(ok))
	if err != nil {
		t.Fatal(err)
	}
	if r.Model != "claude-sonnet-4-5" || !r.Stream || r.SessionID("") != "s_5f0c-uuid" {
		t.Fatalf("%+v session %q", r, r.SessionID(""))
	}
	if _, err := ParseCountTokens([]byte(`{"model":"m","messages":[{"role":"user","content":"x"}]}`)); err != nil {
		t.Fatal(err)
	}
}

func TestSessionIDForms(t *testing.T) {
	parse := func(body string) Request {
		r, err := ParseMessages([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	old := parse(`{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"a"}],
	  "metadata":{"user_id":"user_0123abcd_account_1111-2222_session_aaaa-bbbb"}}`)
	if got := old.SessionID("header-id"); got != "s_aaaa-bbbb" {
		t.Fatalf("old form: %q", got)
	}
	plain := parse(`{"model":"m","max_tokens":1,"system":"be brief","messages":[{"role":"user","content":"a"}]}`)
	if got := plain.SessionID("hdr-1"); got != "s_hdr-1" {
		t.Fatalf("header: %q", got)
	}
	h1 := plain.SessionID("")
	again := parse(`{"model":"m","max_tokens":1,"system":"be brief","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}`)
	other := parse(`{"model":"m","max_tokens":1,"system":"be long","messages":[{"role":"user","content":"a"}]}`)
	if !strings.HasPrefix(h1, "h_") || again.SessionID("") != h1 || other.SessionID("") == h1 {
		t.Fatalf("conversation hash: %q %q %q", h1, again.SessionID(""), other.SessionID(""))
	}
}

func TestChallengeIsS256(t *testing.T) {
	// RFC 7636, appendix B.
	if got := Challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"); got != "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM" {
		t.Fatalf("challenge %q", got)
	}
	p := NewPKCE()
	if len(p.Verifier) < 43 || p.Challenge != Challenge(p.Verifier) || p.State == "" {
		t.Fatalf("%+v", p)
	}
}

func TestCleanCode(t *testing.T) {
	for in, want := range map[string][2]string{
		"abc#st":  {"abc", "st"},
		" abc \n": {"abc", ""},
		"https://platform.claude.com/oauth/code/callback?code=xyz&state=s1": {"xyz", "s1"},
	} {
		c, s := CleanCode(in)
		if c != want[0] || s != want[1] {
			t.Errorf("%q -> %q %q", in, c, s)
		}
	}
}

func TestWithBeta(t *testing.T) {
	if got := withBeta([]string{"claude-code-20250219,interleaved-thinking-2025-05-14"}, OAuthBeta); got != "claude-code-20250219,interleaved-thinking-2025-05-14,"+OAuthBeta {
		t.Fatal(got)
	}
	if got := withBeta([]string{"a, " + OAuthBeta}, OAuthBeta); got != "a, "+OAuthBeta {
		t.Fatal(got)
	}
	if got := withBeta(nil, OAuthBeta); got != OAuthBeta {
		t.Fatal(got)
	}
}
