// Package anthropic is the relay's client of the Anthropic Messages API: it
// reads what the relay needs from a client's request (and nothing more),
// builds the upstream request for an account, reads SSE streams event by
// event with their bytes unchanged while taking usage on the side, and runs
// the Claude OAuth (PKCE) flow.
package anthropic

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
)

// Request is what the relay reads from a Messages request body. The body
// itself goes upstream unchanged.
type Request struct {
	Model  string
	Stream bool
	// UserID is metadata.user_id as sent (Claude Code sends a JSON string).
	UserID string
	// Start is the conversation start (system and first message), used to
	// keep a conversation without a session id on one account.
	system, first json.RawMessage
}

// BadRequest is a request the relay rejects before anything goes upstream.
type BadRequest struct{ Msg string }

func (e *BadRequest) Error() string { return e.Msg }

type wireRequest struct {
	Model     *string         `json:"model"`
	MaxTokens json.RawMessage `json:"max_tokens"`
	Messages  json.RawMessage `json:"messages"`
	System    json.RawMessage `json:"system"`
	Stream    json.RawMessage `json:"stream"`
	Metadata  *struct {
		UserID json.RawMessage `json:"user_id"`
	} `json:"metadata"`
}

// ParseMessages checks a Messages body for what the relay needs: a JSON
// object with model, messages (an array) and max_tokens (a number). Roles,
// content and every other field are the upstream's business.
func ParseMessages(body []byte) (Request, error) {
	return parse(body, true)
}

// ParseCountTokens checks a count_tokens body: model and messages.
func ParseCountTokens(body []byte) (Request, error) {
	return parse(body, false)
}

func parse(body []byte, needMax bool) (Request, error) {
	var w wireRequest
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return Request{}, &BadRequest{"The request body must be a JSON object."}
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return Request{}, &BadRequest{"The request body is not valid JSON: " + jsonErr(err)}
	}
	if w.Model == nil || strings.TrimSpace(*w.Model) == "" {
		return Request{}, &BadRequest{"model: Field required (a model name such as claude-sonnet-4-5)."}
	}
	if len(w.Messages) == 0 || bytes.Equal(w.Messages, []byte("null")) {
		return Request{}, &BadRequest{"messages: Field required."}
	}
	if w.Messages[0] != '[' {
		return Request{}, &BadRequest{"messages: Input should be a list of messages."}
	}
	if needMax {
		if len(w.MaxTokens) == 0 || bytes.Equal(w.MaxTokens, []byte("null")) {
			return Request{}, &BadRequest{"max_tokens: Field required."}
		}
		if c := w.MaxTokens[0]; c != '-' && (c < '0' || c > '9') {
			return Request{}, &BadRequest{"max_tokens: Input should be a valid integer."}
		}
	}
	r := Request{Model: *w.Model, system: w.System}
	if len(w.Stream) > 0 {
		switch string(w.Stream) {
		case "true":
			r.Stream = true
		case "false", "null":
		default:
			return Request{}, &BadRequest{"stream: Input should be a valid boolean."}
		}
	}
	if w.Metadata != nil && len(w.Metadata.UserID) > 0 {
		var s string
		if json.Unmarshal(w.Metadata.UserID, &s) == nil {
			r.UserID = s
		}
	}
	var msgs []json.RawMessage
	if json.Unmarshal(w.Messages, &msgs) == nil && len(msgs) > 0 {
		r.first = msgs[0]
	}
	return r, nil
}

func jsonErr(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return se.Error()
	case errors.As(err, &te):
		return te.Field + ": unexpected " + te.Value
	}
	return err.Error()
}

// SessionID is the sticky-session id of a request: the session id in
// metadata.user_id (Claude Code's JSON form {"session_id":...} or the older
// user_<hash>_account_<uuid>_session_<uuid> form), else the
// X-Claude-Code-Session-Id header, else a hash of the conversation start
// (system prompt and first message), else "".
func (r Request) SessionID(header string) string {
	if id := sessionFromUserID(r.UserID); id != "" {
		return "s_" + id
	}
	if h := strings.TrimSpace(header); h != "" && len(h) <= 128 {
		return "s_" + h
	}
	if len(r.first) == 0 {
		return ""
	}
	h := sha256.New()
	h.Write(r.system)
	h.Write([]byte{0})
	h.Write(r.first)
	return "h_" + hex.EncodeToString(h.Sum(nil)[:16])
}

func sessionFromUserID(uid string) string {
	uid = strings.TrimSpace(uid)
	if uid == "" {
		return ""
	}
	if uid[0] == '{' {
		var v struct {
			SessionID string `json:"session_id"`
		}
		if json.Unmarshal([]byte(uid), &v) == nil && v.SessionID != "" && len(v.SessionID) <= 128 {
			return v.SessionID
		}
		return ""
	}
	if i := strings.LastIndex(uid, "_session_"); i >= 0 {
		if id := uid[i+len("_session_"):]; id != "" && len(id) <= 128 {
			return id
		}
	}
	return ""
}
