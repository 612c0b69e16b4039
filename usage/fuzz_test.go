package usage

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// FuzzDecodeEvent: any stream entry decodes to a countable event or an
// error that marks it malformed (so the pool dead-letters it instead of
// retrying forever); a decoded event encodes and decodes back to itself.
func FuzzDecodeEvent(f *testing.F) {
	ev := Event{ID: "0b6f0a9e-1f0e-4a55-9f43-4f0ad9b1c7a2", RequestID: "r1", Time: time.Date(2025, 1, 2, 3, 4, 5, 6, time.UTC),
		KeyID: "k1", AccountID: "a1", Service: ServiceClaude, Model: "claude-sonnet-4-5", UpstreamModel: "claude-sonnet-4-5-20250929",
		InputTokens: 25, OutputTokens: 11, CacheCreateTokens: 12, CacheReadTokens: 340, Estimated: true, Images: 1,
		ImageSize: "1024x1024", LatencyMs: 12, TTFBMs: 3, Status: 200, ErrorClass: "client_gone", TokenWindowSec: 3600}
	f.Add(ev.AppendJSON(nil))
	f.Add([]byte(`{"id":"x","time":"2025-01-02T03:04:05Z","input_tokens":-1}`))
	f.Add([]byte(`{"id":"x","time":"0001-01-01T00:00:00Z"}`))
	f.Add([]byte(`{"id":"x","time":"2025-01-02T03:04:05Z","model":"\u2028\ud800","status":1e3}`))
	f.Add([]byte(`null`))
	f.Add([]byte("{\"id\":\"\xff\",\"time\":\"2025-01-02T03:04:05+14:00\"}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := DecodeEvent(data)
		if err != nil {
			if !errors.Is(err, errMalformed) {
				t.Fatalf("error %v does not wrap errMalformed", err)
			}
			return
		}
		if ev.Total() < 0 {
			t.Fatalf("negative total %d", ev.Total())
		}
		again, err := DecodeEvent(ev.AppendJSON(nil))
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v\n%s", err, ev.AppendJSON(nil))
		}
		if !again.Time.Equal(ev.Time) {
			t.Fatalf("time %v became %v", ev.Time, again.Time)
		}
		again.Time = ev.Time
		if !reflect.DeepEqual(again, ev) {
			t.Fatalf("round trip changed the event:\n%+v\n%+v", ev, again)
		}
	})
}
