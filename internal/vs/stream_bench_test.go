package vs_test

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/relaydev/relay/internal/vs"
)

// BenchmarkStreamParse parses a typical answer: a start line, reasoning and
// text deltas (some with escapes), and the finish lines.
func BenchmarkStreamParse(b *testing.B) {
	var body strings.Builder
	body.WriteString(`f:{"messageId":"msg-abc"}` + "\n")
	for i := 0; i < 20; i++ {
		body.WriteString(`g:"Thinking about the question, step by step."` + "\n")
	}
	for i := 0; i < 100; i++ {
		if i%10 == 0 {
			body.WriteString(`0:"a line with \"quotes\" and a newline\n"` + "\n")
		} else {
			body.WriteString(`0:" some plain words of text"` + "\n")
		}
	}
	body.WriteString(`e:{"finishReason":"stop","usage":{"promptTokens":10,"completionTokens":200},"isContinued":false}` + "\n")
	body.WriteString(`d:{"finishReason":"stop","usage":{"promptTokens":10,"completionTokens":200}}` + "\n")
	data := []byte(body.String())
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		st := vs.NewStream(io.NopCloser(bytes.NewReader(data)))
		n := 0
		for {
			_, err := st.Next()
			if err != nil {
				break
			}
			n++
		}
		if n != 122 {
			b.Fatalf("parsed %d parts", n)
		}
	}
}

// BenchmarkParseLine is one plain text delta.
func BenchmarkParseLine(b *testing.B) {
	line := []byte(`0:" some plain words of text"`)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := vs.ParseLine(line); !ok || err != nil {
			b.Fatal(err)
		}
	}
}
