package gemini

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// Event is one server-sent event of a streamGenerateContent?alt=sse answer.
type Event struct {
	// Frame is the event's bytes exactly as received, up to and including
	// the blank line that ends it.
	Frame []byte
	// Data is the event's data (its "data:" lines joined by newlines): one
	// GenerateContentResponse, or {"response": ...} from Code Assist.
	Data []byte
}

// ErrEventTooLarge is returned for an event larger than the reader accepts.
var ErrEventTooLarge = errors.New("gemini: SSE event larger than 32 MiB")

const maxEvent = 32 << 20

// EventReader splits an SSE body into events without changing a byte, and
// reads usage, finish reasons and errors on the side.
type EventReader struct {
	r *bufio.Reader

	usage     Usage
	textBytes int64
	finished  bool // a candidate carried a finishReason
	errStatus int
	errMsg    string
}

// NewEventReader reads events from r.
func NewEventReader(r io.Reader) *EventReader {
	// A small buffer: thousands of streams may be open at once, and lines
	// longer than it are read in pieces anyway.
	return &EventReader{r: bufio.NewReaderSize(r, 4<<10)}
}

// Next returns the next event with data. At the end of the body it returns
// io.EOF; a body that ends inside an event returns that partial event first.
func (er *EventReader) Next() (Event, error) {
	var frame, data []byte
	hasData := false
	for {
		line, err := er.r.ReadSlice('\n')
		for errors.Is(err, bufio.ErrBufferFull) {
			frame = append(frame, line...)
			if len(frame) > maxEvent {
				return Event{}, ErrEventTooLarge
			}
			line, err = er.r.ReadSlice('\n')
		}
		start := len(frame)
		frame = append(frame, line...)
		if len(frame) > maxEvent {
			return Event{}, ErrEventTooLarge
		}
		text := bytes.TrimRight(frame[lineStart(frame, start):], "\r\n")
		if v, ok := bytes.CutPrefix(text, []byte("data:")); ok {
			v = bytes.TrimPrefix(v, []byte(" "))
			if hasData {
				data = append(data, '\n')
			}
			data = append(data, v...)
			hasData = true
		}
		if err != nil {
			if hasData {
				ev := Event{Frame: frame, Data: data}
				er.observe(ev.Data)
				return ev, nil
			}
			if errors.Is(err, io.EOF) {
				return Event{}, io.EOF
			}
			return Event{}, err
		}
		if len(text) == 0 {
			if hasData {
				ev := Event{Frame: frame, Data: data}
				er.observe(ev.Data)
				return ev, nil
			}
			frame = frame[:0] // blank lines and comments between events
		}
	}
}

func lineStart(frame []byte, from int) int {
	if i := bytes.LastIndexByte(frame[:from], '\n'); i >= 0 {
		return i + 1
	}
	return 0
}

// chunk is what the reader looks at in one streamed response.
type chunk struct {
	Response   *chunk `json:"response"`
	Candidates []struct {
		Content struct {
			Parts []struct {
				Text         string          `json:"text"`
				FunctionCall json.RawMessage `json:"functionCall"`
			} `json:"parts"`
		} `json:"content"`
		FinishReason string `json:"finishReason"`
	} `json:"candidates"`
	UsageMetadata *usageMetadata `json:"usageMetadata"`
	Error         *apiError      `json:"error"`
}

func (er *EventReader) observe(data []byte) {
	var c chunk
	if json.Unmarshal(data, &c) != nil {
		return
	}
	if c.Error != nil {
		er.errStatus, er.errMsg = c.Error.Code, c.Error.Message
		return
	}
	if c.Response != nil {
		c = *c.Response
	}
	for _, cand := range c.Candidates {
		for _, p := range cand.Content.Parts {
			er.textBytes += int64(len(p.Text) + len(p.FunctionCall))
		}
		if cand.FinishReason != "" {
			er.finished = true
		}
	}
	if c.UsageMetadata != nil {
		er.usage.merge(c.UsageMetadata.usage())
	}
}

// Usage is the latest usage the stream reported (Gemini repeats running
// totals; the last chunk has them all).
func (er *EventReader) Usage() Usage { return er.usage }

// Finished reports whether a candidate reached a finishReason.
func (er *EventReader) Finished() bool { return er.finished }

// GeneratedBytes is how many bytes of text and function calls were
// streamed, for estimating output tokens when no usage came.
func (er *EventReader) GeneratedBytes() int64 { return er.textBytes }

// StreamError is an error object the stream carried (code 0 if none).
func (er *EventReader) StreamError() (int, string) { return er.errStatus, er.errMsg }

// DataFrame is an SSE event carrying data, ended the way Google ends them.
func DataFrame(data []byte) []byte {
	out := make([]byte, 0, len(data)+10)
	out = append(out, "data: "...)
	out = append(out, data...)
	return append(out, "\r\n\r\n"...)
}
