package ingress_test

import (
	"bufio"
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/vs"
)

// BenchmarkStreamOverhead compares a streamed answer read directly from the
// fake upstream (chat creation and /api/chat, as the relay does it) with the
// same answer read through the relay as OpenAI SSE. The fake paces its lines
// 2ms apart. Reported: time to the first text byte and the gaps between
// text events, in microseconds, for both paths.
func BenchmarkStreamOverhead(b *testing.B) {
	r := newVSRigB(b, fakevs.Options{Delay: 2 * time.Millisecond})
	in := r.relay()
	direct := vs.New(vs.Options{BaseURL: r.fakeU})
	ck, err := in.session.Cookie(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	body := `{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	var dTTFB, rTTFB, dChatTTFB, dGaps, rGaps []time.Duration
	b.ResetTimer()
	for b.Loop() {
		// Directly from the fake.
		start := time.Now()
		id, err := direct.NewChat(context.Background(), ck.Value, vs.CornerText)
		if err != nil {
			b.Fatal(err)
		}
		chatStart := time.Now()
		st, err := direct.Chat(context.Background(), ck.Value, vs.ChatRequest{ChatID: id, Corner: vs.CornerText,
			Content: "Human: hi\n\nAssistant:", Settings: vs.TextSettings{ModelID: "gpt-4o"}})
		if err != nil {
			b.Fatal(err)
		}
		var last time.Time
		for {
			p, err := st.Next()
			if err != nil || p.Type == vs.PartFinish {
				break
			}
			if p.Type != vs.PartText {
				continue
			}
			now := time.Now()
			if last.IsZero() {
				dTTFB = append(dTTFB, now.Sub(start))
				dChatTTFB = append(dChatTTFB, now.Sub(chatStart))
			} else {
				dGaps = append(dGaps, now.Sub(last))
			}
			last = now
		}
		st.Close()

		// Through the relay.
		start = time.Now()
		req, _ := http.NewRequest(http.MethodPost, in.url+"/v1/chat/completions", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+r.key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		sc := bufio.NewScanner(resp.Body)
		last = time.Time{}
		for sc.Scan() {
			line := sc.Text()
			if !strings.HasPrefix(line, "data: {") || !strings.Contains(line, `"content":`) {
				continue
			}
			now := time.Now()
			if last.IsZero() {
				rTTFB = append(rTTFB, now.Sub(start))
			} else {
				rGaps = append(rGaps, now.Sub(last))
			}
			last = now
		}
		resp.Body.Close()
	}
	b.StopTimer()
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	pct := func(ds []time.Duration, p float64) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[int(float64(len(s)-1)*p)]
	}
	b.ReportMetric(us(pct(dTTFB, .5)), "direct-ttfb-p50-µs")
	b.ReportMetric(us(pct(dChatTTFB, .5)), "direct-chatonly-ttfb-p50-µs")
	b.ReportMetric(us(pct(rTTFB, .5)), "relay-ttfb-p50-µs")
	b.ReportMetric(us(pct(dTTFB, .99)), "direct-ttfb-p99-µs")
	b.ReportMetric(us(pct(rTTFB, .99)), "relay-ttfb-p99-µs")
	b.ReportMetric(us(pct(dGaps, .5)), "direct-gap-p50-µs")
	b.ReportMetric(us(pct(rGaps, .5)), "relay-gap-p50-µs")
	b.ReportMetric(us(pct(dGaps, .99)), "direct-gap-p99-µs")
	b.ReportMetric(us(pct(rGaps, .99)), "relay-gap-p99-µs")
}
