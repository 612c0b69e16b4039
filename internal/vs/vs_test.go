package vs_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/vs"
)

func newFake(t *testing.T, o fakevs.Options) (*fakevs.Fake, *vs.Client) {
	t.Helper()
	f := fakevs.New(o)
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, vs.New(vs.Options{BaseURL: srv.URL})
}

func login(t *testing.T, c *vs.Client) string {
	t.Helper()
	ck, err := c.Login(context.Background(), "user@example.com", "secret")
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	return ck
}

func TestLoginSetsSessionCookie(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		f, c := newFake(t, fakevs.Options{ChunkedCookie: chunked})
		ck := login(t, c)
		if !strings.Contains(ck, fakevs.CookieName) {
			t.Fatalf("cookie %q lacks the auth-token cookie", ck)
		}
		if f.Logins() != 1 {
			t.Fatalf("logins = %d", f.Logins())
		}
		// The cookie works for creating a chat.
		if _, err := c.NewChat(context.Background(), ck, vs.CornerText); err != nil {
			t.Fatalf("chunked=%v: new chat: %v", chunked, err)
		}
	}
}

func TestLoginWrongPassword(t *testing.T) {
	_, c := newFake(t, fakevs.Options{})
	_, err := c.Login(context.Background(), "user@example.com", "wrong-password")
	if err == nil {
		t.Fatal("login with a wrong password succeeded")
	}
	if strings.Contains(err.Error(), "wrong-password") {
		t.Fatalf("error leaks the password: %v", err)
	}
}

func TestChatIDForms(t *testing.T) {
	forms := map[string]fakevs.ChatIDForm{"json": fakevs.FormJSONArray, "location": fakevs.FormLocation202,
		"redirect": fakevs.FormRedirect, "body": fakevs.FormBody200}
	for name, form := range forms {
		for _, enc := range []string{"", "br", "gzip"} {
			t.Run(name+"/"+enc, func(t *testing.T) {
				f, c := newFake(t, fakevs.Options{Form: form, Encoding: enc})
				ck := login(t, c)
				id, err := c.NewChat(context.Background(), ck, vs.CornerText)
				if err != nil {
					t.Fatal(err)
				}
				chats := f.Chats()
				if len(chats) != 1 || chats[0].ID != id {
					t.Fatalf("got id %q, fake created %+v", id, chats)
				}
			})
		}
	}
}

func TestModelChat(t *testing.T) {
	f, c := newFake(t, fakevs.Options{})
	ck := login(t, c)
	id, err := c.NewModelChat(context.Background(), ck, "claude-4-sonnet")
	if err != nil {
		t.Fatal(err)
	}
	if ch := f.Chats(); len(ch) != 1 || ch[0].ID != id || ch[0].Corner != "models/claude-4-sonnet" {
		t.Fatalf("chats %+v, id %q", ch, id)
	}
}

func TestChatStreamAndArchive(t *testing.T) {
	for _, enc := range []string{"", "br", "gzip"} {
		t.Run("enc="+enc, func(t *testing.T) {
			f, c := newFake(t, fakevs.Options{Encoding: enc})
			f.SetReply(func(r fakevs.ChatRequest) fakevs.Script {
				s := fakevs.DefaultReply(r)
				s.Text = append(s.Text, "quote \" and\nnewline é")
				s.Extra = []string{`2:[{"type":"image","url":"https://x/y.png"}]`, `8:[{"a":1}]`, `k:{"mimeType":"image/png","data":"AAAA"}`}
				return s
			})
			ck := login(t, c)
			id, err := c.NewChat(context.Background(), ck, vs.CornerText)
			if err != nil {
				t.Fatal(err)
			}
			st, err := c.Chat(context.Background(), ck, vs.ChatRequest{ChatID: id, Corner: vs.CornerText, Content: "Human: hi\n\nAssistant:",
				Settings: vs.TextSettings{ModelID: "m", Reasoning: "on"}})
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			var got []string
			for {
				p, err := st.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				switch p.Type {
				case vs.PartFinish, vs.PartFinishStep:
					got = append(got, string(p.Type)+":"+p.Finish.FinishReason)
					if p.Finish.Usage == nil || p.Finish.Usage.PromptTokens != 11 || p.Finish.Usage.CompletionTokens != 7 {
						t.Fatalf("usage %+v", p.Finish.Usage)
					}
				case vs.PartData, vs.PartFile:
					got = append(got, string(p.Type)+":"+string(p.Raw))
				default:
					got = append(got, string(p.Type)+":"+p.Text)
				}
			}
			want := []string{"g:Let me think", "g: about it.", "0:Hello", "0:, ", "0:world", "0:!", "0:quote \" and\nnewline é",
				`2:[{"type":"image","url":"https://x/y.png"}]`, `k:{"mimeType":"image/png","data":"AAAA"}`, "e:stop", "d:stop"}
			if strings.Join(got, "|") != strings.Join(want, "|") {
				t.Fatalf("parts\n got %q\nwant %q", got, want)
			}
			req := f.Chats()[0].Requests[0]
			if req.Encoding != enc || req.Settings["modelId"] != "m" || req.Content != "Human: hi\n\nAssistant:" {
				t.Fatalf("fake saw %+v", req)
			}
			if err := c.Archive(context.Background(), ck, vs.CornerText, id); err != nil {
				t.Fatal(err)
			}
			if u := f.Unarchived(); len(u) != 0 {
				t.Fatalf("unarchived %v", u)
			}
		})
	}
}

