package fakevs

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/andybalholm/brotli"
)

func (f *Fake) loginPage(w http.ResponseWriter, r *http.Request) {
	http.SetCookie(w, &http.Cookie{Name: "__vs_visitor", Value: randomToken(8), Path: "/", HttpOnly: true})
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = io.WriteString(w, "<!doctype html><title>Log in</title>")
}

func (f *Fake) passwordPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/x-script")
	w.Header().Set("X-Remix-Response", "yes")
	_, _ = fmt.Fprintf(w, `[{"_1":2},"email",%q]`, r.URL.Query().Get("email"))
}

func (f *Fake) passwordStep(w http.ResponseWriter, r *http.Request) {
	o := f.options()
	if o.LoginDelay > 0 {
		sleep(r.Context(), o.LoginDelay)
	}
	f.mu.Lock()
	down := f.loginDown
	f.mu.Unlock()
	if down != 0 {
		f.count(&f.failed)
		http.Error(w, "login is unavailable", down)
		return
	}
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	email, pw := r.PostForm.Get("email"), r.PostForm.Get("password")
	w.Header().Set("Content-Type", "text/x-script")
	w.Header().Set("X-Remix-Response", "yes")
	if email != o.Email || pw != o.Password || r.URL.Query().Get("email") != email {
		f.count(&f.failed)
		_, _ = io.WriteString(w, `[{"_1":2},"error","Invalid login credentials"]`)
		return
	}
	token := "base64-" + randomToken(48)
	f.mu.Lock()
	f.sessions[token] = true
	f.logins++
	f.mu.Unlock()
	if o.ChunkedCookie {
		half := len(token) / 2
		http.SetCookie(w, &http.Cookie{Name: CookieName + ".0", Value: token[:half], Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
		http.SetCookie(w, &http.Cookie{Name: CookieName + ".1", Value: token[half:], Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	} else {
		http.SetCookie(w, &http.Cookie{Name: CookieName, Value: token, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	}
	// Remix single fetch: a redirect thrown by the action comes back as 202
	// with the target in the turbo-stream body.
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, `[["SingleFetchRedirect",1],{"_2":3,"_4":5},"redirect","/stream","status",302]`)
}

func (f *Fake) count(n *int) { f.mu.Lock(); *n++; f.mu.Unlock() }

// authed answers 401 unless the request carries a live session cookie
// (whole, or in .0/.1 chunks).
func (f *Fake) authed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var chunks []*http.Cookie
		token := ""
		for _, c := range r.Cookies() {
			switch {
			case c.Name == CookieName:
				token = c.Value
			case strings.HasPrefix(c.Name, CookieName+"."):
				chunks = append(chunks, c)
			}
		}
		if token == "" && len(chunks) > 0 {
			sort.Slice(chunks, func(i, j int) bool { return chunks[i].Name < chunks[j].Name })
			for _, c := range chunks {
				token += c.Value
			}
		}
		f.mu.Lock()
		ok := token != "" && f.sessions[token]
		f.mu.Unlock()
		if !ok {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"error":"Unauthorized"}`)
			return
		}
		h(w, r)
	}
}

func (f *Fake) streamPage(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = io.WriteString(w, "<!doctype html><title>Stream</title>")
}

func (f *Fake) submitPrompt(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil || r.PostForm.Get("prompt") == "" || r.PostForm.Get("intent") != "execute-prompt" ||
		r.URL.Query().Get("searchType") != "studio" {
		http.Error(w, "bad prompt submission", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.prompts[r.PostForm.Get("prompt")] = true
	f.mu.Unlock()
	w.Header().Set("Content-Type", "text/x-script")
	w.Header().Set("X-Remix-Response", "yes")
	_, _ = io.WriteString(w, `[{"_1":2},"ok",true]`)
}

func (f *Fake) takeFailure(list *[]int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(*list) == 0 {
		return 0
	}
	s := (*list)[0]
	*list = (*list)[1:]
	return s
}

func (f *Fake) newCornerChat(w http.ResponseWriter, r *http.Request) {
	corner, ok := strings.CutSuffix(r.PathValue("corner"), ".data")
	if !ok || (corner != "text" && corner != "image") {
		http.NotFound(w, r)
		return
	}
	if s := f.takeFailure(&f.failNew); s != 0 {
		http.Error(w, http.StatusText(s), s)
		return
	}
	prompt := r.URL.Query().Get("prompt")
	f.mu.Lock()
	known := f.prompts[prompt]
	delete(f.prompts, prompt)
	f.mu.Unlock()
	if !known {
		http.Error(w, "no such prompt", http.StatusNotFound)
		return
	}
	f.answerNewChat(w, r, corner, "/stream/corners/"+corner+"/")
}

func (f *Fake) newModelChat(w http.ResponseWriter, r *http.Request) {
	slug, ok := strings.CutSuffix(r.PathValue("slug"), ".data")
	if !ok || r.URL.Query().Get("forceNewChat") != "true" {
		http.NotFound(w, r)
		return
	}
	f.answerNewChat(w, r, "models/"+slug, "/stream/models/"+slug+"/")
}

func (f *Fake) answerNewChat(w http.ResponseWriter, r *http.Request, corner, prefix string) {
	id := cuid()
	f.mu.Lock()
	f.chats[id] = &Chat{ID: id, Corner: corner}
	f.order = append(f.order, id)
	form := f.opts.Form
	f.mu.Unlock()
	path := prefix + id
	switch form {
	case FormLocation202:
		w.Header().Set("Location", path)
		w.WriteHeader(http.StatusAccepted)
	case FormRedirect:
		w.Header().Set("Location", path)
		w.WriteHeader(http.StatusFound)
	case FormBody200:
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		ew := f.encoder(w, r)
		_, _ = fmt.Fprintf(ew, `<!doctype html><link rel="canonical" href="%s"><div id="chat"></div>`, path)
		ew.Close()
	default:
		w.Header().Set("Content-Type", "text/x-script")
		w.Header().Set("X-Remix-Response", "yes")
		w.WriteHeader(http.StatusAccepted)
		_, _ = fmt.Fprintf(w, `[["SingleFetchRedirect",1],{"_2":3},"redirect",%q,"status",302]`, path)
	}
}

type chatBody struct {
	Message struct {
		ID        string `json:"id"`
		CreatedAt string `json:"createdAt"`
		Role      string `json:"role"`
		Content   string `json:"content"`
		Parts     []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"parts"`
	} `json:"message"`
	CornerType string         `json:"cornerType"`
	ChatID     string         `json:"chatId"`
	Settings   map[string]any `json:"settings"`
}

func (f *Fake) chat(w http.ResponseWriter, r *http.Request) {
	var b chatBody
	if err := json.NewDecoder(io.LimitReader(r.Body, 32<<20)).Decode(&b); err != nil {
		http.Error(w, "bad json", http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	c := f.chats[b.ChatID]
	archived := c != nil && c.Archived > 0
	f.mu.Unlock()
	switch {
	case c == nil || archived:
		http.Error(w, `{"error":"Chat not found"}`, http.StatusNotFound)
		return
	case b.Message.Role != "user" || b.Message.ID == "" || b.Message.CreatedAt == "" ||
		len(b.Message.Parts) != 1 || b.Message.Parts[0].Text != b.Message.Content:
		http.Error(w, `{"error":"Invalid message"}`, http.StatusBadRequest)
		return
	case b.CornerType != c.Corner:
		http.Error(w, `{"error":"Wrong corner"}`, http.StatusBadRequest)
		return
	case !strings.HasSuffix(r.Header.Get("Referer"), "/stream/corners/"+c.Corner+"/"+c.ID):
		http.Error(w, `{"error":"Bad referer"}`, http.StatusBadRequest)
		return
	}
	if s := f.takeFailure(&f.failChat); s != 0 {
		http.Error(w, `{"error":"Upstream temporarily unavailable"}`, s)
		return
	}
	req := ChatRequest{ChatID: b.ChatID, CornerType: b.CornerType, Content: b.Message.Content,
		Settings: b.Settings, Referer: r.Header.Get("Referer")}
	o := f.options()
	ew := f.encoder(w, r)
	req.Encoding = ew.name
	f.mu.Lock()
	c.Requests = append(c.Requests, req)
	f.mu.Unlock()
	var script Script
	if req.CornerType == "image" {
		script = f.imageScript(r.Context(), req, requestBase(r))
	} else {
		script = o.Reply(req)
	}

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Vercel-AI-Data-Stream", "v1")
	w.WriteHeader(http.StatusOK)
	ctx := r.Context()
	emit := func(line string) bool {
		if o.Delay > 0 && !sleep(ctx, o.Delay) {
			return false
		}
		if _, err := io.WriteString(ew, line+"\n"); err != nil {
			return false
		}
		return ew.Flush() == nil && ctx.Err() == nil
	}
	gone := func() {
		f.mu.Lock()
		c.Gone = true
		f.mu.Unlock()
		select {
		case f.gone <- c.ID:
		default:
		}
	}
	defer ew.Close()
	if !emit(fmt.Sprintf(`f:{"messageId":"msg-%s"}`, randomToken(12))) {
		gone()
		return
	}
	n := 0
	for _, kind := range []struct {
		prefix string
		lines  []string
	}{{"g:", script.Reasoning}, {"0:", script.Text}} {
		for _, s := range kind.lines {
			if script.ErrorText != "" && n == script.ErrorAfter {
				emit("3:" + quote(script.ErrorText))
				return
			}
			if !emit(kind.prefix + quote(s)) {
				gone()
				return
			}
			n++
		}
	}
	if script.ErrorText != "" {
		emit("3:" + quote(script.ErrorText))
		return
	}
	for _, l := range script.Extra {
		if !emit(l) {
			gone()
			return
		}
	}
	if script.Hang {
		<-ctx.Done()
		gone()
		return
	}
	reason := script.FinishReason
	if reason == "" {
		reason = "stop"
	}
	usage := ""
	if !script.NoUsage {
		usage = fmt.Sprintf(`,"usage":{"promptTokens":%d,"completionTokens":%d}`, script.PromptTokens, script.CompletionTokens)
	}
	if !emit(fmt.Sprintf(`e:{"finishReason":%q%s,"isContinued":false}`, reason, usage)) ||
		!emit(fmt.Sprintf(`d:{"finishReason":%q%s}`, reason, usage)) {
		gone()
		return
	}
	f.mu.Lock()
	c.Finished = true
	f.mu.Unlock()
}

func (f *Fake) archive(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		http.Error(w, "bad form", http.StatusBadRequest)
		return
	}
	id := r.PostForm.Get("chat")
	f.mu.Lock()
	c := f.chats[id]
	if c != nil {
		c.Archived++
	}
	f.mu.Unlock()
	if c == nil {
		http.Error(w, `{"error":"Chat not found"}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "text/x-script")
	_, _ = io.WriteString(w, `[{"_1":2},"success",true]`)
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// sleep waits d, or until ctx ends (false).
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// encWriter writes a body, compressed when the fake is set to and the client
// accepts it; Flush pushes what was written to the client at once.
type encWriter struct {
	w    http.ResponseWriter
	z    io.WriteCloser
	zf   interface{ Flush() error }
	name string
}

func (f *Fake) encoder(w http.ResponseWriter, r *http.Request) *encWriter {
	enc := f.options().Encoding
	ew := &encWriter{w: w}
	if enc == "" || !strings.Contains(r.Header.Get("Accept-Encoding"), enc) {
		return ew
	}
	switch enc {
	case "br":
		bw := brotli.NewWriterLevel(w, 5)
		ew.z, ew.zf = bw, bw
	case "gzip":
		gw := gzip.NewWriter(w)
		ew.z, ew.zf = gw, gw
	default:
		return ew
	}
	ew.name = enc
	w.Header().Set("Content-Encoding", enc)
	w.Header().Add("Vary", "Accept-Encoding")
	return ew
}

func (e *encWriter) Write(p []byte) (int, error) {
	if e.z != nil {
		return e.z.Write(p)
	}
	return e.w.Write(p)
}

func (e *encWriter) Flush() error {
	if e.zf != nil {
		if err := e.zf.Flush(); err != nil {
			return err
		}
	}
	return http.NewResponseController(e.w).Flush()
}

func (e *encWriter) Close() {
	if e.z != nil {
		_ = e.z.Close()
	}
}
