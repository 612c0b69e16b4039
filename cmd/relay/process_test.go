package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/relaydev/relay/internal/testredis"
)

func TestMain(m *testing.M) { testredis.Main(m) }

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// relayBinary builds cmd/relay once per test run.
func relayBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "relaybin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "relay")
		out, err := exec.Command("go", "build", "-race", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// process is a relay running as a real process.
type process struct {
	t    *testing.T
	cmd  *exec.Cmd
	URL  string
	mu   sync.Mutex
	logs bytes.Buffer
	done chan struct{}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startRelay runs the relay with env (plus HOST and a free PORT) and waits
// until /health answers.
func startRelay(t *testing.T, env ...string) *process {
	t.Helper()
	port := freePort(t)
	cmd := exec.Command(relayBinary(t))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOST=127.0.0.1", "PORT=" + strconv.Itoa(port), "LOG_FORMAT=json"}, env...)
	p := &process{t: t, cmd: cmd, URL: "http://127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	go func() {
		s := bufio.NewScanner(pr)
		s.Buffer(make([]byte, 1<<20), 1<<20)
		for s.Scan() {
			p.mu.Lock()
			p.logs.Write(s.Bytes())
			p.logs.WriteByte('\n')
			p.mu.Unlock()
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = cmd.Wait(); pw.Close(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("relay logs:\n%s", p.Logs())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(p.URL + "/health"); err == nil {
			resp.Body.Close()
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("relay exited during start:\n%s", p.Logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("relay did not answer /health:\n%s", p.Logs())
	return nil
}

func (p *process) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

// stop sends SIGTERM and waits for a clean exit.
func (p *process) stop() int {
	p.t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.t.Fatalf("relay did not stop within 30s of SIGTERM:\n%s", p.Logs())
	}
	return p.cmd.ProcessState.ExitCode()
}

type health struct {
	Status   string            `json:"status"`
	Uptime   *int64            `json:"uptime"`
	Services map[string]string `json:"services"`
}

func getHealth(t *testing.T, url string) (int, health) {
	t.Helper()
	resp, err := http.Get(url + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h health
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatalf("health body: %v", err)
	}
	return resp.StatusCode, h
}

func TestEmbeddedRedisServesHealth(t *testing.T) {
	p := startRelay(t)
	code, h := getHealth(t, p.URL)
	if code != 200 || h.Status != "ok" || h.Services["redis"] != "connected" || h.Uptime == nil {
		t.Fatalf("health = %d %+v", code, h)
	}
	if !strings.Contains(p.Logs(), "NO REDIS CONFIGURED") {
		t.Error("no loud warning that the embedded Redis keeps nothing")
	}
	resp, err := http.Get(p.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `relay_http_requests_total{method="GET",route="/health",status="200"}`) {
		t.Errorf("/metrics does not count the /health request:\n%.2000s", body)
	}
	for _, want := range []string{`relay_stream_length{stream="usage"}`, `relay_stream_pending{stream="usage"}`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	// The Docker HEALTHCHECK command asks the same relay.
	hc := exec.Command(relayBinary(t), "healthcheck")
	hc.Env = p.cmd.Env
	if out, err := hc.CombinedOutput(); err != nil || !strings.HasPrefix(string(out), "200 ") {
		t.Errorf("relay healthcheck = %v: %s", err, out)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
	hc = exec.Command(relayBinary(t), "healthcheck")
	hc.Env = p.cmd.Env
	if err := hc.Run(); err == nil {
		t.Error("relay healthcheck succeeds with the relay stopped")
	}
}

func TestHealthFollowsRedis(t *testing.T) {
	srv := testredis.StartServer(t, true)
	p := startRelay(t, "REDIS_URL="+srv.URL,
		"JWT_SECRET="+strings.Repeat("j", 32), "ENCRYPTION_KEY="+strings.Repeat("e", 32))
	if code, h := getHealth(t, p.URL); code != 200 || h.Services["redis"] != "connected" {
		t.Fatalf("health with redis up = %d %+v", code, h)
	}

	srv.Stop()
	code, h := getHealth(t, p.URL)
	if code != 503 || h.Status != "degraded" || !strings.HasPrefix(h.Services["redis"], "disconnected") {
		t.Fatalf("health with redis down = %d %+v", code, h)
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, h = getHealth(t, p.URL)
		if code == 200 && h.Status == "ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health did not recover after redis came back: %d %+v", code, h)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM", code)
	}
}

func TestBadConfigStopsWithOneLine(t *testing.T) {
	cmd := exec.Command(relayBinary(t))
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "PORT=seventy"}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit = %v, want status 2", err)
	}
	out := strings.TrimSpace(stderr.String())
	if strings.Count(out, "\n") != 0 || !strings.Contains(out, "PORT:") {
		t.Fatalf("stderr = %q, want one line naming PORT", out)
	}
}

// doJSON sends a JSON request and decodes a JSON answer into out.
func doJSON(t *testing.T, method, url, bearer string, in, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

// With a real Redis, a restart loses nothing: keys made before it still work,
// admin sessions still hold, and the admin password set through the API stays.
func TestRestartKeepsState(t *testing.T) {
	srv := testredis.StartServer(t, true)
	env := []string{"REDIS_URL=" + srv.URL, "ADMIN_PASSWORD=first-password",
		"JWT_SECRET=" + strings.Repeat("j", 32), "ENCRYPTION_KEY=" + strings.Repeat("e", 32)}
	p := startRelay(t, env...)

	var sess struct{ Token string }
	if code := doJSON(t, "POST", p.URL+"/admin/login", "", map[string]string{"username": "admin", "password": "first-password"}, &sess); code != 200 || sess.Token == "" {
		t.Fatalf("login = %d", code)
	}
	var created struct {
		Key  string
		Data struct{ ID string }
	}
	if code := doJSON(t, "POST", p.URL+"/admin/keys", sess.Token, map[string]any{"name": "survives"}, &created); code != 201 || created.Key == "" {
		t.Fatalf("create key = %d", code)
	}
	if code := doJSON(t, "POST", p.URL+"/admin/password", sess.Token,
		map[string]string{"current_password": "first-password", "new_password": "second-password-123"}, &sess); code != 200 {
		t.Fatalf("change password = %d", code)
	}
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// Restart Redis as well (it persists to its append-only file), then the relay.
	srv.Stop()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	p = startRelay(t, env...)
	if code := doJSON(t, "GET", p.URL+"/v1/key-info", created.Key, nil, nil); code != 200 {
		t.Fatalf("key made before the restart: key-info = %d", code)
	}
	if code := doJSON(t, "GET", p.URL+"/admin/keys/"+created.Data.ID, sess.Token, nil, nil); code != 200 {
		t.Fatalf("admin session from before the restart: %d", code)
	}
	if code := doJSON(t, "POST", p.URL+"/admin/login", "", map[string]string{"username": "admin", "password": "first-password"}, nil); code != 401 {
		t.Fatalf("ADMIN_PASSWORD overwrote the changed password: old password login = %d", code)
	}
	if code := doJSON(t, "POST", p.URL+"/admin/login", "", map[string]string{"username": "admin", "password": "second-password-123"}, nil); code != 200 {
		t.Fatalf("changed password after restart = %d", code)
	}
	for _, secret := range []string{created.Key, "first-password", "second-password-123", sess.Token} {
		if strings.Contains(p.Logs(), secret) {
			t.Errorf("a secret appears in the logs")
		}
	}
}
