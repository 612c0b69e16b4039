// Package testredis gives tests a real Redis.
//
// A test package calls Main from TestMain; it starts one redis-server on a
// free port for the package (or uses REDIS_TEST_URL), and stops it when the
// tests end. Each test then calls New for a client and a key prefix of its
// own, so tests never see each other's keys. Only where no redis-server
// binary exists, and RELAY_TEST_REQUIRE_REDIS is unset, does it fall back to
// the embedded miniredis; CI sets that variable, so CI always runs on Redis.
// RELAY_TEST_MINIREDIS=1 forces that fallback, to see what a machine without
// redis-server would.
//
// Tests that restart or stop Redis start a Server of their own.
package testredis

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

var (
	shared     string // address of the package's Redis
	sharedKind string // "redis-server", "REDIS_TEST_URL" or "miniredis"
	counter    atomic.Int64
)

// Main starts the package's Redis, runs the tests and stops it. Use it as
//
//	func TestMain(m *testing.M) { testredis.Main(m) }
func Main(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testredis:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func run(m *testing.M) (int, error) {
	if u := os.Getenv("REDIS_TEST_URL"); u != "" {
		opt, err := redis.ParseURL(u)
		if err != nil {
			return 0, fmt.Errorf("REDIS_TEST_URL: %w", err)
		}
		shared, sharedKind = opt.Addr, "REDIS_TEST_URL"
		return m.Run(), nil
	}
	if _, err := lookRedisServer(); err != nil {
		if os.Getenv("RELAY_TEST_REQUIRE_REDIS") != "" {
			return 0, fmt.Errorf("RELAY_TEST_REQUIRE_REDIS is set but no redis-server is on PATH")
		}
		fmt.Fprintln(os.Stderr, "testredis: no redis-server on PATH; falling back to the embedded miniredis")
		mr := miniredis.NewMiniRedis()
		if err := mr.Start(); err != nil {
			return 0, err
		}
		defer mr.Close()
		stop := make(chan struct{})
		defer close(stop)
		go fastForward(mr, stop)
		shared, sharedKind = mr.Addr(), "miniredis"
		return m.Run(), nil
	}
	dir, err := os.MkdirTemp("", "testredis")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	s, err := startServer(dir, 0, false)
	if err != nil {
		return 0, err
	}
	defer s.kill()
	shared, sharedKind = s.Addr, "redis-server"
	return m.Run(), nil
}

func fastForward(mr *miniredis.Miniredis, stop chan struct{}) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			mr.FastForward(now.Sub(last))
			last = now
		}
	}
}

// Env is one test's view of the package's Redis.
type Env struct {
	Client *redis.Client
	Addr   string // host:port
	URL    string // redis://host:port/0
	Prefix string // a key prefix no other test uses
	Kind   string // what serves it: redis-server, REDIS_TEST_URL or miniredis
}

// New returns a client of the package's Redis and a fresh key prefix. The
// client is closed and the test's keys are deleted when the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	if shared == "" {
		t.Fatal("testredis: call testredis.Main from the package's TestMain")
	}
	prefix := fmt.Sprintf("t%d%d:", os.Getpid()%100000, counter.Add(1))
	c := NewClient(shared)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, prefix+"*", 1000).Result()
			if err != nil {
				break
			}
			if len(keys) > 0 {
				c.Unlink(ctx, keys...)
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
		c.Close()
	})
	return &Env{Client: c, Addr: shared, URL: "redis://" + shared + "/0", Prefix: prefix, Kind: sharedKind}
}

// NewClient is a go-redis client tuned like the relay's, for addr.
func NewClient(addr string) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:                     addr,
		DisableIdentity:          true,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		PoolSize:                 64,
		DialTimeout:              2 * time.Second,
	})
}

// Server is a redis-server owned by one test, for tests that stop, restart
// or kill Redis.
type Server struct {
	Addr    string
	URL     string
	dir     string
	port    int
	persist bool
	cmd     *exec.Cmd

	// mini stands in for redis-server where none is installed (and the
	// fallback is allowed): Stop and Start keep its data, like a persistent
	// Redis that restarts.
	mini     *miniredis.Miniredis
	miniStop chan struct{}
}