func TestExpiredCookieIsAuthError(t *testing.T) {
	f, c := newFake(t, fakevs.Options{})
	ck := login(t, c)
	f.ExpireSessions()
	_, err := c.NewChat(context.Background(), ck, vs.CornerText)
	if vs.KindOf(err) != vs.KindAuth {
		t.Fatalf("err = %v, want an auth error", err)
	}
	var e *vs.Error
	if !errors.As(err, &e) || e.Status != http.StatusUnauthorized {
		t.Fatalf("err = %#v", err)
	}
}

func TestServerErrorKinds(t *testing.T) {
	f, c := newFake(t, fakevs.Options{})
	ck := login(t, c)
	id, err := c.NewChat(context.Background(), ck, vs.CornerText)
	if err != nil {
		t.Fatal(err)
	}
	f.FailChat(http.StatusBadGateway)
	_, err = c.Chat(context.Background(), ck, vs.ChatRequest{ChatID: id, Corner: vs.CornerText, Content: "x",
		Settings: vs.TextSettings{ModelID: "m"}})
	if vs.KindOf(err) != vs.KindServer {
		t.Fatalf("err = %v, want a server error", err)
	}
	_, err = c.Chat(context.Background(), ck, vs.ChatRequest{ChatID: "nope", Corner: vs.CornerText, Content: "x"})
	if vs.KindOf(err) != vs.KindClient {
		t.Fatalf("err = %v, want a client error", err)
	}
}

func TestParseLine(t *testing.T) {
	cases := []struct {
		line string
		ok   bool
		err  bool
		text string
	}{
		{`0:"hi"`, true, false, "hi"},
		{`0:"a\u00e9\n"`, true, false, "aé\n"},
		{`g:"think"`, true, false, "think"},
		{`3:"credit limit"`, true, false, "credit limit"},
		{`f:{"messageId":"x"}`, false, false, ""},
		{`8:[{}]`, false, false, ""},
		{``, false, false, ""},
		{`garbage`, false, false, ""},
		{`0:not json`, false, true, ""},
		{`0:"unterminated`, false, true, ""},
		{`e:{"finishReason":"stop"}`, true, false, ""},
	}
	for _, c := range cases {
		p, ok, err := vs.ParseLine([]byte(c.line))
		if ok != c.ok || (err != nil) != c.err || p.Text != c.text {
			t.Errorf("%q: got %+v ok=%v err=%v", c.line, p, ok, err)
		}
	}
}

func TestChatIDFrom(t *testing.T) {
	id := "cmabcdefghijklmnopqrstuvw"
	cases := map[string]struct {
		loc  string
		body string
	}{
		"location": {loc: "/stream/corners/text/" + id},
		"absolute": {loc: "https://app.verticalstudio.ai/stream/corners/text/" + id + "?x=1"},
		"array":    {body: `[["SingleFetchRedirect",1],{"_2":3},"redirect","/stream/corners/text/` + id + `"]`},
		"html":     {body: `<a href="/stream/corners/text/` + id + `">`},
		"models":   {body: `[1,2,3,"/stream/models/o3/` + id + `"]`},
		"bare":     {body: id + "\n"},
	}
	for name, c := range cases {
		if got := vs.ChatIDFrom(c.loc, []byte(c.body)); got != id {
			t.Errorf("%s: got %q", name, got)
		}
	}
	if got := vs.ChatIDFrom("", []byte("<html>nothing</html>")); got != "" {
		t.Errorf("found %q in a body without an id", got)
	}
}
