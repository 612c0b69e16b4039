package ingress

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestChunkEncoderIsValidJSON(t *testing.T) {
	enc := newChunkEncoder("chatcmpl-1", 1700000000, `model "quoted"`)
	texts := []string{"plain", "quote \" backslash \\ newline \n tab \t", "ctl \x01 \x1f", "é 漢字 🙂", "\u2028\u2029", "bad \xff utf8"}
	frames := [][]byte{}
	for _, s := range texts {
		frames = append(frames, enc.delta("content", s))
	}
	frames = append(frames, enc.final("stop"), enc.usage(3, 4), errorFrame("boom \"x\""))
	for i, f := range frames {
		s := string(f)
		if !strings.HasPrefix(s, "data: ") || !strings.HasSuffix(s, "\n\n") || strings.Count(s, "\n") != 2 {
			t.Fatalf("frame %d is not one SSE event: %q", i, s)
		}
		var v map[string]any
		if err := json.Unmarshal([]byte(strings.TrimSuffix(strings.TrimPrefix(s, "data: "), "\n\n")), &v); err != nil {
			t.Fatalf("frame %d: %v: %s", i, err, s)
		}
		if i < len(texts) {
			got := v["choices"].([]any)[0].(map[string]any)["delta"].(map[string]any)["content"]
			want := strings.ToValidUTF8(texts[i], "\ufffd")
			if got != want {
				t.Fatalf("frame %d: content %q, want %q", i, got, want)
			}
			_, hasRole := v["choices"].([]any)[0].(map[string]any)["delta"].(map[string]any)["role"]
			if hasRole != (i == 0) {
				t.Fatalf("frame %d: role present = %v", i, hasRole)
			}
		}
	}
}

func TestFinalChunkCarriesRoleWhenNothingCameBefore(t *testing.T) {
	enc := newChunkEncoder("id", 1, "m")
	var v struct {
		Choices []struct {
			Delta        map[string]any `json:"delta"`
			FinishReason string         `json:"finish_reason"`
		} `json:"choices"`
	}
	f := enc.final("length")
	if err := json.Unmarshal(f[len("data: "):len(f)-2], &v); err != nil {
		t.Fatal(err)
	}
	if v.Choices[0].Delta["role"] != "assistant" || v.Choices[0].FinishReason != "length" {
		t.Fatalf("final chunk %s", f)
	}
}

// BenchmarkChunkEncode is the per-event cost of writing one content delta.
func BenchmarkChunkEncode(b *testing.B) {
	enc := newChunkEncoder("chatcmpl-0123456789abcdef0123456789abcdef", 1700000000, "claude-4-sonnet-thinking")
	enc.roleSent = true
	b.ReportAllocs()
	for b.Loop() {
		_ = enc.delta("content", " some plain words of text")
	}
}

// BenchmarkChunkEncodeEscapes is a delta that needs escaping.
func BenchmarkChunkEncodeEscapes(b *testing.B) {
	enc := newChunkEncoder("chatcmpl-0123456789abcdef0123456789abcdef", 1700000000, "claude-4-sonnet-thinking")
	enc.roleSent = true
	b.ReportAllocs()
	for b.Loop() {
		_ = enc.delta("content", "a line with \"quotes\" and a newline\n and unicode é")
	}
}