// StartServer starts a redis-server of the test's own, stopped when the test
// ends. With persist, it keeps an append-only file in a temporary folder, so a
// restart keeps its data (as docker-compose runs it). Where no redis-server
// exists it uses a miniredis that keeps its data across Stop and Start, unless
// RELAY_TEST_REQUIRE_REDIS is set (as in CI), which fails the test.
func StartServer(t testing.TB, persist bool) *Server {
	t.Helper()
	if _, err := lookRedisServer(); err != nil {
		if os.Getenv("RELAY_TEST_REQUIRE_REDIS") != "" {
			t.Fatalf("testredis: RELAY_TEST_REQUIRE_REDIS is set but no redis-server is on PATH: %v", err)
		}
		return startMini(t, persist)
	}
	s, err := startServer(t.TempDir(), 0, persist)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.kill)
	return s
}

// lookRedisServer finds redis-server; RELAY_TEST_MINIREDIS=1 pretends there
// is none, to run the tests as a machine without it would.
func lookRedisServer() (string, error) {
	if os.Getenv("RELAY_TEST_MINIREDIS") != "" {
		return "", fmt.Errorf("RELAY_TEST_MINIREDIS is set")
	}
	return exec.LookPath("redis-server")
}

func startMini(t testing.TB, persist bool) *Server {
	m := miniredis.NewMiniRedis()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: m.Addr(), URL: "redis://" + m.Addr() + "/0", persist: persist, mini: m, miniStop: make(chan struct{})}
	go fastForward(m, s.miniStop)
	t.Cleanup(func() { close(s.miniStop); s.mini.Close() })
	return s
}

// Stop shuts the server down (saving its data when persistent).
func (s *Server) Stop() {
	if s.mini != nil {
		s.mini.Close()
		return
	}
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

// Start starts a stopped server again on the same port.
func (s *Server) Start() error {
	if s.mini != nil {
		if s.persist {
			return s.mini.Restart() // keeps its data
		}
		// A Redis without persistence comes back empty: a new server on the
		// same address.
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr(s.Addr); err != nil {
			return err
		}
		close(s.miniStop)
		s.mini, s.miniStop = m, make(chan struct{})
		go fastForward(m, s.miniStop)
		return nil
	}
	if s.cmd != nil {
		return nil
	}
	n, err := startServer(s.dir, s.port, s.persist)
	if err != nil {
		return err
	}
	s.cmd = n.cmd
	return nil
}

func (s *Server) kill() {
	if s.cmd != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

func startServer(dir string, port int, persist bool) (*Server, error) {
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		p := port
		if p == 0 {
			var err error
			if p, err = freePort(); err != nil {
				return nil, err
			}
		}
		s, err := launch(dir, p, persist)
		if err == nil {
			return s, nil
		}
		lastErr = err
		if port != 0 {
			time.Sleep(200 * time.Millisecond) // the old process may still hold the port
		}
	}
	return nil, lastErr
}

func launch(dir string, port int, persist bool) (*Server, error) {
	args := []string{
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--save", "", "--protected-mode", "no", "--loglevel", "warning",
		"--logfile", filepath.Join(dir, "redis.log"),
	}
	if persist {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	} else {
		args = append(args, "--appendonly", "no")
	}
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start redis-server: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if ping(addr) {
			return &Server{Addr: addr, URL: "redis://" + addr + "/0", dir: dir, port: port, persist: persist, cmd: cmd}, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
	return nil, fmt.Errorf("redis-server on port %d did not answer: %s", port, strings.TrimSpace(string(log)))
}

func ping(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Embedded reports whether the package's Redis is the miniredis fallback,
// for the few checks it cannot answer like Redis does (INFO fields; exact
// expiry times, which its simulated clock rounds to the second).
func Embedded() bool { return sharedKind == "miniredis" }
