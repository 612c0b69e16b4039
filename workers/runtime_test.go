package workers

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/testredis"
)

// helperEnv selects a helper mode of the test binary (see runHelper).
const helperEnv = "RELAY_WORKERS_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(runHelper())
	}
	testredis.Main(m)
}

// streams names one test's stream, group and dead-letter stream.
type streams struct {
	stream, dead, group string
}

func newStreams(env *testredis.Env) streams {
	ks := keyspace.New(env.Prefix)
	return streams{stream: ks.Stream("jobs"), dead: ks.DeadLetter("jobs"), group: "workers"}
}

func (s streams) config(consumer string, log zerolog.Logger) Config {
	return Config{
		Stream: s.stream, Group: s.group, Consumer: consumer, DeadLetter: s.dead, Log: log,
	}
}

func testLog(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.WarnLevel)
}

// startPool makes and starts a pool, stopped when the test ends.
func startPool(t testing.TB, rdb redis.UniversalClient, cfg Config) *Pool {
	t.Helper()
	p, err := New(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Stop)
	return p
}

// waitFor polls cond until it holds; it fails the test after a generous
// deadline (a hang, not a speed check).
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func publishN(t testing.TB, rdb redis.UniversalClient, stream string, n int) []string {
	t.Helper()
	ctx := context.Background()
	ids := make([]string, 0, n)
	for start := 0; start < n; start += 1000 {
		pipe := rdb.Pipeline()
		cmds := make([]*redis.StringCmd, 0, 1000)
		for i := start; i < min(start+1000, n); i++ {
			cmds = append(cmds, pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []string{"n", strconv.Itoa(i)}}))
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatal(err)
		}
		for _, c := range cmds {
			ids = append(ids, c.Val())
		}
	}
	return ids
}

func pendingCount(t testing.TB, rdb redis.UniversalClient, s streams) int64 {
	t.Helper()
	p, err := rdb.XPending(context.Background(), s.stream, s.group).Result()
	if err != nil {
		t.Fatal(err)
	}
	return p.Count
}

func streamLen(t testing.TB, rdb redis.UniversalClient, key string) int64 {
	t.Helper()
	n, err := rdb.XLen(context.Background(), key).Result()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// handledSet records which entries were handled how often, and catches an
// entry being handled by two handlers at the same time.
type handledSet struct {
	mu       sync.Mutex
	count    map[string]int
	inFlight map[string]bool
	overlaps []string
	total    atomic.Int64
}

func newHandledSet() *handledSet {
	return &handledSet{count: map[string]int{}, inFlight: map[string]bool{}}
}

func (h *handledSet) begin(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.inFlight[id] {
		h.overlaps = append(h.overlaps, id)
	}
	h.inFlight[id] = true
}

func (h *handledSet) end(id string, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.inFlight, id)
	if ok {
		if h.count[id] == 0 {
			h.total.Add(1)
		}
		h.count[id]++
	}
}

func (h *handledSet) times(id string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.count[id]
}

