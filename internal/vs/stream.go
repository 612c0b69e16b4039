package vs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// PartType is the type id of a line of the upstream's data stream (the
// Vercel AI SDK v4 "data stream protocol": TYPE:JSON, one per line).
type PartType byte

const (
	PartText       PartType = '0' // a text delta, a JSON string
	PartReasoning  PartType = 'g' // a reasoning delta, a JSON string
	PartError      PartType = '3' // an error, a JSON string
	PartData       PartType = '2' // data parts, a JSON array (images may come this way)
	PartFile       PartType = 'k' // a file part, {"mimeType","data"} (images may come this way)
	PartFinishStep PartType = 'e' // finish step, {"finishReason","usage","isContinued"}
	PartFinish     PartType = 'd' // finish message, {"finishReason","usage"}: the last line
)

// Usage is the token count the upstream reports in finish lines.
type Usage struct {
	PromptTokens     int64 `json:"promptTokens"`
	CompletionTokens int64 `json:"completionTokens"`
}

// Finish is the payload of an e: or d: line.
type Finish struct {
	FinishReason string `json:"finishReason"`
	Usage        *Usage `json:"usage"`
	IsContinued  bool   `json:"isContinued"`
}

// Part is one parsed line. Lines of other types (f:, 8:, 9:, a:, …) are
// skipped by the parser.
type Part struct {
	Type   PartType
	Text   string          // PartText, PartReasoning, PartError
	Finish *Finish         // PartFinishStep, PartFinish
	Raw    json.RawMessage // the JSON payload of PartData and PartFile (owned by the caller)
}

// MaxLine is the longest line the parser accepts (file parts carry base64
// images).
const MaxLine = 64 << 20

// Stream reads an upstream data stream line by line. It is not safe for
// concurrent use.
type Stream struct {
	body io.ReadCloser
	r    *bufio.Reader
	long []byte
}

// NewStream parses body. Closing the stream closes body.
func NewStream(body io.ReadCloser) *Stream {
	return &Stream{body: body, r: bufio.NewReaderSize(body, 32<<10)}
}

// Close closes the upstream body.
func (s *Stream) Close() error { return s.body.Close() }

// Next returns the next part of a known type. At the end of the body it
// returns io.EOF; a body that broke off returns a KindServer *Error; a line
// that does not parse returns a KindServer *Error too.
func (s *Stream) Next() (Part, error) {
	for {
		line, err := s.line()
		if len(line) > 0 {
			p, ok, perr := ParseLine(line)
			if perr != nil {
				return Part{}, perr
			}
			if ok {
				return p, nil
			}
		}
		if err != nil {
			if err == io.EOF {
				return Part{}, io.EOF
			}
			return Part{}, transportError("read chat stream", err)
		}
	}
}

// line reads one line without its end; at the end of the body it returns the
// last unterminated line (if any) with io.EOF.
func (s *Stream) line() ([]byte, error) {
	b, err := s.r.ReadSlice('\n')
	if err == nil || len(b) > 0 && err != bufio.ErrBufferFull {
		return trimEOL(b), err
	}
	if err != bufio.ErrBufferFull {
		return nil, err
	}
	s.long = append(s.long[:0], b...)
	for {
		b, err = s.r.ReadSlice('\n')
		s.long = append(s.long, b...)
		if len(s.long) > MaxLine {
			return nil, fmt.Errorf("line longer than %d bytes", MaxLine)
		}
		if err != bufio.ErrBufferFull {
			return trimEOL(s.long), err
		}
	}
}

func trimEOL(b []byte) []byte {
	if n := len(b); n > 0 && b[n-1] == '\n' {
		b = b[:n-1]
	}
	if n := len(b); n > 0 && b[n-1] == '\r' {
		b = b[:n-1]
	}
	return b
}

// ErrMalformed marks a line that does not parse.
var ErrMalformed = errors.New("malformed data stream line")

// ParseLine parses one line (without its newline). ok is false for an
// empty line or a type the relay does not use.
func ParseLine(line []byte) (p Part, ok bool, err error) {
	if len(line) < 2 || line[1] != ':' {
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			return Part{}, false, nil
		}
		if len(line) < 2 || line[1] != ':' {
			return Part{}, false, nil // not TYPE:JSON with a one-character type: not ours
		}
	}
	t, payload := PartType(line[0]), line[2:]
	switch t {
	case PartText, PartReasoning, PartError:
		s, err := jsonString(payload)
		if err != nil {
			return Part{}, false, malformed(t, err)
		}
		return Part{Type: t, Text: s}, true, nil
	case PartFinishStep, PartFinish:
		f := new(Finish)
		if err := json.Unmarshal(payload, f); err != nil {
			return Part{}, false, malformed(t, err)
		}
		return Part{Type: t, Finish: f}, true, nil
	case PartData, PartFile:
		if !json.Valid(payload) {
			return Part{}, false, malformed(t, ErrMalformed)
		}
		return Part{Type: t, Raw: bytes.Clone(payload)}, true, nil
	}
	return Part{}, false, nil
}

func malformed(t PartType, err error) error {
	return &Error{Kind: KindServer, Op: "read chat stream", Msg: fmt.Sprintf("bad %q line", string(t)), Err: err}
}

// jsonString decodes a JSON string. Strings without escapes (most deltas)
// take a fast path.
func jsonString(b []byte) (string, error) {
	b = bytes.TrimSpace(b)
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return "", ErrMalformed
	}
	inner := b[1 : len(b)-1]
	plain := true
	for _, c := range inner {
		if c == '\\' || c == '"' || c < 0x20 {
			plain = false
			break
		}
	}
	if plain && utf8.Valid(inner) {
		return string(inner), nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return "", err
	}
	return s, nil
}
