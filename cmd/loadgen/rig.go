package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/relaydev/relay/internal/fakeanthropic"
)

// rig is everything a run needs, on loopback: a redis-server, the fake
// Anthropic upstream (in this process), and the relay as a real process
// built from ./cmd/relay, set up with an admin session, an API key with
// limits and an account pointing at the fake.
type rig struct {
	dir string
	log io.Writer // progress lines

	redisCmd  *exec.Cmd
	redisAddr string
	rdb       *redis.Client

	fake    *fakeanthropic.Bench
	fakeSrv *http.Server
	fakeURL string

	relayBin  string
	relayCmd  *exec.Cmd
	relayURL  string
	relayLog  string
	pprofAddr string
	relayDone chan struct{}

	upstreamKey string // what the relay's account (and direct requests) send the fake
	key         string // the relay API key
	keyPrefix   string // REDIS_KEY_PREFIX
	logLevel    string
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// startRedis runs a redis-server without persistence on a free port.
func (r *rig) startRedis(ctx context.Context) error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return errors.New("redis-server is not installed (apt-get install redis-server, or put it on PATH): " +
			"the benchmark runs against a real Redis")
	}
	port, err := freePort()
	if err != nil {
		return err
	}
	r.redisAddr = "127.0.0.1:" + strconv.Itoa(port)
	logf, err := os.Create(filepath.Join(r.dir, "redis.log"))
	if err != nil {
		return err
	}
	r.redisCmd = exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "",
		"--appendonly", "no", "--dir", r.dir, "--maxclients", "20000")
	r.redisCmd.Stdout, r.redisCmd.Stderr = logf, logf
	if err := r.redisCmd.Start(); err != nil {
		return fmt.Errorf("redis-server: %w", err)
	}
	r.rdb = redis.NewClient(&redis.Options{Addr: r.redisAddr, PoolSize: 64})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := r.rdb.Ping(ctx).Err(); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("redis-server did not answer: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startFake serves the benchmark fake on a free loopback port.
func (r *rig) startFake() error {
	r.fake = fakeanthropic.NewBench(fakeanthropic.BenchOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	r.fakeURL = "http://" + ln.Addr().String()
	r.fakeSrv = &http.Server{Handler: r.fake, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = r.fakeSrv.Serve(ln) }()
	r.upstreamKey = "sk-ant-api03-bench-" + randomHex(8)
	return nil
}

// buildRelay builds ./cmd/relay (without -race) into the run's directory.
func (r *rig) buildRelay(ctx context.Context) error {
	r.relayBin = filepath.Join(r.dir, "relay")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", r.relayBin, "./cmd/relay")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build ./cmd/relay: %v\n%s", err, out.String())
	}
	return nil
}

// startRelay runs the relay with the production defaults, Redis, secrets,
// an admin password and PPROF_ADDR, and waits for /health.
func (r *rig) startRelay(ctx context.Context) (adminPassword string, err error) {
	port, err := freePort()
	if err != nil {
		return "", err
	}
	pport, err := freePort()
	if err != nil {
		return "", err
	}
	r.relayURL = "http://127.0.0.1:" + strconv.Itoa(port)
	r.pprofAddr = "127.0.0.1:" + strconv.Itoa(pport)
	r.keyPrefix = "relay:"
	adminPassword = "bench-" + randomHex(12)
	r.relayLog = filepath.Join(r.dir, "relay.log")
	logf, err := os.Create(r.relayLog)
	if err != nil {
		return "", err
	}
	r.relayCmd = exec.Command(r.relayBin)
	r.relayCmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOST=127.0.0.1", "PORT=" + strconv.Itoa(port),
		"REDIS_URL=redis://" + r.redisAddr + "/0", "REDIS_KEY_PREFIX=" + r.keyPrefix,
		"JWT_SECRET=" + randomHex(32), "ENCRYPTION_KEY=" + randomHex(32),
		"ADMIN_USERNAME=admin", "ADMIN_PASSWORD=" + adminPassword,
		"LOG_FORMAT=json", "LOG_LEVEL=" + r.logLevel,
		"PPROF_ADDR=" + r.pprofAddr,
	}
	r.relayCmd.Stdout, r.relayCmd.Stderr = logf, logf
	if err := r.relayCmd.Start(); err != nil {
		return "", err
	}
	r.relayDone = make(chan struct{})
	go func() { _ = r.relayCmd.Wait(); close(r.relayDone) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(r.relayURL + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return adminPassword, nil
			}
		}
		select {
		case <-r.relayDone:
			return "", fmt.Errorf("relay exited during start; see %s", r.relayLog)
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("relay did not answer /health within 30s; see %s", r.relayLog)
		}
	}
}