// outcomeCount reads relay_worker_entries_total{stream, outcome} from the
// registry, as a scrape would.
func outcomeCount(t testing.TB, m *metrics.Metrics, stream, outcome string) float64 {
	t.Helper()
	fams, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "relay_worker_entries_total" {
			continue
		}
		for _, mt := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range mt.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["stream"] == stream && labels["outcome"] == outcome {
				return mt.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestNewValidates(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	h := func(context.Context, Entry) error { return nil }
	bad := map[string]Config{
		"no stream":        {Group: "g", Consumer: "c", DeadLetter: s.dead, Handler: h},
		"no handler":       {Stream: s.stream, Group: "g", Consumer: "c", DeadLetter: s.dead},
		"two handlers":     {Stream: s.stream, Group: "g", Consumer: "c", DeadLetter: s.dead, Handler: h, BatchHandler: func(context.Context, []Entry) error { return nil }},
		"dead is stream":   {Stream: s.stream, Group: "g", Consumer: "c", DeadLetter: s.stream, Handler: h},
		"trim below vis":   {Stream: s.stream, Group: "g", Consumer: "c", DeadLetter: s.dead, Handler: h, VisibilityTimeout: time.Hour, TrimAge: time.Hour},
		"no dead letter":   {Stream: s.stream, Group: "g", Consumer: "c", Handler: h},
		"tiny visibility ": {Stream: s.stream, Group: "g", Consumer: "c", DeadLetter: s.dead, Handler: h, VisibilityTimeout: time.Millisecond},
	}
	for name, cfg := range bad {
		if _, err := New(env.Client, cfg); err == nil {
			t.Errorf("%s: New accepted an invalid config", name)
		}
	}
	p, err := New(env.Client, Config{Stream: s.stream, Group: "g", Consumer: "c", DeadLetter: s.dead, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	c := p.cfg
	if c.Concurrency != 8 || c.BatchSize != 100 || c.Block != 500*time.Millisecond || c.VisibilityTimeout != 30*time.Second ||
		c.MaxDeliveries != 5 || c.TrimAge != 24*time.Hour || c.HandlerTimeout != 30*time.Second || c.StopGrace != 5*time.Second || c.Name != "jobs" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	if name := ConsumerName(); !strings.Contains(name, "-"+strconv.Itoa(os.Getpid())+"-") {
		t.Fatalf("consumer name %q does not name this process", name)
	}
	p.Stop() // a pool that never started stops at once
	if err := p.Start(context.Background()); err == nil {
		t.Fatal("a stopped pool started again")
	}
}

func TestTwoPoolsShareTheWork(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	const n = 2000
	seen := newHandledSet()
	var byPool [2]atomic.Int64
	pools := make([]*Pool, 2)
	for i := range pools {
		cfg := s.config(fmt.Sprintf("consumer-%d", i), testLog(t))
		cfg.Concurrency = 4
		cfg.Handler = func(ctx context.Context, e Entry) error {
			seen.begin(e.ID)
			time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
			byPool[i].Add(1)
			seen.end(e.ID, true)
			return nil
		}
		pools[i] = startPool(t, env.Client, cfg)
	}
	ids := publishN(t, env.Client, s.stream, n)
	waitFor(t, "all entries handled", func() bool { return seen.total.Load() == n })
	for _, p := range pools {
		p.Stop()
	}

	if len(seen.overlaps) > 0 {
		t.Fatalf("entries handled by two handlers at once: %v", seen.overlaps)
	}
	for _, id := range ids {
		if c := seen.times(id); c != 1 {
			t.Fatalf("entry %s handled %d times, want once", id, c)
		}
	}
	if byPool[0].Load() == 0 || byPool[1].Load() == 0 {
		t.Fatalf("the pools did not share the work: %d and %d entries", byPool[0].Load(), byPool[1].Load())
	}
	if got := pools[0].Stats().OK + pools[1].Stats().OK; got != n {
		t.Fatalf("pools report %d entries ok, want %d", got, n)
	}
	if pc := pendingCount(t, env.Client, s); pc != 0 {
		t.Fatalf("%d entries left unacknowledged", pc)
	}
}

func TestRetryWithBackoff(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	type attempt struct {
		deliveries int64
		at         time.Time
	}
	var mu sync.Mutex
	var attempts []attempt
	var backoffs []int64
	done := make(chan struct{})
	cfg := s.config("c", testLog(t))
	cfg.Backoff = func(n int64) time.Duration {
		mu.Lock()
		backoffs = append(backoffs, n)
		mu.Unlock()
		return time.Duration(n) * 40 * time.Millisecond
	}
	cfg.Handler = func(ctx context.Context, e Entry) error {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, attempt{e.Deliveries, time.Now()})
		if len(attempts) < 3 {
			return errors.New("upstream busy")
		}
		close(done)
		return nil
	}
	p := startPool(t, env.Client, cfg)
	publishN(t, env.Client, s.stream, 1)
	<-done
	waitFor(t, "the ack", func() bool { return pendingCount(t, env.Client, s) == 0 })
	p.Stop()

	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 3 {
		t.Fatalf("%d attempts, want 3", len(attempts))
	}
	for i, a := range attempts {
		if a.deliveries != int64(i+1) {
			t.Fatalf("attempt %d saw Deliveries=%d, want %d", i+1, a.deliveries, i+1)
		}
		if i > 0 {
			if gap, want := a.at.Sub(attempts[i-1].at), time.Duration(i)*40*time.Millisecond; gap < want {
				t.Fatalf("retry %d came after %s, before its backoff of %s", i, gap, want)
			}
		}
	}
	if fmt.Sprint(backoffs) != "[1 2]" {
		t.Fatalf("backoff asked for attempts %v, want [1 2]", backoffs)
	}
	if st := p.Stats(); st.Retried != 2 || st.OK != 1 || st.Dead != 0 {
		t.Fatalf("stats %+v, want 2 retried, 1 ok", st)
	}
	if n := streamLen(t, env.Client, s.dead); n != 0 {
		t.Fatalf("%d dead-letter entries, want none", n)
	}
}

func TestDeadLetter(t *testing.T) {
	cases := []struct {
		name      string
		handler   Handler
		wantCalls int
		wantError string
	}{
		{"always fails", func(context.Context, Entry) error { return errors.New("boom") }, 3, "boom"},
		{"panics", func(context.Context, Entry) error { panic("kaput") }, 3, "handler panicked: kaput"},
		{"permanent", func(context.Context, Entry) error { return fmt.Errorf("bad input: %w", ErrPermanent) }, 1, "bad input: permanent failure"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := testredis.New(t)
			s := newStreams(env)
			m := metrics.New()
			var calls atomic.Int64
			cfg := s.config("c", zerolog.Nop())
			cfg.MaxDeliveries = 3
			cfg.Metrics = m
			cfg.Backoff = func(int64) time.Duration { return time.Millisecond }
			cfg.Handler = func(ctx context.Context, e Entry) error { calls.Add(1); return tc.handler(ctx, e) }
			p := startPool(t, env.Client, cfg)
			id, err := Publish(context.Background(), env.Client, s.stream, map[string]string{"job": "42", "model": "m"})
			if err != nil {
				t.Fatal(err)
			}
			waitFor(t, "the dead letter", func() bool { return streamLen(t, env.Client, s.dead) == 1 })
			p.Stop()

			got, err := env.Client.XRange(context.Background(), s.dead, "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			v := got[0].Values
			want := map[string]any{
				"job": "42", "model": "m", DeadID: id, DeadStream: s.stream,
				DeadDeliveries: strconv.Itoa(tc.wantCalls), DeadError: tc.wantError,
			}
			if len(v) != len(want) {
				t.Fatalf("dead-letter entry %v, want %v", v, want)
			}
			for k, w := range want {
				if v[k] != w {
					t.Fatalf("dead-letter field %s = %q, want %q", k, v[k], w)
				}
			}
			if c := calls.Load(); c != int64(tc.wantCalls) {
				t.Fatalf("handler called %d times, want %d", c, tc.wantCalls)
			}
			if pc := pendingCount(t, env.Client, s); pc != 0 {
				t.Fatalf("%d entries pending after dead-lettering", pc)
			}
			if d := outcomeCount(t, m, "jobs", "dead"); d != 1 {
				t.Fatalf("dead outcome metric %v, want 1", d)
			}
			if r := outcomeCount(t, m, "jobs", "retry"); r != float64(tc.wantCalls-1) {
				t.Fatalf("retry outcome metric %v, want %d", r, tc.wantCalls-1)
			}
		})
	}
}

func TestBatchFailureRetriesEntriesAlone(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	ids := publishN(t, env.Client, s.stream, 49)
	bad, err := Publish(context.Background(), env.Client, s.stream, map[string]string{"n": "bad"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var sizes []int
	okIDs := map[string]bool{}
	cfg := s.config("c", zerolog.Nop())
	cfg.Concurrency = 2
	cfg.BatchSize = 10
	cfg.BatchHandler = func(ctx context.Context, es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		sizes = append(sizes, len(es))
		for _, e := range es {
			if e.Values["n"] == "bad" {
				return fmt.Errorf("entry %s does not parse: %w", e.ID, ErrPermanent)
			}
		}
		for _, e := range es {
			okIDs[e.ID] = true
		}
		return nil
	}
	p := startPool(t, env.Client, cfg)
	waitFor(t, "the dead letter", func() bool { return streamLen(t, env.Client, s.dead) == 1 })
	waitFor(t, "all good entries", func() bool { mu.Lock(); defer mu.Unlock(); return len(okIDs) == 49 })
	p.Stop()

	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if !okIDs[id] {
			t.Fatalf("good entry %s not handled", id)
		}
	}
	if okIDs[bad] {
		t.Fatal("the bad entry was reported handled")
	}
	if sizes[0] != 10 {
		t.Fatalf("first batch had %d entries, want 10 (batch sizes %v)", sizes[0], sizes)
	}
	dead, _ := env.Client.XRange(context.Background(), s.dead, "-", "+").Result()
	if dead[0].Values[DeadID] != bad || dead[0].Values[DeadDeliveries] != "1" {
		t.Fatalf("dead letter %v, want entry %s after 1 delivery", dead[0].Values, bad)
	}
	if st := p.Stats(); st.OK != 49 || st.Dead != 1 {
		t.Fatalf("stats %+v, want 49 ok, 1 dead", st)
	}
	if pc := pendingCount(t, env.Client, s); pc != 0 {
		t.Fatalf("%d entries pending", pc)
	}
}

func TestLongHandlerKeepsItsEntry(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	const vis = time.Second
	var othersGot atomic.Int64
	var deliveries atomic.Int64
	done := make(chan struct{})
	cfg := s.config("slow", testLog(t))
	cfg.VisibilityTimeout = vis
	cfg.HandlerTimeout = time.Minute
	cfg.Handler = func(ctx context.Context, e Entry) error {
		deliveries.Store(e.Deliveries)
		select {
		case <-time.After(3 * vis): // far past the visibility timeout
		case <-ctx.Done():
			return ctx.Err()
		}
		close(done)
		return nil
	}
	slow := startPool(t, env.Client, cfg)
	// Only the slow pool exists when the entry arrives, so it gets it.
	publishN(t, env.Client, s.stream, 1)
	waitFor(t, "the slow pool to take the entry", func() bool { return deliveries.Load() == 1 })

	other := s.config("other", testLog(t))
	other.VisibilityTimeout = vis
	other.Handler = func(context.Context, Entry) error { othersGot.Add(1); return nil }
	op := startPool(t, env.Client, other)

	<-done
	waitFor(t, "the ack", func() bool { return pendingCount(t, env.Client, s) == 0 })
	slow.Stop()
	op.Stop()
	if n := othersGot.Load(); n != 0 {
		t.Fatalf("another consumer reclaimed a running entry %d times", n)
	}
	if st := slow.Stats(); st.OK != 1 || st.Lost != 0 {
		t.Fatalf("slow pool stats %+v, want 1 ok, none lost", st)
	}
	if r := op.Stats().Reclaimed; r != 0 {
		t.Fatalf("the other pool reclaimed %d entries", r)
	}
}

func TestStopHandsBackRunningEntry(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	started := make(chan string, 1)
	cancelled := make(chan error, 1)
	cfg := s.config("first", testLog(t))
	cfg.VisibilityTimeout = time.Minute // without a hand-back nobody could take it for a minute
	cfg.HandlerTimeout = time.Hour
	cfg.StopGrace = 100 * time.Millisecond
	cfg.Handler = func(ctx context.Context, e Entry) error {
		started <- e.ID
		<-ctx.Done()
		cancelled <- ctx.Err()
		return ctx.Err()
	}
	first := startPool(t, env.Client, cfg)
	id := publishN(t, env.Client, s.stream, 1)[0]
	if got := <-started; got != id {
		t.Fatalf("handler got %s, want %s", got, id)
	}
	first.Stop()
	if err := <-cancelled; !errors.Is(err, context.Canceled) {
		t.Fatalf("handler context ended with %v, want cancelled", err)
	}
	if st := first.Stats(); st.HandedBack != 1 || st.OK != 0 || st.Retried != 0 || st.Dead != 0 {
		t.Fatalf("stats %+v, want exactly 1 handed back", st)
	}
	pend, err := env.Client.XPendingExt(context.Background(), &redis.XPendingExtArgs{
		Stream: s.stream, Group: s.group, Start: "-", End: "+", Count: 10,
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(pend) != 1 || pend[0].Idle < time.Minute || pend[0].RetryCount != 0 {
		t.Fatalf("pending after hand-back %+v, want the entry idle >= 1m and its delivery uncounted", pend)
	}

	got := make(chan Entry, 1)
	next := s.config("second", testLog(t))
	next.VisibilityTimeout = time.Minute
	next.Handler = func(ctx context.Context, e Entry) error { got <- e; return nil }
	second := startPool(t, env.Client, next)
	e := <-got
	if e.ID != id || e.Deliveries != 1 || e.Values["n"] != "0" {
		t.Fatalf("second pool got %+v, want entry %s on its first counted delivery", e, id)
	}
	waitFor(t, "the ack", func() bool { return pendingCount(t, env.Client, s) == 0 })
	second.Stop()
	if st := second.Stats(); st.Reclaimed != 1 || st.OK != 1 {
		t.Fatalf("second pool stats %+v, want 1 reclaimed and ok", st)
	}
}

// runHelper is the test binary re-run as a separate consumer process: it
// takes one entry, prints its id and blocks in the handler until killed.
func runHelper() int {
	rdb := testredis.NewClient(os.Getenv("RELAY_WORKERS_TEST_ADDR"))
	var cfg Config
	cfg.Stream = os.Getenv("RELAY_WORKERS_TEST_STREAM")
	cfg.DeadLetter = os.Getenv("RELAY_WORKERS_TEST_DEAD")
	cfg.Group = os.Getenv("RELAY_WORKERS_TEST_GROUP")
	cfg.Consumer = "doomed"
	cfg.Concurrency = 1
	cfg.HandlerTimeout = time.Hour
	cfg.Log = zerolog.New(os.Stderr)
	cfg.Handler = func(ctx context.Context, e Entry) error {
		fmt.Printf("HANDLING %s\n", e.ID)
		<-ctx.Done()
		return ctx.Err()
	}
	p, err := New(rdb, cfg)
	if err == nil {
		err = p.Start(context.Background())
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	select {} // until SIGKILL
}

func TestKilledConsumersEntryIsReclaimed(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	id, err := Publish(context.Background(), env.Client, s.stream, map[string]string{"prompt": "a cat"})
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=block",
		"RELAY_WORKERS_TEST_ADDR="+env.Addr, "RELAY_WORKERS_TEST_STREAM="+s.stream,
		"RELAY_WORKERS_TEST_DEAD="+s.dead, "RELAY_WORKERS_TEST_GROUP="+s.group)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper process printed nothing: %v", err)
	}
	if strings.TrimSpace(line) != "HANDLING "+id {
		t.Fatalf("helper said %q, want it to handle %s", line, id)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	pend, err := env.Client.XPendingExt(context.Background(), &redis.XPendingExtArgs{
		Stream: s.stream, Group: s.group, Start: "-", End: "+", Count: 10,
	}).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(pend) != 1 || pend[0].Consumer != "doomed" {
		t.Fatalf("pending after the kill %+v, want the entry held by the dead consumer", pend)
	}

	got := make(chan Entry, 1)
	cfg := s.config("survivor", testLog(t))
	cfg.VisibilityTimeout = 500 * time.Millisecond
	cfg.Handler = func(ctx context.Context, e Entry) error { got <- e; return nil }
	p := startPool(t, env.Client, cfg)
	e := <-got
	if e.ID != id || e.Values["prompt"] != "a cat" || e.Deliveries != 2 {
		t.Fatalf("survivor got %+v, want entry %s on its second delivery", e, id)
	}
	waitFor(t, "the ack", func() bool { return pendingCount(t, env.Client, s) == 0 })
	p.Stop()
	if st := p.Stats(); st.Reclaimed != 1 || st.OK != 1 {
		t.Fatalf("survivor stats %+v, want 1 reclaimed and ok", st)
	}
}

func TestStopUnderLoadLosesNothing(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	seen := newHandledSet()
	handler := func(ctx context.Context, e Entry) error {
		seen.begin(e.ID)
		d := time.Duration(rand.IntN(1000)) * time.Microsecond
		if rand.IntN(40) == 0 {
			d = 150 * time.Millisecond // longer than the grace period: handed back if a stop comes
		}
		select {
		case <-time.After(d):
			seen.end(e.ID, true)
			return nil
		case <-ctx.Done():
			seen.end(e.ID, false)
			return ctx.Err()
		}
	}
	newCfg := func(name string) Config {
		cfg := s.config(name, testLog(t))
		cfg.Concurrency = 4
		cfg.VisibilityTimeout = 500 * time.Millisecond
		cfg.StopGrace = 40 * time.Millisecond
		cfg.Block = 50 * time.Millisecond
		cfg.Handler = handler
		return cfg
	}

	// The producer adds entries until told to stop.
	var produced []string
	stopProducing := make(chan struct{})
	producerDone := make(chan struct{})
	go func() {
		defer close(producerDone)
		for i := 0; ; i++ {
			select {
			case <-stopProducing:
				return
			default:
			}
			id, err := Publish(context.Background(), env.Client, s.stream, map[string]string{"n": strconv.Itoa(i)})
			if err != nil {
				t.Error(err)
				return
			}
			produced = append(produced, id)
			if i%5 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()

	var handedBack, reclaimed int64
	for round := range 12 {
		pools := make([]*Pool, 2)
		for i := range pools {
			p, err := New(env.Client, newCfg(fmt.Sprintf("r%d-%d", round, i)))
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			pools[i] = p
		}
		time.Sleep(time.Duration(20+rand.IntN(150)) * time.Millisecond)
		var wg sync.WaitGroup
		for _, p := range pools {
			wg.Go(p.Stop)
		}
		wg.Wait()
		for _, p := range pools {
			handedBack += p.Stats().HandedBack
			reclaimed += p.Stats().Reclaimed
			if st := p.Stats(); st.InFlight != 0 {
				t.Fatalf("a stopped pool still holds %d entries", st.InFlight)
			}
		}
	}
	close(stopProducing)
	<-producerDone

	last := newCfg("final")
	last.Concurrency = 64 // work off the backlog quickly
	final := startPool(t, env.Client, last)
	waitFor(t, "every produced entry handled", func() bool { return seen.total.Load() >= int64(len(produced)) })
	waitFor(t, "every entry acknowledged", func() bool { return pendingCount(t, env.Client, s) == 0 })
	final.Stop()

	for _, id := range produced {
		if seen.times(id) == 0 {
			t.Fatalf("entry %s was never handled", id)
		}
	}
	if int64(len(produced)) != seen.total.Load() {
		t.Fatalf("handled %d distinct entries, produced %d", seen.total.Load(), len(produced))
	}
	if len(seen.overlaps) > 0 {
		t.Fatalf("entries handled twice at once: %v", seen.overlaps)
	}
	if n := streamLen(t, env.Client, s.dead); n != 0 {
		t.Fatalf("%d entries dead-lettered", n)
	}
	t.Logf("%d entries produced, %d handed back on stops, %d reclaimed", len(produced), handedBack, reclaimed+final.Stats().Reclaimed)
}

func TestTrimByAgeKeepsUnfinishedEntries(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	ctx := context.Background()
	rdb := env.Client
	if err := rdb.XGroupCreateMkStream(ctx, s.stream, s.group, "0").Err(); err != nil {
		t.Fatal(err)
	}
	// 400 entries from long ago (ids in 1970), then 10 from now.
	var old []string
	pipe := rdb.Pipeline()
	for i := range 400 {
		id := formatID(1000+uint64(i), 0)
		old = append(old, id)
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: s.stream, ID: id, Values: []string{"n", strconv.Itoa(i)}})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	fresh := publishN(t, rdb, s.stream, 10)
	// The group reads the first 300 old ones, acknowledges 250 and keeps 50
	// pending; the last 100 old ones and the fresh ones stay unread.
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: s.group, Consumer: "x", Streams: []string{s.stream, ">"}, Count: 300}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XAck(ctx, s.stream, s.group, old[:250]...).Err(); err != nil {
		t.Fatal(err)
	}
	cfg := s.config("c", zerolog.Nop())
	cfg.TrimAge = time.Hour
	cfg.Handler = func(context.Context, Entry) error { return nil }
	p, err := New(rdb, cfg)
	if err != nil {
		t.Fatal(err)
	}

	present := func() map[string]bool {
		es, err := rdb.XRange(ctx, s.stream, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, e := range es {
			m[e.ID] = true
		}
		return m
	}
	if _, err := p.trim(ctx); err != nil {
		t.Fatal(err)
	}
	left := present()
	for _, id := range append(append([]string{}, old[250:]...), fresh...) {
		if !left[id] {
			t.Fatalf("trim removed %s, which is pending, unread or young", id)
		}
	}
	gone := 0
	for _, id := range old[:250] {
		if !left[id] {
			gone++
		}
	}
	if gone < 200 { // approximate trimming removes whole nodes (100 entries each by default)
		t.Fatalf("trim removed %d of 250 old acknowledged entries, want at least 200", gone)
	}

	// Once everything old is read and acknowledged, only the young remain.
	if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: s.group, Consumer: "x", Streams: []string{s.stream, ">"}, Count: 1000}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XAck(ctx, s.stream, s.group, old...).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.trim(ctx); err != nil {
		t.Fatal(err)
	}
	left = present()
	for _, id := range fresh {
		if !left[id] {
			t.Fatalf("trim removed the young entry %s", id)
		}
	}
	if len(left) > len(fresh)+100 {
		t.Fatalf("%d entries left after trimming, want the %d young ones and at most a node of old ones", len(left), len(fresh))
	}
	t.Logf("left after the final trim: %d entries (%d young)", len(left), len(fresh))
}

func TestWaitsForRedisAndSurvivesItsRestart(t *testing.T) {
	srv := testredis.StartServer(t, false)
	rdb := testredis.NewClient(srv.Addr)
	t.Cleanup(func() { rdb.Close() })
	s := streams{stream: "relay:stream:jobs", dead: "relay:stream:jobs:dead", group: "workers"}
	srv.Stop()

	got := make(chan string, 10)
	cfg := s.config("c", testLog(t))
	cfg.Handler = func(ctx context.Context, e Entry) error { got <- e.Values["n"]; return nil }
	p := startPool(t, rdb, cfg) // Redis is down: the pool starts and waits

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	publishN(t, rdb, s.stream, 1)
	if n := <-got; n != "0" {
		t.Fatalf("got entry %q", n)
	}

	// A restart without persistence loses the stream and its group; the pool
	// makes them again.
	srv.Stop()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the group to be made again", func() bool {
		gs, err := rdb.XInfoGroups(context.Background(), s.stream).Result()
		return err == nil && len(gs) == 1
	})
	publishN(t, rdb, s.stream, 1)
	if n := <-got; n != "0" {
		t.Fatalf("got entry %q after the restart", n)
	}
	p.Stop()
	if st := p.Stats(); st.OK != 2 {
		t.Fatalf("stats %+v, want 2 ok", st)
	}
}

// With BatchWait, entries that trickle in one at a time are handled in
// batches, not one call each.
func TestBatchWaitGathersTrickle(t *testing.T) {
	env := testredis.New(t)
	s := newStreams(env)
	var mu sync.Mutex
	var calls, handled int
	cfg := s.config("c", testLog(t))
	cfg.Concurrency = 1
	cfg.BatchSize = 500
	cfg.BatchWait = 100 * time.Millisecond
	cfg.BatchHandler = func(ctx context.Context, es []Entry) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		handled += len(es)
		return nil
	}
	startPool(t, env.Client, cfg)
	const n = 60
	for i := 0; i < n; i++ {
		if _, err := Publish(context.Background(), env.Client, s.stream, map[string]string{"n": fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // a trickle: one entry at a time
	}
	waitFor(t, "every entry", func() bool { mu.Lock(); defer mu.Unlock(); return handled == n })
	mu.Lock()
	defer mu.Unlock()
	// Over ~300ms of trickle with a 100ms gather, a handful of calls; without
	// BatchWait it would be about one call per entry.
	if calls > n/4 {
		t.Fatalf("%d entries took %d handler calls: the trickle was not gathered into batches", n, calls)
	}
}
