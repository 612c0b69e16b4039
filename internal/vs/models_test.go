package vs_test

import (
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/vs"
)

func TestDefaultModels(t *testing.T) {
	m, err := vs.LoadModels("", vs.DefaultTextModels)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.List()) != 13 || m.List()[0].Name != "claude-3-7-sonnet-thinking" {
		t.Fatalf("list %+v", m.List())
	}
	c, ok := m.Lookup("claude-4-opus-thinking")
	if !ok || c.Upstream != "claude-4-opus-20250514" || !c.Reasoning {
		t.Fatalf("claude-4-opus-thinking: %+v", c)
	}
	g, ok := m.Lookup("gpt-4o")
	if !ok || g.Reasoning {
		t.Fatalf("gpt-4o: %+v", g)
	}
	if _, ok := m.Lookup("gpt-4o-mini"); ok {
		t.Fatal("unknown model found")
	}
}

func TestModelMappingOverride(t *testing.T) {
	spec := `{"zeta":"z-1","alpha-thinking":"a-1","beta":{"modelId":"b-1","reasoning":true}}`
	m, err := vs.LoadModels(spec, vs.DefaultTextModels)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range m.List() {
		names = append(names, e.Name)
	}
	if strings.Join(names, ",") != "zeta,alpha-thinking,beta" {
		t.Fatalf("order %v", names)
	}
	if a, _ := m.Lookup("alpha-thinking"); !a.Reasoning || a.Upstream != "a-1" {
		t.Fatalf("alpha %+v", a)
	}
	if b, _ := m.Lookup("beta"); !b.Reasoning {
		t.Fatalf("beta %+v", b)
	}
	file := filepath.Join(t.TempDir(), "models.json")
	if err := os.WriteFile(file, []byte(spec), 0o600); err != nil {
		t.Fatal(err)
	}
	if m2, err := vs.LoadModels(file, nil); err != nil || len(m2.List()) != 3 {
		t.Fatalf("from file: %v", err)
	}
	for _, bad := range []string{`{"a":1}`, `{"a":""}`, `{`, `{}`, `{"a":"x","a":"y"}`, "/no/such/file.json"} {
		if _, err := vs.LoadModels(bad, nil); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
}

func TestBuildPrompt(t *testing.T) {
	msgs := []vs.Message{
		{Role: "system", Content: "Be brief."},
		{Role: "user", Content: " hi "},
		{Role: "assistant", Content: "hello"},
		{Role: "tool", Content: "dropped"},
		{Role: "developer", Content: "Use English."},
		{Role: "user", Content: ""},
		{Role: "user", Content: "bye"},
	}
	sys, prompt := vs.BuildPrompt(msgs, 0)
	if sys != "Be brief.\n\nUse English." {
		t.Fatalf("system %q", sys)
	}
	if prompt != "Human: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:" {
		t.Fatalf("prompt %q", prompt)
	}
	// The cap keeps the newest turns.
	_, capped := vs.BuildPrompt(msgs, len("hello")+len("bye"))
	if capped != "Assistant: hello\n\nHuman: bye\n\nAssistant:" {
		t.Fatalf("capped %q", capped)
	}
	// The newest turn is kept even when it alone is over the cap.
	_, one := vs.BuildPrompt([]vs.Message{{Role: "user", Content: "old"}, {Role: "user", Content: strings.Repeat("x", 50)}}, 10)
	if one != "Human: "+strings.Repeat("x", 50)+"\n\nAssistant:" {
		t.Fatalf("one %q", one)
	}
}

// fixedCreds hands out a cookie from one login and renews by logging in.
type fixedCreds struct {
	c      *vs.Client
	ck     vs.Cookie
	renews int
}

func (f *fixedCreds) Cookie(context.Context) (vs.Cookie, error) { return f.ck, nil }
func (f *fixedCreds) Renew(ctx context.Context, stale vs.Cookie) (vs.Cookie, error) {
	f.renews++
	v, err := f.c.Login(ctx, "user@example.com", "secret")
	f.ck = vs.Cookie{Value: v, Gen: stale.Gen + 1}
	return f.ck, err
}

func TestCallerRetries(t *testing.T) {
	f, c := newFake(t, fakevs.Options{})
	creds := &fixedCreds{c: c, ck: vs.Cookie{Value: login(t, c), Gen: 1}}
	caller := &vs.Caller{Client: c, Creds: creds, Backoff: time.Millisecond}
	req := vs.ChatRequest{Corner: vs.CornerText, Content: "Human: hi\n\nAssistant:", Settings: vs.TextSettings{ModelID: "m"}}
	var created []string
	open := func() error {
		st, err := caller.Open(context.Background(), req, func(id string) { created = append(created, id) })
		if err == nil {
			st.Close()
		}
		return err
	}

	f.FailChat(http.StatusServiceUnavailable, http.StatusBadGateway)
	if err := open(); err != nil {
		t.Fatalf("two 5xx then success: %v", err)
	}
	if len(created) != 3 {
		t.Fatalf("created %d chats, want 3", len(created))
	}

	f.ExpireSessions()
	if err := open(); err != nil || creds.renews != 1 {
		t.Fatalf("expired cookie: %v (renews %d)", err, creds.renews)
	}

	f.FailChat(503, 503, 503)
	if err := open(); vs.KindOf(err) != vs.KindServer {
		t.Fatalf("persistent 5xx: %v", err)
	}

	f.FailNewChat(http.StatusBadRequest)
	before := len(created)
	if err := open(); vs.KindOf(err) != vs.KindClient || len(created) != before {
		t.Fatalf("4xx on creation: %v", err)
	}
}
