package ingress

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/gofiber/fiber/v2"
)

// heartbeatFrame is an SSE comment line. It has no blank line after it: some
// client decoders dispatch an empty event on a blank line and give up.
var heartbeatFrame = []byte(": keep-alive\n")

// eventStream is the body of a streaming (SSE) response.
//
// A pump goroutine owned by the handler sends complete frames with Send;
// fasthttp reads the body with Read, one frame per Read, and writes and
// flushes each as its own HTTP chunk, so no two upstream events are merged
// and none waits for the next. During silence Read returns a heartbeat
// comment, which makes fasthttp write to the socket: that write is the only
// way to learn that the client has gone. When a write fails (or the response
// is complete) fasthttp calls Close, and Gone is closed, which tells the pump
// to cancel its upstream request.
type eventStream struct {
	frames    chan []byte
	gone      chan struct{}
	heartbeat time.Duration
	timer     *time.Timer // reused by Read for the heartbeat
	pending   []byte

	closeOnce sync.Once
	endOnce   sync.Once
	firstByte chan struct{}
	firstOnce sync.Once
	ttfb      time.Time
}

func newEventStream(heartbeat time.Duration) *eventStream {
	return &eventStream{
		frames:    make(chan []byte, 8),
		gone:      make(chan struct{}),
		heartbeat: heartbeat,
		firstByte: make(chan struct{}),
	}
}

// startSSE sets the SSE response headers and makes st the response body. The
// caller must have connected upstream first, so that an upstream failure can
// still be answered with a real status and error body.
func startSSE(c *fiber.Ctx, st *eventStream) {
	c.Set(fiber.HeaderContentType, "text/event-stream; charset=utf-8")
	c.Set(fiber.HeaderCacheControl, "no-cache")
	c.Set("X-Accel-Buffering", "no") // tell nginx-style proxies not to buffer
	c.Status(fiber.StatusOK)
	c.Context().SetBodyStream(st, -1)
}

// Send queues one complete frame. It returns false once the client is gone,
// and the pump should then stop and cancel its upstream request. Frames are
// not copied: the caller must not modify a frame after sending it.
func (st *eventStream) Send(frame []byte) bool {
	select {
	case <-st.gone:
		return false
	default:
	}
	select {
	case st.frames <- frame:
		return true
	case <-st.gone:
		return false
	}
}

// End says the pump has sent its last frame. The response ends once fasthttp
// has written everything before it.
func (st *eventStream) End() {
	st.endOnce.Do(func() { close(st.frames) })
}

// Gone is closed when the response is over: written in full, or cut off
// because a write to the client failed.
func (st *eventStream) Gone() <-chan struct{} { return st.gone }

// Left reports whether the client has gone (or the response is complete).
func (st *eventStream) Left() bool {
	select {
	case <-st.gone:
		return true
	default:
		return false
	}
}

// CancelOnGone cancels the pump's upstream request as soon as the client
// leaves, until the returned stop is called (when the pump ends).
func (st *eventStream) CancelOnGone(cancel context.CancelFunc) (stop func()) {
	done := make(chan struct{})
	go func() {
		select {
		case <-st.gone:
			cancel()
		case <-done:
		}
	}()
	return func() { close(done) }
}

// FirstByte returns when the first frame was handed to the writer; zero if
// none was.
func (st *eventStream) FirstByte() time.Time {
	select {
	case <-st.firstByte:
		return st.ttfb
	default:
		return time.Time{}
	}
}

// Read gives fasthttp the next frame, or a heartbeat after a silence.
func (st *eventStream) Read(p []byte) (int, error) {
	if len(st.pending) == 0 {
		var timer <-chan time.Time
		if st.heartbeat > 0 {
			if st.timer == nil {
				st.timer = time.NewTimer(st.heartbeat)
			} else {
				st.timer.Reset(st.heartbeat) // Go 1.23+: Reset discards a stale tick
			}
			defer st.timer.Stop()
			timer = st.timer.C
		}
		select {
		case f, ok := <-st.frames:
			if !ok {
				return 0, io.EOF
			}
			st.firstOnce.Do(func() { st.ttfb = time.Now(); close(st.firstByte) })
			st.pending = f
		case <-timer:
			st.pending = heartbeatFrame
		case <-st.gone:
			return 0, io.EOF
		}
	}
	n := copy(p, st.pending)
	st.pending = st.pending[n:]
	return n, nil
}

// Close is called by fasthttp when the response is over or a write failed.
func (st *eventStream) Close() error {
	st.closeOnce.Do(func() { close(st.gone) })
	return nil
}
