package usage

import (
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func sampleEvents() []Event {
	t := time.Date(2025, 3, 31, 23, 59, 59, 123456789, time.UTC)
	return []Event{
		{},
		{ID: "e1", RequestID: "r1", Time: t, KeyID: "k1", Service: ServiceClaude, Model: "claude-sonnet-4",
			InputTokens: 10, OutputTokens: 20, LatencyMs: 5, Status: 200},
		{ID: "e2", RequestID: "r2", Time: t.In(time.FixedZone("x", 3600)), KeyID: "k\"2\\<&>", AccountID: "acc",
			Service: ServiceOpenAI, Model: "gpt-4o\n", UpstreamModel: "gpt-4o-2024", InputTokens: 1, OutputTokens: 2,
			CacheCreateTokens: 3, CacheReadTokens: 4, Estimated: true, Images: 2, ImageSize: "1024x1024",
			LatencyMs: 99, TTFBMs: 7, Status: 502, ErrorClass: "upstream_5xx", TokenWindowSec: 3600},
		{ID: "é-ünïcødé-\u2028", Time: t, KeyID: "\xff\xfe bad utf8", Model: "模型", Status: 200},
	}
}

// AppendJSON must produce exactly what encoding/json produces, so either can
// read the other.
func TestAppendJSONMatchesEncodingJSON(t *testing.T) {
	for _, ev := range sampleEvents() {
		want, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		got := ev.AppendJSON(nil)
		if string(got) != string(want) {
			t.Errorf("AppendJSON:\n got %s\nwant %s", got, want)
		}
	}
}

func TestDecodeEventRoundTrip(t *testing.T) {
	for _, ev := range sampleEvents()[1:] {
		got, err := DecodeEvent(ev.AppendJSON(nil))
		if err != nil {
			t.Fatalf("%s: %v", ev.ID, err)
		}
		want := ev
		var w Event
		b, _ := json.Marshal(want)
		_ = json.Unmarshal(b, &w) // what encoding/json itself recovers (e.g. invalid UTF-8 replaced)
		if !got.Time.Equal(w.Time) {
			t.Errorf("time %v, want %v", got.Time, w.Time)
		}
		got.Time, w.Time = time.Time{}, time.Time{}
		if got != w {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, w)
		}
	}
}

func TestDecodeEventRejectsMalformed(t *testing.T) {
	for name, in := range map[string]string{
		"not json":        `{"id":`,
		"no id":           `{"time":"2025-01-01T00:00:00Z","key_id":"k"}`,
		"no time":         `{"id":"x","key_id":"k"}`,
		"negative tokens": `{"id":"x","time":"2025-01-01T00:00:00Z","input_tokens":-1}`,
		"wrong type":      `{"id":"x","time":"2025-01-01T00:00:00Z","input_tokens":"12"}`,
	} {
		if _, err := DecodeEvent([]byte(in)); !errors.Is(err, errMalformed) {
			t.Errorf("%s: err = %v, want malformed", name, err)
		}
	}
}

func BenchmarkEncodeEvent(b *testing.B) {
	ev := sampleEvents()[2]
	ev.KeyID, ev.ID = "key_0123456789", "6f1c1d0e-7a0c-4c1e-9a55-1b2c3d4e5f60"
	buf := make([]byte, 0, 512)
	b.ReportAllocs()
	for b.Loop() {
		buf = ev.AppendJSON(buf[:0])
	}
}

func BenchmarkEncodeEventEncodingJSON(b *testing.B) {
	ev := sampleEvents()[2]
	ev.KeyID, ev.ID = "key_0123456789", "6f1c1d0e-7a0c-4c1e-9a55-1b2c3d4e5f60"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := json.Marshal(ev); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	ev := sampleEvents()[2]
	data := ev.AppendJSON(nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeEvent(data); err != nil {
			b.Fatal(err)
		}
	}
}
