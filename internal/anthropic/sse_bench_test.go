package anthropic

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// BenchmarkEventReader reads a whole stream (7 events) per iteration:
// splitting, copying each frame and reading usage on the side.
func BenchmarkEventReader(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		er := NewEventReader(strings.NewReader(stream))
		for {
			if _, err := er.Next(); errors.Is(err, io.EOF) {
				break
			} else if err != nil {
				b.Fatal(err)
			}
		}
	}
}
