// Package fakevs is a fake Vertical Studio web app (app.verticalstudio.ai)
// for tests and docker-compose. It answers what the real upstream answers
// per reference/vertical-studio-upstream.md: the three-step password login
// that sets a Supabase-style auth-token cookie, throw-away chat creation with
// the chat id in any of its three forms, /api/chat answering in the AI SDK
// data-stream line protocol, and chat archiving.
//
// Behaviours are switchable at run time (chat-id form, compression, pacing,
// error lines, 5xx answers, expired sessions), and the fake records what it
// saw (logins, chats created and archived, chat requests, disconnects) so
// tests can assert on it.
package fakevs

import (
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"strings"
	"sync"
	"time"
)

// CookieName is the session cookie the fake sets (the real app's name).
const CookieName = "sb-ppdjlmajmpcqpkdmnzfd-auth-token"

// ChatIDForm is how the chat-creation step hands back the new chat's id.
type ChatIDForm int

const (
	// FormJSONArray: 202, Remix single-fetch style, a JSON array holding the
	// chat's path, no Location header (what current Remix does).
	FormJSONArray ChatIDForm = iota
	// FormLocation202: 202 with a Location header (what the original expected).
	FormLocation202
	// FormRedirect: 302 with a Location header.
	FormRedirect
	// FormBody200: 200 whose body mentions the chat's path.
	FormBody200
)

// ParseForm reads a form name: json, location, redirect or body.
func ParseForm(s string) (ChatIDForm, bool) {
	switch strings.ToLower(s) {
	case "", "json":
		return FormJSONArray, true
	case "location":
		return FormLocation202, true
	case "redirect":
		return FormRedirect, true
	case "body":
		return FormBody200, true
	}
	return 0, false
}

// Script is what the fake answers one chat request with.
type Script struct {
	Reasoning []string // g: lines
	Text      []string // 0: lines
	// Extra lines sent verbatim after the text (e.g. `2:[...]`, `k:{...}`,
	// `8:[...]`), each without its newline.
	Extra []string
	// ErrorAfter, when ErrorText is set, sends `3:"ErrorText"` after that
	// many reasoning+text lines, then ends the body without finish lines.
	ErrorAfter int
	ErrorText  string
	// Hang stops after the content lines and waits, sending nothing more,
	// until the client disconnects.
	Hang bool
	// NoUsage leaves usage out of the finish lines.
	NoUsage          bool
	PromptTokens     int
	CompletionTokens int
	FinishReason     string // default "stop"
}

// ChatRequest is what the fake was sent on /api/chat, decoded.
type ChatRequest struct {
	ChatID     string
	CornerType string
	Content    string
	Settings   map[string]any
	Referer    string
	Encoding   string // the encoding the answer was sent with ("" for none)
}

// Options configure a Fake. Zero values take the defaults in the comments.
type Options struct {
	Email    string // default user@example.com
	Password string // default secret
	Form     ChatIDForm
	// Encoding compresses chat answers and chat-id bodies when the client
	// accepts it: "br", "gzip" or "" for none.
	Encoding string
	// Delay is the pause before each line of a chat answer.
	Delay time.Duration
	// Reply builds the answer to a chat request; default DefaultReply.
	Reply func(ChatRequest) Script
	// ChunkedCookie splits the session cookie into .0 and .1 chunks, as
	// Supabase does for long values.
	ChunkedCookie bool
	// LoginDelay is a pause in the password step (to widen races in tests).
	LoginDelay time.Duration
}

// DefaultReply answers with two reasoning lines when reasoning is on, then
// "Hello, world!" in four lines, and usage 11 prompt / 7 completion tokens.
func DefaultReply(r ChatRequest) Script {
	s := Script{Text: []string{"Hello", ", ", "world", "!"}, PromptTokens: 11, CompletionTokens: 7}
	if r.Settings["reasoning"] == "on" {
		s.Reasoning = []string{"Let me think", " about it."}
	}
	return s
}

// Chat is a chat the fake created, and what happened to it.
type Chat struct {
	ID       string
	Corner   string // or "models/<slug>"
	Requests []ChatRequest
	Archived int  // archive calls for it
	Finished bool // an answer ran to its end
	Gone     bool // the client hung up during an answer
}

// Fake is the fake upstream. It is an http.Handler; its methods are safe for
// concurrent use.
type Fake struct {
	mu        sync.Mutex
	opts      Options
	sessions  map[string]bool // valid session tokens
	prompts   map[string]bool // prompts submitted to /stream.data
	chats     map[string]*Chat
	order     []string
	logins    int
	failed    int // failed login attempts
	requests  int
	byPath    map[string]int
	failChat  []int // statuses the next /api/chat requests answer with
	failNew   []int // statuses the next chat-creation requests answer with
	loginDown int   // status the password step answers with (0: normal)
	gone      chan string
	mux       *http.ServeMux

	// image flow (images.go)
	img        ImageBehaviour
	imgStats   ImageStats
	imgRunning map[string]int    // generations running, by prompt
	generated  map[string][]byte // images handed out as URLs, by id
}

