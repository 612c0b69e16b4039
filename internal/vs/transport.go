package vs

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/andybalholm/brotli"
)

// acceptEncoding is what the original proxy advertised. Setting it ourselves
// turns off net/http's transparent gzip, so every body is decoded here
// (decodeBody), brotli included.
const acceptEncoding = "gzip, deflate, br"

func newHTTPClient(connect, header time.Duration) *http.Client {
	dialer := &net.Dialer{Timeout: connect, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          512,
		MaxIdleConnsPerHost:   2048, // one upstream host carries every request: keep connections, don't churn them
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   connect,
		ResponseHeaderTimeout: header,
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true,
	}
	return &http.Client{
		Transport: tr,
		// Redirects are followed only where a step asks for it (see do).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func originOf(base string) string {
	u, err := url.Parse(base)
	if err != nil {
		return base
	}
	return u.Scheme + "://" + u.Host
}

// setBase sets the browser-like headers every upstream request carries.
func (c *Client) setBase(h http.Header, cookie string) {
	h.Set("Accept", "*/*")
	h.Set("Accept-Encoding", acceptEncoding)
	h.Set("Accept-Language", "zh-CN,zh;q=0.9")
	h.Set("Cache-Control", "no-cache")
	h.Set("Origin", c.origin)
	h.Set("Sec-Fetch-Dest", "empty")
	h.Set("Sec-Fetch-Mode", "cors")
	h.Set("Sec-Fetch-Site", "same-origin")
	h.Set("User-Agent", c.ua)
	if cookie != "" {
		h.Set("Cookie", cookie)
	}
}

// request describes one upstream call.
type request struct {
	op      string
	method  string
	path    string // under the base URL, with its query
	cookie  string
	form    url.Values // sent as application/x-www-form-urlencoded
	json    []byte     // sent as application/json
	referer string
	follow  bool         // follow redirects (up to 10)
	client  *http.Client // overrides c.http (login uses one with a cookie jar)
}

// do sends r and returns the response with its body decoded. The caller
// closes the body.
func (c *Client) do(ctx context.Context, r request) (*http.Response, error) {
	var body io.Reader
	var ctype string
	switch {
	case r.form != nil:
		body = strings.NewReader(r.form.Encode())
		ctype = "application/x-www-form-urlencoded;charset=UTF-8"
	case r.json != nil:
		body = bytes.NewReader(r.json)
		ctype = "application/json"
	}
	hc := r.client
	if hc == nil {
		hc = c.http
	}
	target := c.base + r.path
	for hops := 0; ; hops++ {
		req, err := http.NewRequestWithContext(ctx, r.method, target, body)
		if err != nil {
			return nil, &Error{Kind: KindClient, Op: r.op, Err: err}
		}
		c.setBase(req.Header, r.cookie)
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		if r.referer != "" {
			req.Header.Set("Referer", r.referer)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, transportError(r.op, err)
		}
		if r.follow && isRedirect(resp.StatusCode) && resp.Header.Get("Location") != "" && hops < 10 {
			next, err := req.URL.Parse(resp.Header.Get("Location"))
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if err != nil {
				return nil, &Error{Kind: KindClient, Op: r.op, Msg: "bad redirect"}
			}
			target = next.String()
			if resp.StatusCode != http.StatusTemporaryRedirect && resp.StatusCode != http.StatusPermanentRedirect {
				r.method, body, ctype = http.MethodGet, nil, ""
			} else if r.form != nil {
				body = strings.NewReader(r.form.Encode())
			} else if r.json != nil {
				body = bytes.NewReader(r.json)
			}
			continue
		}
		if err := decodeBody(resp); err != nil {
			resp.Body.Close()
			return nil, &Error{Kind: KindServer, Op: r.op, Status: resp.StatusCode, Err: err}
		}
		return resp, nil
	}
}

func isRedirect(status int) bool {
	switch status {
	case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
		http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		return true
	}
	return false
}

// decodeBody replaces resp.Body with a reader of the decoded bytes when the
// upstream compressed it (br, gzip or deflate). Decoding is streaming: each
// flushed piece of a compressed stream is readable as soon as it arrives, and
// nothing is read before the caller's first Read (a gzip header may arrive
// only with the first flushed line).
func decodeBody(resp *http.Response) error {
	enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding")))
	if enc == "" || enc == "identity" {
		return nil
	}
	raw := resp.Body
	d := &decodedBody{raw: raw}
	switch enc {
	case "br":
		d.r = brotli.NewReader(raw)
	case "gzip", "x-gzip":
		d.open = func() (io.Reader, error) {
			zr, err := gzip.NewReader(raw)
			if err != nil {
				return nil, err
			}
			zr.Multistream(false)
			return zr, nil
		}
	case "deflate": // zlib-wrapped, per RFC 9110
		d.open = func() (io.Reader, error) { return zlib.NewReader(raw) }
	default:
		return fmt.Errorf("unsupported Content-Encoding %q", enc)
	}
	resp.Body = d
	resp.Header.Del("Content-Encoding")
	resp.Header.Del("Content-Length")
	resp.ContentLength = -1
	resp.Uncompressed = true
	return nil
}

type decodedBody struct {
	r    io.Reader
	open func() (io.Reader, error)
	raw  io.ReadCloser
}

func (d *decodedBody) Read(p []byte) (int, error) {
	if d.r == nil {
		r, err := d.open()
		if err != nil {
			if err == io.EOF {
				return 0, io.EOF // an empty body
			}
			return 0, fmt.Errorf("decode body: %w", err)
		}
		d.r = r
	}
	return d.r.Read(p)
}

func (d *decodedBody) Close() error { return d.raw.Close() }

// readSmall reads up to limit bytes of a body (for chat ids and previews).
func readSmall(body io.Reader, limit int64) ([]byte, error) {
	return io.ReadAll(io.LimitReader(body, limit))
}

// preview is the start of a body, for error messages.
func preview(b []byte) string {
	const n = 200
	s := strings.TrimSpace(string(b))
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}
