package vs

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
)

// FuzzParseLine: any line parses without a panic into a known part, an
// ignored line, or a KindServer error; text parts are valid UTF-8 when the
// line was.
func FuzzParseLine(f *testing.F) {
	for _, s := range []string{
		`0:"Hello"`, `g:"thinking \"hard\""`, `3:"An error occurred."`, `e:{"finishReason":"stop","usage":{"promptTokens":11,"completionTokens":7},"isContinued":false}`,
		`d:{"finishReason":"stop","usage":{"promptTokens":1,"completionTokens":2}}`, `2:[{"type":"image","url":"http://x/y.png"}]`,
		`k:{"mimeType":"image/png","data":"iVBORw0KGgo="}`, `f:{"messageId":"m"}`, `8:[{}]`, ` 0:"x" `, `0:`, `0:"\u00`, `d:null`,
		`e:{"usage":{"promptTokens":-1}}`, `0:"\ud800"`, "0:\"\xff\"", `:`, `0`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		p, ok, err := ParseLine(line)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Kind != KindServer {
				t.Fatalf("error %v is not a KindServer *Error", err)
			}
			if ok {
				t.Fatal("ok with an error")
			}
			return
		}
		if !ok {
			return
		}
		switch p.Type {
		case PartText, PartReasoning, PartError:
			if utf8.Valid(line) && !utf8.ValidString(p.Text) {
				t.Fatalf("valid line %q gave invalid text %q", line, p.Text)
			}
		case PartFinish, PartFinishStep:
			if p.Finish == nil {
				t.Fatal("finish part without Finish")
			}
		case PartData, PartFile:
			if len(p.Raw) == 0 {
				t.Fatal("data part without payload")
			}
		default:
			t.Fatalf("unknown part type %q accepted", p.Type)
		}
	})
}

// FuzzStream: a body read whole or a byte at a time gives the same parts,
// and every line of it is either returned, skipped, or ends the stream with
// an error; never a panic or an endless loop.
func FuzzStream(f *testing.F) {
	f.Add([]byte("g:\"hm\"\n0:\"Hello\"\n0:\", world\"\ne:{\"finishReason\":\"stop\",\"usage\":{\"promptTokens\":11,\"completionTokens\":7}}\nd:{\"finishReason\":\"stop\",\"usage\":{\"promptTokens\":11,\"completionTokens\":7}}\n"))
	f.Add([]byte("0:\"a\"\r\n3:\"boom\"\r\n"))
	f.Add([]byte("0:\"no newline at the end\""))
	f.Add([]byte("\n\n\nf:{}\n0:broken\n"))
	f.Fuzz(func(t *testing.T, body []byte) {
		read := func(r io.Reader) ([]Part, error) {
			st := NewStream(io.NopCloser(r))
			defer st.Close()
			var parts []Part
			for i := 0; i <= len(body)+1; i++ {
				p, err := st.Next()
				if err != nil {
					return parts, err
				}
				parts = append(parts, p)
			}
			t.Fatalf("more parts than bytes in %q", body)
			return nil, nil
		}
		whole, errW := read(bytes.NewReader(body))
		slow, errS := read(iotest.OneByteReader(bytes.NewReader(body)))
		if (errW == io.EOF) != (errS == io.EOF) || len(whole) != len(slow) {
			t.Fatalf("whole: %d parts, %v; byte by byte: %d parts, %v", len(whole), errW, len(slow), errS)
		}
		if errW != io.EOF {
			var e *Error
			if !errors.As(errW, &e) || e.Kind != KindServer {
				t.Fatalf("stream error %v is not a KindServer *Error", errW)
			}
		}
		for i := range whole {
			if whole[i].Type != slow[i].Type || whole[i].Text != slow[i].Text || !bytes.Equal(whole[i].Raw, slow[i].Raw) {
				t.Fatalf("part %d differs read whole and byte by byte", i)
			}
		}
	})
}

// FuzzBuildPrompt: the transcript always ends asking the assistant, keeps
// the newest turn, and stays within the history cap plus that turn.
func FuzzBuildPrompt(f *testing.F) {
	f.Add("system", "be brief", "user", "hello", "assistant", "hi there", 100)
	f.Add("developer", "", "human", "  \n ", "tool", "x", 0)
	f.Add("user", "a\x00b", "ai", "\xff\xfe", "user", strings.Repeat("long ", 50), 10)
	f.Fuzz(func(t *testing.T, r1, c1, r2, c2, r3, c3 string, history int) {
		if history < 0 {
			history = -history
		}
		msgs := []Message{{r1, c1}, {r2, c2}, {r3, c3}}
		system, prompt := BuildPrompt(msgs, history)
		if !strings.HasSuffix(prompt, "Assistant:") {
			t.Fatalf("prompt does not end with the assistant's turn: %q", prompt)
		}
		for i := len(msgs) - 1; i >= 0; i-- {
			m := msgs[i]
			text := strings.TrimSpace(m.Content)
			if text == "" {
				continue
			}
			if m.Role == "user" || m.Role == "human" || m.Role == "assistant" || m.Role == "ai" {
				if !strings.Contains(prompt, text) {
					t.Fatalf("the newest turn %q is missing from %q", text, prompt)
				}
				break
			}
		}
		for _, m := range msgs {
			if (m.Role == "system" || m.Role == "developer") && strings.TrimSpace(m.Content) != "" &&
				!strings.Contains(system, strings.TrimSpace(m.Content)) {
				t.Fatalf("system message %q missing from %q", m.Content, system)
			}
		}
	})
}

// FuzzChatIDFrom: any redirect target or body gives an id or nothing,
// without a panic, and an id never holds a slash or a space.
func FuzzChatIDFrom(f *testing.F) {
	f.Add("/text/cabcdefghijklmnopqrstu", []byte(nil))
	f.Add("", []byte(`["/models/x/cabcdefghijklmnopqrstuvwx",{"a":1}]`))
	f.Add("", []byte(`cabcdefghijklmnopqrstuv`))
	f.Add("https://x/../text/c1?x", []byte("<html>/text/cfffffffffffffffffffff</html>"))
	f.Fuzz(func(t *testing.T, location string, body []byte) {
		id := ChatIDFrom(location, body)
		if strings.ContainsAny(id, "/ \t\r\n?#") {
			t.Fatalf("chat id %q from %q / %q", id, location, body)
		}
	})
}
