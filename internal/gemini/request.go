package gemini

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/uuid"
)

// The model methods the relay serves.
const (
	MethodGenerate = "generateContent"
	MethodStream   = "streamGenerateContent"
	MethodCount    = "countTokens"
)

// BadRequest is a request the relay refuses before any upstream sees it.
// Its message says what is wrong and can be shown to the client.
type BadRequest struct{ Msg string }

func (e *BadRequest) Error() string { return e.Msg }

func bad(format string, args ...any) error { return &BadRequest{Msg: fmt.Sprintf(format, args...)} }

// Call is one model call, whichever API the client spoke.
type Call struct {
	Method string // MethodGenerate, MethodStream or MethodCount
	Model  string // without a "models/" prefix
	// CodeAssist is set when the client spoke the Code Assist API (its
	// answers are wrapped in {"response": ...}).
	CodeAssist bool
	// Request is the GenerateContentRequest as the client sent it (the
	// native body, or the envelope's "request"). For countTokens it is the
	// native count body (native clients) or the envelope's "request"
	// ({"model", "contents"}) (Code Assist clients).
	Request json.RawMessage
	// Project and PromptID come from a Code Assist envelope.
	Project  string
	PromptID string
	// Session identifies the conversation for sticky scheduling ("" for
	// none): Gemini CLI's session_id, else a hash of the conversation's
	// opening for multi-turn native requests.
	Session string
}

// SplitModelMethod splits "gemini-2.5-flash:generateContent" (optionally
// with a "models/" prefix) into its model and method.
func SplitModelMethod(s string) (model, method string) {
	s = strings.TrimPrefix(s, "models/")
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, ""
	}
	return s[:i], s[i+1:]
}

// KnownMethod reports whether method is one the relay serves for models.
func KnownMethod(method string) bool {
	return method == MethodGenerate || method == MethodStream || method == MethodCount
}

type genRequest struct {
	Contents               json.RawMessage `json:"contents"`
	SessionID              string          `json:"session_id"`
	SystemInstruction      json.RawMessage `json:"systemInstruction"`
	GenerateContentRequest *genRequest     `json:"generateContentRequest"`
}

func objectOf(body []byte, what string) error {
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return bad("The request body is empty; send a JSON %s.", what)
	}
	if b[0] != '{' || !json.Valid(b) {
		return bad("Invalid JSON payload received: the body is not a JSON object.")
	}
	return nil
}

// contentsCount is the number of entries of a contents array (-1 if it is
// not an array).
func contentsCount(raw json.RawMessage) int {
	if len(raw) == 0 || string(raw) == "null" {
		return 0
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return -1
	}
	return len(list)
}

func checkContents(raw json.RawMessage, field string) error {
	switch n := contentsCount(raw); {
	case n < 0:
		return bad("Invalid value at '%s': contents must be a list of Content objects.", field)
	case n == 0:
		return bad("* GenerateContentRequest.contents: contents is not specified")
	}
	return nil
}

// ParseNative reads a native API call: POST models/{model}:{method} with
// body.
func ParseNative(model, method string, body []byte) (Call, error) {
	c := Call{Method: method, Model: strings.TrimPrefix(model, "models/"), Request: body}
	if c.Model == "" {
		return c, bad("The model name is missing from the path (models/{model}:%s).", method)
	}
	if err := objectOf(body, "request"); err != nil {
		return c, err
	}
	var r genRequest
	if err := json.Unmarshal(body, &r); err != nil {
		return c, bad("Invalid JSON payload received: %s", jsonMsg(err))
	}
	if method == MethodCount {
		if contentsCount(r.Contents) == 0 && r.GenerateContentRequest != nil {
			return c, checkContents(r.GenerateContentRequest.Contents, "generate_content_request.contents")
		}
		return c, checkContents(r.Contents, "contents")
	}
	if err := checkContents(r.Contents, "contents"); err != nil {
		return c, err
	}
	if contentsCount(r.Contents) > 1 {
		c.Session = conversationHash(r.SystemInstruction, r.Contents)
	}
	return c, nil
}

type envelope struct {
	Model        string          `json:"model"`
	Project      string          `json:"project"`
	UserPromptID string          `json:"user_prompt_id"`
	Request      json.RawMessage `json:"request"`
}

type countRequest struct {
	Model    string          `json:"model"`
	Contents json.RawMessage `json:"contents"`
}

