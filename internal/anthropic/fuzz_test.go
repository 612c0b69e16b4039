package anthropic

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

// FuzzEventReader feeds arbitrary bodies to the SSE reader, whole and one
// byte at a time: it must not panic, must hand back every byte exactly once
// (the frames concatenate to the body), and must read the same events
// however the body arrives.
func FuzzEventReader(f *testing.F) {
	f.Add([]byte("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"m\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n" +
		"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n" +
		"event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n" +
		"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"))
	f.Add([]byte("event: error\r\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\r\n\r\n"))
	f.Add([]byte(": comment\n\n\n\ndata: {}\n"))
	f.Add([]byte("data: a\ndata: b\n\nevent: ping"))
	f.Add([]byte("data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":-5,\"cache_creation\":{\"ephemeral_5m_input_tokens\":\"x\"}}}}\n\n"))
	f.Add([]byte{0xff, 0xfe, '\n', '\n', 'd', 'a', 't', 'a', ':', 0x00})
	f.Fuzz(func(t *testing.T, body []byte) {
		read := func(r io.Reader) ([]Event, *EventReader) {
			er := NewEventReader(r)
			var evs []Event
			for i := 0; ; i++ {
				ev, err := er.Next()
				if errors.Is(err, io.EOF) {
					return evs, er
				}
				if err != nil {
					t.Fatalf("Next: %v", err)
				}
				if len(ev.Frame) == 0 {
					t.Fatalf("event %d has an empty frame", i)
				}
				if i > len(body) {
					t.Fatalf("more events than bytes")
				}
				evs = append(evs, ev)
			}
		}
		whole, er := read(bytes.NewReader(body))
		var joined []byte
		for _, ev := range whole {
			joined = append(joined, ev.Frame...)
		}
		// Trailing blank lines after the last event belong to no event.
		if !bytes.Equal(joined, body) && len(bytes.TrimSpace(body[len(joined):])) != 0 {
			t.Fatalf("frames do not add up to the body:\nbody   %q\nframes %q", body, joined)
		}
		if !bytes.HasPrefix(body, joined) {
			t.Fatalf("frames are not the body's bytes in order")
		}
		_ = er.Usage()
		slow, _ := read(iotest.OneByteReader(bytes.NewReader(body)))
		if len(slow) != len(whole) {
			t.Fatalf("%d events read whole, %d byte by byte", len(whole), len(slow))
		}
		for i := range whole {
			if !bytes.Equal(whole[i].Frame, slow[i].Frame) || whole[i].Type != slow[i].Type || !bytes.Equal(whole[i].Data, slow[i].Data) {
				t.Fatalf("event %d differs read whole and byte by byte", i)
			}
		}
	})
}

// FuzzParseMessages checks the Messages and count_tokens validators: no
// panic, a BadRequest (never another error) for what they refuse, and a
// model for what they accept.
func FuzzParseMessages(f *testing.F) {
	f.Add([]byte(`{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{"role":"user","content":"hi"}],"stream":true}`))
	f.Add([]byte(`{"model":"m","max_tokens":1,"messages":[],"metadata":{"user_id":"{\"session_id\":\"abc\"}"}}`))
	f.Add([]byte(`{"model":"m","max_tokens":1,"messages":[{}],"metadata":{"user_id":"user_x_account_y_session_0b6f0a9e-1f0e-4a55-9f43-4f0ad9b1c7a2"}}`))
	f.Add([]byte(`{"model":1}`))
	f.Add([]byte(`{"model":"m","messages":{},"max_tokens":"9"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"model":"m","max_tokens":1,"messages":[1],"stream":"yes"}`))
	f.Add([]byte("{\"model\":\"\xff\",\"max_tokens\":1,\"messages\":[]}"))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, parse := range []func([]byte) (Request, error){ParseMessages, ParseCountTokens} {
			r, err := parse(body)
			if err != nil {
				var bad *BadRequest
				if !errors.As(err, &bad) || bad.Msg == "" {
					t.Fatalf("error %T %v is not a BadRequest with a message", err, err)
				}
				continue
			}
			if r.Model == "" {
				t.Fatalf("accepted without a model: %q", body)
			}
			_ = r.SessionID("")
			_ = r.SessionID("some-session")
		}
		_, _ = UsageFromJSON(body)
		_, _ = ErrorFromJSON(body)
	})
}
