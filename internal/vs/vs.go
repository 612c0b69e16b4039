// Package vs is a client of the Vertical Studio web app (app.verticalstudio.ai)
// as the relay uses it: the three-step login, throw-away chat creation in the
// "corners" (text, image) and "models" UIs, the /api/chat request and its
// line-protocol answer, and archiving a chat afterwards.
//
// The protocol is described in reference/vertical-studio-upstream.md. The
// client holds no session of its own: every call takes the auth cookie, which
// the session worker (package session) keeps fresh and shares through Redis.
package vs

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// Corners the web app has; a chat lives in one.
const (
	CornerText  = "text"
	CornerImage = "image"
)

// Kind classifies an upstream failure, so callers can decide what to retry.
type Kind int

const (
	// KindAuth: the upstream answered 401/403; the cookie is dead.
	KindAuth Kind = iota + 1
	// KindServer: a 5xx, or a transport error (connection refused, reset,
	// a body cut short). Worth retrying with a new chat.
	KindServer
	// KindClient: any other unexpected answer (4xx, no chat id). Not retried.
	KindClient
	// KindStream: the upstream reported an error inside the stream (a "3:"
	// line). Not retried: it is usually a refusal or an exhausted credit.
	KindStream
	// KindNotReady: no session cookie is available (login pending or failed).
	KindNotReady
)

func (k Kind) String() string {
	switch k {
	case KindAuth:
		return "upstream_auth"
	case KindServer:
		return "upstream_5xx"
	case KindClient:
		return "upstream_4xx"
	case KindStream:
		return "upstream_error"
	case KindNotReady:
		return "session_not_ready"
	}
	return "upstream"
}

// Error is an upstream failure. Its message never holds a cookie.
type Error struct {
	Kind   Kind
	Op     string // what was being done, e.g. "create chat"
	Status int    // HTTP status, 0 for transport errors and stream errors
	Msg    string // a short description (for stream errors: the upstream's text)
	Err    error  // the underlying transport error, if any
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("vertical studio: ")
	b.WriteString(e.Op)
	if e.Status != 0 {
		fmt.Fprintf(&b, ": status %d", e.Status)
	}
	if e.Msg != "" {
		b.WriteString(": ")
		b.WriteString(e.Msg)
	}
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// KindOf is the kind of err when it is (or wraps) an *Error, else 0.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return 0
}

// statusError classifies an unexpected HTTP status.
func statusError(op string, status int, preview string) *Error {
	k := KindClient
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		k = KindAuth
	case status >= 500 || status == http.StatusTooManyRequests:
		k = KindServer
	}
	return &Error{Kind: k, Op: op, Status: status, Msg: preview}
}

func transportError(op string, err error) *Error {
	return &Error{Kind: KindServer, Op: op, Err: err}
}

// Options configure a Client. Zero values take the defaults in the comments.
type Options struct {
	BaseURL string       // default https://app.verticalstudio.ai
	HTTP    *http.Client // default: a client with the timeouts below and no redirects followed by itself
	// UserAgent sent on every request; default a desktop Chrome's.
	UserAgent string
	// ConnectTimeout bounds dialing and TLS; default 10s.
	ConnectTimeout time.Duration
	// StepTimeout bounds each login and chat-creation step; default 15s.
	StepTimeout time.Duration
	// HeaderTimeout bounds the wait for /api/chat response headers; default 60s.
	HeaderTimeout time.Duration
}

// Client speaks to one Vertical Studio deployment. It is safe for concurrent
// use.
type Client struct {
	base      string
	origin    string
	http      *http.Client
	ua        string
	stepLimit time.Duration
}

const defaultUA = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Safari/537.36"

// New returns a client for o.BaseURL.
func New(o Options) *Client {
	if o.BaseURL == "" {
		o.BaseURL = "https://app.verticalstudio.ai"
	}
	if o.UserAgent == "" {
		o.UserAgent = defaultUA
	}
	if o.ConnectTimeout == 0 {
		o.ConnectTimeout = 10 * time.Second
	}
	if o.StepTimeout == 0 {
		o.StepTimeout = 15 * time.Second
	}
	if o.HeaderTimeout == 0 {
		o.HeaderTimeout = 60 * time.Second
	}
	hc := o.HTTP
	if hc == nil {
		hc = newHTTPClient(o.ConnectTimeout, o.HeaderTimeout)
	}
	base := strings.TrimRight(o.BaseURL, "/")
	return &Client{base: base, origin: originOf(base), http: hc, ua: o.UserAgent, stepLimit: o.StepTimeout}
}

// BaseURL is the deployment the client talks to.
func (c *Client) BaseURL() string { return c.base }

// CloseIdle closes idle upstream connections (for shutdown).
func (c *Client) CloseIdle() { c.http.CloseIdleConnections() }