// ParseCodeAssist reads a Code Assist call: POST v1internal:{method} with
// the envelope Gemini CLI sends ({model, project, user_prompt_id, request}
// for generateContent; {request: {model, contents}} for countTokens).
func ParseCodeAssist(method string, body []byte) (Call, error) {
	c := Call{Method: method, CodeAssist: true}
	if err := objectOf(body, "envelope"); err != nil {
		return c, err
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return c, bad("Invalid JSON payload received: %s", jsonMsg(err))
	}
	if len(env.Request) == 0 || string(env.Request) == "null" {
		return c, bad("request is required: send {\"model\", \"project\", \"request\": {\"contents\": [...]}}.")
	}
	if err := objectOf(env.Request, "request object"); err != nil {
		return c, bad("Invalid value at 'request': it must be a JSON object.")
	}
	c.Request, c.Project, c.PromptID = env.Request, env.Project, env.UserPromptID
	if method == MethodCount {
		var cr countRequest
		if err := json.Unmarshal(env.Request, &cr); err != nil {
			return c, bad("Invalid JSON payload received: %s", jsonMsg(err))
		}
		c.Model = strings.TrimPrefix(cr.Model, "models/")
		if c.Model == "" {
			return c, bad("request.model is required (e.g. \"models/gemini-2.5-flash\").")
		}
		return c, checkContents(cr.Contents, "request.contents")
	}
	c.Model = strings.TrimPrefix(env.Model, "models/")
	if c.Model == "" {
		return c, bad("model is required.")
	}
	var r genRequest
	if err := json.Unmarshal(env.Request, &r); err != nil {
		return c, bad("Invalid JSON payload received: %s", jsonMsg(err))
	}
	if err := checkContents(r.Contents, "request.contents"); err != nil {
		return c, err
	}
	c.Session = r.SessionID
	if c.Session == "" && contentsCount(r.Contents) > 1 {
		c.Session = conversationHash(r.SystemInstruction, r.Contents)
	}
	return c, nil
}

func jsonMsg(err error) string {
	msg := err.Error()
	return strings.TrimPrefix(msg, "json: ")
}

// conversationHash names a conversation by its system instruction and its
// first content, which stay the same as it grows.
func conversationHash(system, contents json.RawMessage) string {
	var list []json.RawMessage
	if json.Unmarshal(contents, &list) != nil || len(list) == 0 {
		return ""
	}
	h := sha256.New()
	h.Write(system)
	h.Write([]byte{0})
	h.Write(list[0])
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// codeAssistOnly are request fields the Code Assist API takes and the
// native API refuses as unknown.
var codeAssistOnly = []string{"session_id", "labels"}

// NativeBody is the body to send to the native API for the call.
func (c Call) NativeBody() ([]byte, error) {
	if !c.CodeAssist {
		return c.Request, nil
	}
	if c.Method == MethodCount {
		var cr countRequest
		if err := json.Unmarshal(c.Request, &cr); err != nil {
			return nil, err
		}
		return json.Marshal(map[string]json.RawMessage{"contents": cr.Contents})
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(c.Request, &m); err != nil {
		return nil, err
	}
	dropped := false
	for _, k := range codeAssistOnly {
		if _, ok := m[k]; ok {
			delete(m, k)
			dropped = true
		}
	}
	if !dropped {
		return c.Request, nil
	}
	return json.Marshal(m)
}

// CodeAssistBody is the body to send to the Code Assist API for the call,
// under the account's project.
func (c Call) CodeAssistBody(project string) ([]byte, error) {
	if c.Method == MethodCount {
		if c.CodeAssist {
			return json.Marshal(map[string]json.RawMessage{"request": c.Request})
		}
		var r genRequest
		if err := json.Unmarshal(c.Request, &r); err != nil {
			return nil, err
		}
		contents := r.Contents
		if contentsCount(contents) == 0 && r.GenerateContentRequest != nil {
			contents = r.GenerateContentRequest.Contents
		}
		model, _ := json.Marshal("models/" + c.Model)
		req, _ := json.Marshal(map[string]json.RawMessage{"model": model, "contents": contents})
		return json.Marshal(map[string]json.RawMessage{"request": req})
	}
	id := c.PromptID
	if id == "" {
		id = uuid.NewString()
	}
	return json.Marshal(struct {
		Model        string          `json:"model"`
		Project      string          `json:"project,omitempty"`
		UserPromptID string          `json:"user_prompt_id"`
		Request      json.RawMessage `json:"request"`
	}{c.Model, project, id, c.Request})
}

// WrapResponse puts a native response into the Code Assist shape
// {"response": ...}.
func WrapResponse(native []byte) []byte {
	out := make([]byte, 0, len(native)+13)
	out = append(out, `{"response":`...)
	out = append(out, bytes.TrimSpace(native)...)
	return append(out, '}')
}

// UnwrapResponse takes the native response out of a Code Assist answer
// {"response": ...}; an answer without one is returned as is.
func UnwrapResponse(ca []byte) []byte {
	var w struct {
		Response json.RawMessage `json:"response"`
	}
	if json.Unmarshal(ca, &w) != nil || len(w.Response) == 0 {
		return ca
	}
	return w.Response
}
