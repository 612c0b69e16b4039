package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/valyala/fasthttp"

	"github.com/relaydev/relay/internal/loadtest"
)

// target is where a scenario sends its requests: the fake directly, or the
// relay's Anthropic route (a pure pass-through) in front of it.
type target struct {
	name string // "direct" or "relay"
	url  string // full URL of the Messages endpoint
	key  string // x-api-key
}

var seq atomic.Int64

// chatBody is a ~200-byte Messages request, unique per request (index and
// time in the prompt) so nothing could be answered from a cache.
func chatBody(n int64, stream bool) []byte {
	b := make([]byte, 0, 256)
	b = append(b, `{"model":"claude-sonnet-4-5","max_tokens":256,`...)
	if stream {
		b = append(b, `"stream":true,`...)
	}
	b = append(b, `"messages":[{"role":"user","content":"request `...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, ` at `...)
	b = strconv.AppendInt(b, time.Now().UnixNano(), 10)
	b = append(b, `: please answer with a short friendly greeting and nothing else."}]}`...)
	return b
}

// fastClient sends non-streaming requests. fasthttp keeps the load
// generator's own CPU cost low, which matters when it shares two cores with
// the relay, the fake and Redis; both targets use the same client.
type fastClient struct {
	c *fasthttp.Client
}

func newFastClient() *fastClient {
	return &fastClient{c: &fasthttp.Client{
		MaxConnsPerHost:               20_000,
		MaxIdleConnDuration:           time.Minute,
		ReadTimeout:                   30 * time.Second,
		WriteTimeout:                  30 * time.Second,
		NoDefaultUserAgentHeader:      true,
		DisableHeaderNamesNormalizing: true,
		Dial: func(addr string) (net.Conn, error) {
			return fasthttp.DialTimeout(addr, 5*time.Second)
		},
	}}
}

// do sends one non-streaming request and checks for a 200 with a body.
func (fc *fastClient) do(t target) error {
	req := fasthttp.AcquireRequest()
	resp := fasthttp.AcquireResponse()
	defer fasthttp.ReleaseRequest(req)
	defer fasthttp.ReleaseResponse(resp)
	req.SetRequestURI(t.url)
	req.Header.SetMethod(fasthttp.MethodPost)
	req.Header.SetContentType("application/json")
	req.Header.Set("x-api-key", t.key)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.SetBodyRaw(chatBody(seq.Add(1), false))
	if err := fc.c.DoTimeout(req, resp, 30*time.Second); err != nil {
		return err
	}
	if resp.StatusCode() != 200 || len(resp.Body()) == 0 {
		return fmt.Errorf("status %d: %.200s", resp.StatusCode(), resp.Body())
	}
	return nil
}

// streamClient sends streaming requests with net/http, which hands the body
// over as it arrives.
type streamClient struct {
	c *http.Client
}

func newStreamClient() *streamClient {
	tr := &http.Transport{
		MaxIdleConns: 20_000, MaxIdleConnsPerHost: 20_000, IdleConnTimeout: time.Minute,
		DisableCompression: true, ResponseHeaderTimeout: 30 * time.Second,
		DialContext: (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
	}
	return &streamClient{c: &http.Client{Transport: tr}}
}

// stream sends one streaming request due at due and reads its events.
// onFirst, if set, is called once the first event arrived.
func (sc *streamClient) stream(ctx context.Context, t target, due time.Time, onFirst func()) (loadtest.StreamTiming, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(chatBody(seq.Add(1), true)))
	if err != nil {
		return loadtest.StreamTiming{Start: due}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("x-api-key", t.key)
	req.Header.Set("anthropic-version", "2023-06-01")
	resp, err := sc.c.Do(req)
	if err != nil {
		return loadtest.StreamTiming{Start: due}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return loadtest.StreamTiming{Start: due}, fmt.Errorf("status %d", resp.StatusCode)
	}
	body := &firstNotifier{r: resp.Body, f: onFirst}
	return loadtest.ReadSSE(body, due)
}

// firstNotifier calls f once, when the first bytes of the body arrived.
type firstNotifier struct {
	r io.Reader
	f func()
}

func (fn *firstNotifier) Read(p []byte) (int, error) {
	n, err := fn.r.Read(p)
	if n > 0 && fn.f != nil {
		fn.f()
		fn.f = nil
	}
	return n, err
}