// New returns a fake with o.
func New(o Options) *Fake {
	if o.Email == "" {
		o.Email = "user@example.com"
	}
	if o.Password == "" {
		o.Password = "secret"
	}
	if o.Reply == nil {
		o.Reply = DefaultReply
	}
	f := &Fake{
		opts: o, sessions: map[string]bool{}, prompts: map[string]bool{}, chats: map[string]*Chat{},
		byPath: map[string]int{}, gone: make(chan string, 1024),
		imgRunning: map[string]int{}, generated: map[string][]byte{},
	}
	f.routes()
	return f
}

// SetForm switches the chat-id form.
func (f *Fake) SetForm(form ChatIDForm) { f.mu.Lock(); f.opts.Form = form; f.mu.Unlock() }

// SetEncoding switches compression ("br", "gzip", "").
func (f *Fake) SetEncoding(enc string) { f.mu.Lock(); f.opts.Encoding = enc; f.mu.Unlock() }

// SetDelay sets the pause before each answer line.
func (f *Fake) SetDelay(d time.Duration) { f.mu.Lock(); f.opts.Delay = d; f.mu.Unlock() }

// SetReply sets the answer builder (nil: DefaultReply).
func (f *Fake) SetReply(r func(ChatRequest) Script) {
	if r == nil {
		r = DefaultReply
	}
	f.mu.Lock()
	f.opts.Reply = r
	f.mu.Unlock()
}

// FailChat makes the next len(statuses) /api/chat requests answer with
// those statuses (e.g. 503) instead of a stream.
func (f *Fake) FailChat(statuses ...int) {
	f.mu.Lock()
	f.failChat = append(f.failChat, statuses...)
	f.mu.Unlock()
}

// FailNewChat makes the next chat-creation (corner) requests fail so.
func (f *Fake) FailNewChat(statuses ...int) {
	f.mu.Lock()
	f.failNew = append(f.failNew, statuses...)
	f.mu.Unlock()
}

// SetLoginDown makes the password step answer status (0 restores logins).
func (f *Fake) SetLoginDown(status int) { f.mu.Lock(); f.loginDown = status; f.mu.Unlock() }

// ExpireSessions invalidates every session cookie handed out so far: the
// next request with one gets 401.
func (f *Fake) ExpireSessions() {
	f.mu.Lock()
	clear(f.sessions)
	f.mu.Unlock()
}

// Logins is the number of successful logins.
func (f *Fake) Logins() int { f.mu.Lock(); defer f.mu.Unlock(); return f.logins }

// FailedLogins is the number of password steps that did not log in.
func (f *Fake) FailedLogins() int { f.mu.Lock(); defer f.mu.Unlock(); return f.failed }

// Requests is the number of requests the fake has received.
func (f *Fake) Requests() int { f.mu.Lock(); defer f.mu.Unlock(); return f.requests }

// RequestsTo is the number of requests to one path (without query).
func (f *Fake) RequestsTo(path string) int { f.mu.Lock(); defer f.mu.Unlock(); return f.byPath[path] }

// Chats returns copies of the chats created so far, in creation order.
func (f *Fake) Chats() []Chat {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]Chat, 0, len(f.order))
	for _, id := range f.order {
		c := *f.chats[id]
		c.Requests = append([]ChatRequest(nil), c.Requests...)
		out = append(out, c)
	}
	return out
}

// Unarchived lists the ids of chats never archived.
func (f *Fake) Unarchived() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, id := range f.order {
		if f.chats[id].Archived == 0 {
			out = append(out, id)
		}
	}
	return out
}

// Disconnects delivers the id of each chat whose client hung up during an
// answer.
func (f *Fake) Disconnects() <-chan string { return f.gone }

// ServeHTTP serves the fake.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests++
	f.byPath[r.URL.Path]++
	f.mu.Unlock()
	f.mux.ServeHTTP(w, r)
}

func (f *Fake) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /login", f.loginPage)
	m.HandleFunc("GET /login-password.data", f.passwordPage)
	m.HandleFunc("POST /login-password.data", f.passwordStep)
	m.HandleFunc("GET /stream", f.authed(f.streamPage))
	m.HandleFunc("POST /stream.data", f.authed(f.submitPrompt))
	m.HandleFunc("GET /stream/corners/{corner}", f.authed(f.newCornerChat))
	m.HandleFunc("GET /stream/models/{slug}", f.authed(f.newModelChat))
	m.HandleFunc("POST /api/chat", f.authed(f.chat))
	m.HandleFunc("POST /api/chat/archive.data", f.authed(f.archive))
	f.imageRoutes(m)
	f.mux = m
}

func (f *Fake) options() Options { f.mu.Lock(); defer f.mu.Unlock(); return f.opts }

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// cuid is a chat id shaped like the real ones: "cm" and 23 lowercase
// letters and digits.
func cuid() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 23)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "cm" + string(b)
}
