//go:build faults

package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// buildRelay builds cmd/relay with the race detector into dir.
func buildRelay(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "relay")
	cmd := exec.Command("go", "build", "-race", "-o", bin, "../../cmd/relay")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/relay: %v\n%s", err, out)
	}
	return bin
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// syncBuffer collects a process's output across its restarts.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// replica is one relay process on a fixed port, restartable.
type replica struct {
	t    *testing.T
	name string
	bin  string
	env  []string
	addr string
	logs *syncBuffer

	// draining is what the load balancer's health check knows: set before a
	// SIGTERM, cleared once the replica answers /health again.
	draining atomic.Bool

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	starts int
}

func newReplica(t *testing.T, name, bin string, env []string) *replica {
	port := freePort(t)
	r := &replica{t: t, name: name, bin: bin, addr: "127.0.0.1:" + strconv.Itoa(port), logs: &syncBuffer{},
		env: append([]string{"PATH=" + os.Getenv("PATH"), "HOST=127.0.0.1", "PORT=" + strconv.Itoa(port),
			"LOG_FORMAT=json"}, env...)}
	t.Cleanup(func() {
		r.mu.Lock()
		cmd, done := r.cmd, r.done
		r.mu.Unlock()
		if cmd != nil {
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return r
}

// start runs the process and waits (bounded) until /health answers 200.
func (r *replica) start() {
	r.t.Helper()
	cmd := exec.Command(r.bin)
	cmd.Env = r.env
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	r.mu.Lock()
	r.starts++
	fmt.Fprintf(r.logs, "=== %s start #%d\n", r.name, r.starts)
	r.mu.Unlock()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 1<<20), 4<<20)
		for s.Scan() {
			_, _ = r.logs.Write(append(s.Bytes(), '\n'))
		}
		_, _ = io.Copy(r.logs, pr)
	}()
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("%s: start: %v", r.name, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); pw.Close(); <-copied; close(done) }()
	r.mu.Lock()
	r.cmd, r.done = cmd, done
	r.mu.Unlock()
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + r.addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case <-done:
			r.t.Fatalf("%s exited while starting:\n%s", r.name, tail(r.logs.String(), 4000))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("%s did not answer /health with 200 within 60s:\n%s", r.name, tail(r.logs.String(), 4000))
		}
	}
	r.draining.Store(false)
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *replica) kill() {
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	fmt.Fprintf(r.logs, "=== %s SIGKILL\n", r.name)
}

// term takes the replica out of the balancer, sends SIGTERM, and waits
// (bounded) for a clean exit: open streams drained, jobs handed back, usage
// flushed.
func (r *replica) term() {
	r.t.Helper()
	r.draining.Store(true)
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		r.t.Fatalf("%s did not exit within 90s of SIGTERM:\n%s", r.name, tail(r.logs.String(), 4000))
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		r.t.Errorf("%s exited with status %d after SIGTERM", r.name, code)
	}
	fmt.Fprintf(r.logs, "=== %s stopped by SIGTERM\n", r.name)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// balancer is the load balancer in front of the replicas, at the connection
// level: each request gets a new connection to the next replica in turn
// that is not draining; a refused connection (a killed replica) moves on to
// the next one, as a load balancer retries a connect failure.
type balancer struct {
	replicas []*replica
	next     atomic.Uint64
	refused  atomic.Int64
	dialer   net.Dialer
}

func (b *balancer) DialContext(ctx context.Context, network, _ string) (net.Conn, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		n := len(b.replicas)
		first := int(b.next.Add(1))
		for i := 0; i < n; i++ {
			r := b.replicas[(first+i)%n]
			if r.draining.Load() {
				continue
			}
			c, err := b.dialer.DialContext(ctx, network, r.addr)
			if err == nil {
				return c, nil
			}
			b.refused.Add(1)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, errors.New("balancer: no replica accepted a connection for 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (b *balancer) replicaAt(addr string) string {
	for _, r := range b.replicas {
		if r.addr == addr {
			return r.name
		}
	}
	return "?"
}

// client sends requests through the balancer, one connection per request.
func (b *balancer) client() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: b.DialContext, DisableKeepAlives: true,
		DisableCompression: true, ResponseHeaderTimeout: 2 * time.Minute}}
}
