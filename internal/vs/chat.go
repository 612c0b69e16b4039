package vs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"
)

// chatPath finds a chat id in a redirect target or a body: the "corners" UI
// (/stream/corners/<corner>/<id>) or the "models" UI (/stream/models/<slug>/<id>).
var chatPath = regexp.MustCompile(`/stream/(?:corners|models)/[\w.-]+/([\w-]+)`)

// NewChat creates a throw-away chat in corner (CornerText, CornerImage) and
// returns its id. The upstream answers with the id in one of three forms, all
// accepted: a Location header on a 202/3xx, a path inside a 200 (or 202)
// body, or a JSON array (Remix single-fetch "turbo-stream") holding the path.
func (c *Client) NewChat(ctx context.Context, cookie, corner string) (string, error) {
	prompt := uuid.NewString()
	if err := c.step(ctx, request{op: "create chat: open stream page", method: http.MethodGet,
		path: "/stream", cookie: cookie, follow: true}, http.StatusOK, http.StatusAccepted); err != nil {
		return "", err
	}
	if err := c.step(ctx, request{op: "create chat: submit prompt", method: http.MethodPost,
		path: "/stream.data?searchType=studio", cookie: cookie, follow: true,
		form: url.Values{"prompt": {prompt}, "intent": {"execute-prompt"}}},
		http.StatusOK, http.StatusAccepted, http.StatusNoContent); err != nil {
		return "", err
	}
	path := "/stream/corners/" + url.PathEscape(corner) + ".data?" + url.Values{"prompt": {prompt}}.Encode()
	return c.chatID(ctx, "create chat", path, cookie)
}

// NewModelChat creates a chat through the per-model UI
// (/stream/models/<slug>.data?forceNewChat=true), as the sibling proxies did.
func (c *Client) NewModelChat(ctx context.Context, cookie, slug string) (string, error) {
	return c.chatID(ctx, "create model chat", "/stream/models/"+url.PathEscape(slug)+".data?forceNewChat=true", cookie)
}

func (c *Client) chatID(ctx context.Context, op, path, cookie string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.stepLimit)
	defer cancel()
	resp, err := c.do(ctx, request{op: op, method: http.MethodGet, path: path, cookie: cookie})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := readSmall(resp.Body, 1<<20)
	if err != nil {
		return "", transportError(op, err)
	}
	switch {
	case resp.StatusCode == http.StatusAccepted || isRedirect(resp.StatusCode):
		if id := ChatIDFrom(resp.Header.Get("Location"), nil); id != "" {
			return id, nil
		}
		if id := ChatIDFrom("", body); id != "" {
			return id, nil
		}
	case resp.StatusCode == http.StatusOK:
		if id := ChatIDFrom("", body); id != "" {
			return id, nil
		}
	default:
		return "", statusError(op, resp.StatusCode, preview(body))
	}
	return "", &Error{Kind: KindClient, Op: op, Status: resp.StatusCode, Msg: "no chat id in the answer"}
}

// ChatIDFrom extracts a chat id from a redirect target, or else from a body:
// a JSON array holding the chat's path (scanned element by element), the
// path anywhere in the text, or a body that is just the id.
func ChatIDFrom(location string, body []byte) string {
	if m := chatPath.FindStringSubmatch(location); m != nil {
		return m[1]
	}
	if len(body) == 0 {
		return ""
	}
	var arr []any
	if json.Unmarshal(body, &arr) == nil {
		for _, v := range arr {
			if s, ok := v.(string); ok {
				if m := chatPath.FindStringSubmatch(s); m != nil {
					return m[1]
				}
			}
		}
	}
	if m := chatPath.FindSubmatch(body); m != nil {
		return string(m[1])
	}
	if s := strings.TrimSpace(string(body)); bareID.MatchString(s) {
		return s
	}
	return ""
}

var bareID = regexp.MustCompile(`^c[a-z0-9]{20,30}$`)

// ChatRequest is one message sent to a chat.
type ChatRequest struct {
	ChatID  string
	Corner  string // CornerText or CornerImage
	Content string // the flattened prompt
	// Settings is the "settings" object: TextSettings for text chats, or
	// whatever the corner takes.
	Settings any
}

// TextSettings are a text chat's settings.
type TextSettings struct {
	ModelID            string `json:"modelId"`
	CustomSystemPrompt string `json:"customSystemPrompt"`
	Reasoning          string `json:"reasoning,omitempty"` // "on" or absent
}

type chatBody struct {
	Message    chatMessage `json:"message"`
	CornerType string      `json:"cornerType"`
	ChatID     string      `json:"chatId"`
	Settings   any         `json:"settings"`
}

type chatMessage struct {
	ID        string     `json:"id"`
	CreatedAt string     `json:"createdAt"`
	Role      string     `json:"role"`
	Content   string     `json:"content"`
	Parts     []textPart `json:"parts"`
}

type textPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

// Referer is the page a chat lives on, sent as Referer with its requests.
func (c *Client) Referer(corner, chatID string) string {
	return c.origin + "/stream/corners/" + corner + "/" + chatID
}

// Chat sends r and returns the upstream's line-protocol stream once the
// answer's headers arrived with status 200. The stream ends with ctx: cancel
// it to abort the upstream request. The caller closes the stream.
func (c *Client) Chat(ctx context.Context, cookie string, r ChatRequest) (*Stream, error) {
	id := make([]byte, 8)
	_, _ = rand.Read(id)
	b, err := json.Marshal(chatBody{
		Message: chatMessage{
			ID: hex.EncodeToString(id), CreatedAt: time.Now().UTC().Format("2006-01-02T15:04:05.000Z"),
			Role: "user", Content: r.Content, Parts: []textPart{{Type: "text", Text: r.Content}},
		},
		CornerType: r.Corner, ChatID: r.ChatID, Settings: r.Settings,
	})
	if err != nil {
		return nil, &Error{Kind: KindClient, Op: "chat", Err: err}
	}
	resp, err := c.do(ctx, request{op: "chat", method: http.MethodPost, path: "/api/chat", cookie: cookie,
		json: b, referer: c.Referer(r.Corner, r.ChatID)})
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		body, _ := readSmall(resp.Body, 4<<10)
		return nil, statusError("chat", resp.StatusCode, preview(body))
	}
	return NewStream(resp.Body), nil
}

// Archive archives a chat. A chat that is already gone (404) counts as
// archived.
func (c *Client) Archive(ctx context.Context, cookie, corner, chatID string) error {
	ctx, cancel := context.WithTimeout(ctx, c.stepLimit)
	defer cancel()
	resp, err := c.do(ctx, request{op: "archive chat", method: http.MethodPost, path: "/api/chat/archive.data",
		cookie: cookie, form: url.Values{"chat": {chatID}}, referer: c.Referer(corner, chatID)})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := readSmall(resp.Body, 4<<10)
	switch resp.StatusCode {
	case http.StatusOK, http.StatusAccepted, http.StatusNoContent, http.StatusNotFound:
		return nil
	}
	return statusError("archive chat", resp.StatusCode, preview(body))
}