// adminJSON calls the admin API.
func (r *rig) adminJSON(method, path, token string, in, out any) error {
	b, _ := json.Marshal(in)
	req, err := http.NewRequest(method, r.relayURL+path, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, raw)
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// setUp logs in as admin, creates an API key with every limit set (high
// enough never to refuse, so the whole check runs on every request) and a
// Claude console account pointing at the fake, and waits until a request
// goes through.
func (r *rig) setUp(ctx context.Context, adminPassword string) error {
	var sess struct {
		Token string `json:"token"`
	}
	if err := r.adminJSON("POST", "/admin/login", "", map[string]string{"username": "admin", "password": adminPassword}, &sess); err != nil {
		return err
	}
	var key struct {
		Key string `json:"key"`
	}
	if err := r.adminJSON("POST", "/admin/keys", sess.Token, map[string]any{
		"name": "loadgen",
		"limits": map[string]any{
			"window_sec": 60, "requests_per_window": 1_000_000_000, "tokens_per_window": 1_000_000_000_000,
			"max_concurrent": 100_000, "daily_cost_usd": 1_000_000, "total_cost_usd": 10_000_000,
		},
	}, &key); err != nil {
		return err
	}
	r.key = key.Key
	if err := r.adminJSON("POST", "/admin/accounts", sess.Token, map[string]any{
		"name": "bench-fake", "kind": "claude-console", "api_key": r.upstreamKey, "base_url": r.fakeURL,
	}, nil); err != nil {
		return err
	}
	// The relay picks new accounts up within ACCOUNT_SYNC_INTERVAL.
	deadline := time.Now().Add(15 * time.Second)
	for {
		status, body, err := postOnce(r.relayURL+"/api/v1/messages", r.key, chatBody(0, false))
		if err == nil && status == 200 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no request went through the relay: %d %s %v", status, body, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func postOnce(url, key string, body []byte) (int, string, error) {
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("x-api-key", key)
	req.Header.Set("anthropic-version", "2023-06-01")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(raw), nil
}

// redisCommands is Redis's count of calls so far per command (INFO
// commandstats), and their total.
func (r *rig) redisCommands(ctx context.Context) (map[string]int64, int64) {
	info, err := r.rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		return nil, 0
	}
	return parseCommandStats(info)
}

// parseCommandStats reads lines such as
// "cmdstat_xadd:calls=12,usec=80,usec_per_call=6.67,...".
func parseCommandStats(info string) (map[string]int64, int64) {
	out := map[string]int64{}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !strings.HasPrefix(name, "cmdstat_") {
			continue
		}
		calls, _, _ := strings.Cut(strings.TrimPrefix(rest, "calls="), ",")
		n, err := strconv.ParseInt(calls, 10, 64)
		if err != nil {
			continue
		}
		out[strings.TrimPrefix(name, "cmdstat_")] = n
		total += n
	}
	return out, total
}

func (r *rig) relayPid() int { return r.relayCmd.Process.Pid }
func (r *rig) redisPid() int { return r.redisCmd.Process.Pid }

// close stops the relay (SIGTERM, then kill), the fake and Redis.
func (r *rig) close() {
	if r.relayCmd != nil && r.relayCmd.Process != nil {
		_ = r.relayCmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.relayDone:
		case <-time.After(20 * time.Second):
			_ = r.relayCmd.Process.Kill()
			<-r.relayDone
		}
	}
	if r.fakeSrv != nil {
		_ = r.fakeSrv.Close()
	}
	if r.rdb != nil {
		_ = r.rdb.Close()
	}
	if r.redisCmd != nil && r.redisCmd.Process != nil {
		_ = r.redisCmd.Process.Kill()
		_ = r.redisCmd.Wait()
	}
}
