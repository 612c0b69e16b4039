package ingress

import (
	"io"
	"testing"
	"time"
)

// BenchmarkEventStreamSendRead is the relay's SSE writing: a pump goroutine
// sends complete frames (a typical ~200-byte content_block_delta) and the
// reader takes them one per Read into a 4 KB buffer, as fasthttp's chunked
// body writer does. It measures the per-event cost of the hand-off.
func BenchmarkEventStreamSendRead(b *testing.B) {
	frame := []byte("event: content_block_delta\n" +
		`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod"}}` +
		"\n\n")
	st := newEventStream(5 * time.Second)
	go func() {
		for i := 0; i < b.N; i++ {
			if !st.Send(frame) {
				return
			}
		}
		st.End()
	}()
	buf := make([]byte, 4096)
	b.SetBytes(int64(len(frame)))
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for {
		_, err := st.Read(buf)
		if err == io.EOF {
			break
		}
		n++
	}
	b.StopTimer()
	_ = st.Close()
	if n != b.N {
		b.Fatalf("read %d frames of %d", n, b.N)
	}
}
