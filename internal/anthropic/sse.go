package anthropic

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// Event is one server-sent event as the upstream sent it.
type Event struct {
	// Frame is the event's bytes exactly as received, up to and including
	// the blank line that ends it. Forward it unchanged.
	Frame []byte
	// Type is the event's "event:" field (message_start, ping, error, ...).
	Type string
	// Data is the event's data (its "data:" lines joined by newlines).
	Data []byte
}

// ErrEventTooLarge is returned for an event larger than the reader accepts.
var ErrEventTooLarge = errors.New("anthropic: SSE event larger than 32 MiB")

const maxEvent = 32 << 20

// EventReader splits an SSE body into events without changing a byte, and
// reads usage from message_start and message_delta on the side.
type EventReader struct {
	r *bufio.Reader

	usage     Usage
	textBytes int64 // text, thinking and tool-input bytes seen in deltas
	stopped   bool  // message_stop seen
	errType   string
	errMsg    string
}

// NewEventReader reads events from r.
func NewEventReader(r io.Reader) *EventReader {
	// A small buffer: thousands of streams may be open at once, and lines
	// longer than it are read in pieces anyway.
	return &EventReader{r: bufio.NewReaderSize(r, 4<<10)}
}

// Next returns the next event. At the end of the body it returns io.EOF; a
// body that ends inside an event returns that partial event first.
func (er *EventReader) Next() (Event, error) {
	var frame []byte
	var ev Event
	content := false
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
		full := frame[lineStart(frame, start):]
		if err != nil {
			if len(frame) > 0 && content || len(bytes.TrimSpace(frame)) > 0 {
				er.field(&ev, bytes.TrimRight(full, "\r\n"))
				ev.Frame = frame
				er.observe(&ev)
				return ev, nil
			}
			if errors.Is(err, io.EOF) {
				return Event{}, io.EOF
			}
			return Event{}, err
		}
		text := bytes.TrimRight(full, "\r\n")
		if len(text) == 0 {
			if content {
				ev.Frame = frame
				er.observe(&ev)
				return ev, nil
			}
			continue // blank lines before an event stay in its frame
		}
		content = true
		er.field(&ev, text)
	}
}

// lineStart finds where the line that ends at the end of frame begins, given
// that it began at or before start (a long line arrives in pieces).
func lineStart(frame []byte, start int) int {
	if i := bytes.LastIndexByte(frame[:start], '\n'); i >= 0 {
		return i + 1
	}
	return 0
}

func (er *EventReader) field(ev *Event, line []byte) {
	switch {
	case bytes.HasPrefix(line, []byte("event:")):
		ev.Type = string(bytes.TrimPrefix(line[6:], []byte(" ")))
	case bytes.HasPrefix(line, []byte("data:")):
		d := bytes.TrimPrefix(line[5:], []byte(" "))
		if ev.Data != nil {
			ev.Data = append(append(ev.Data, '\n'), d...)
		} else {
			ev.Data = append([]byte(nil), d...)
		}
	}
}

// observe reads usage and the end of the message from the events that
// carry them. Events it cannot parse are forwarded all the same.
func (er *EventReader) observe(ev *Event) {
	typ := ev.Type
	if typ == "" && len(ev.Data) > 0 {
		var t struct {
			Type string `json:"type"`
		}
		_ = json.Unmarshal(ev.Data, &t)
		typ = t.Type
	}
	switch typ {
	case "message_start":
		var m struct {
			Message struct {
				Model string     `json:"model"`
				Usage *wireUsage `json:"usage"`
			} `json:"message"`
		}
		if json.Unmarshal(ev.Data, &m) == nil {
			if m.Message.Model != "" {
				er.usage.Model = m.Message.Model
			}
			er.usage.apply(m.Message.Usage)
			er.usage.SeenStart = true
		}
	case "message_delta":
		var m struct {
			Usage *wireUsage `json:"usage"`
		}
		if json.Unmarshal(ev.Data, &m) == nil && m.Usage != nil {
			er.usage.apply(m.Usage)
			er.usage.SeenEnd = true
		}
	case "content_block_delta":
		var m struct {
			Delta struct {
				Text        string `json:"text"`
				Thinking    string `json:"thinking"`
				PartialJSON string `json:"partial_json"`
			} `json:"delta"`
		}
		if json.Unmarshal(ev.Data, &m) == nil {
			er.textBytes += int64(len(m.Delta.Text) + len(m.Delta.Thinking) + len(m.Delta.PartialJSON))
		}
	case "message_stop":
		er.stopped = true
	case "error":
		er.errType, er.errMsg = ErrorFromJSON(ev.Data)
		if er.errType == "" {
			er.errType = "error"
		}
	}
}

// Usage is what the stream reported so far.
func (er *EventReader) Usage() Usage { return er.usage }

// GeneratedBytes is the text, thinking and tool-input bytes the stream
// carried, for estimating output tokens of a stream cut short.
func (er *EventReader) GeneratedBytes() int64 { return er.textBytes }

// Stopped reports whether message_stop arrived.
func (er *EventReader) Stopped() bool { return er.stopped }

// StreamError is the error event the upstream sent, if any.
func (er *EventReader) StreamError() (typ, msg string) { return er.errType, er.errMsg }

// ErrorEvent is an SSE error event in Anthropic's format, for errors the
// relay itself has to report after the stream started.
func ErrorEvent(typ, msg string) []byte {
	b, _ := json.Marshal(map[string]any{"type": "error", "error": map[string]string{"type": typ, "message": msg}})
	out := make([]byte, 0, len(b)+24)
	out = append(out, "event: error\ndata: "...)
	out = append(out, b...)
	return append(out, "\n\n"...)
}
