// Command loadgen measures what the relay adds to a request, on one machine,
// the way credible gateway benchmarks do: an open-loop load (constant arrival
// rate, latency from each request's due time) against a fake upstream with
// a fixed shape, each scenario run directly to the fake and through the
// relay in the same run, under the same co-location.
//
//	go run ./cmd/loadgen            # everything, about 3-4 minutes on 2 cores
//	go run ./cmd/loadgen -quick     # shorter runs, for a smoke check
//
// It starts a redis-server (which must be installed), the fake Anthropic
// upstream (in this process) and the relay (built from ./cmd/relay, run as
// a real process with pprof on a loopback port), creates an admin session,
// an API key with limits and an account pointing at the fake, then runs:
//
//  1. non-streaming chat at several rates (full auth, limits, usage events);
//  2. streaming: time to first byte and the gaps between events;
//  3. many concurrent open streams: relay RSS and memory per stream;
//  4. image job hand-off on the worker pool: enqueue to pick-up, jobs/s;
//  5. the usage pipeline: lag at 1,000 req/s, events/s on a backlog;
//  6. sustained throughput: the highest rate with p99 <= 10 ms;
//
// and takes CPU and allocation profiles of the relay under the non-streaming
// load. It prints a table and writes artifacts/bench-<time>.json (plus the
// profiles) so runs can be compared between commits.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type options struct {
	quick       bool
	rates       []float64
	duration    time.Duration
	sustained   []float64
	streams     []int
	outDir      string
	logLevel    string
	skip        map[string]bool
	profileSecs int
	relayBin    string
	keep        bool
}

func parseRates(s string) ([]float64, error) {
	var out []float64
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, v)
	}
	return out, nil
}

func parseOptions(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&o.quick, "quick", false, "shorter runs and fewer points (a smoke check, not a measurement)")
	rates := fs.String("rates", "100,500,1000,2000", "scenario 1: non-streaming rates, req/s")
	fs.DurationVar(&o.duration, "duration", 6*time.Second, "scenario 1 and 6: length of each run")
	sustained := fs.String("sustained", "3000,4000,5000,6000,7000,8000", "scenario 6: rates tried in order until one fails")
	streams := fs.String("streams", "1000,5000", "scenario 3: numbers of concurrent open streams")
	fs.StringVar(&o.outDir, "out", "artifacts", "directory for the JSON report and profiles")
	fs.StringVar(&o.logLevel, "relay-log-level", "info", "the relay's LOG_LEVEL (info is the production default: one access-log line per request)")
	skip := fs.String("skip", "", "comma-separated scenarios to leave out: nonstreaming,streaming,open,images,usage,sustained,profile")
	fs.IntVar(&o.profileSecs, "profile-seconds", 8, "length of the CPU and allocation profiles")
	fs.BoolVar(&o.keep, "keep", false, "keep the run's directory (relay and redis logs) and say where it is")
	fs.StringVar(&o.relayBin, "relay-bin", "", "use this relay binary instead of building ./cmd/relay")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	var err error
	if o.rates, err = parseRates(*rates); err != nil {
		return o, fmt.Errorf("-rates: %w", err)
	}
	if o.sustained, err = parseRates(*sustained); err != nil {
		return o, fmt.Errorf("-sustained: %w", err)
	}
	for _, f := range strings.Split(*streams, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("-streams: %q is not a positive number", f)
		}
		o.streams = append(o.streams, n)
	}
	o.skip = map[string]bool{}
	known := map[string]bool{"nonstreaming": true, "streaming": true, "open": true, "images": true, "usage": true, "sustained": true, "profile": true}
	for _, s := range strings.Split(*skip, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !known[s] {
			return o, fmt.Errorf("-skip: unknown scenario %q", s)
		}
		o.skip[s] = true
	}
	if o.quick {
		o.duration = min(o.duration, 2*time.Second)
		o.profileSecs = min(o.profileSecs, 3)
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "loadgen:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	rep, err := measure(ctx, o, stderr)
	if rep != nil {
		rep.Targets = rep.checkTargets()
		rep.print(stdout)
		if path, werr := writeReport(o.outDir, rep); werr != nil {
			fmt.Fprintln(stderr, "loadgen: writing the report:", werr)
		} else {
			fmt.Fprintf(stdout, "\nreport: %s\n", path)
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadgen:", err)
		return 1
	}
	return 0
}

func writeReport(dir string, rep *Report) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, "bench-"+rep.Meta.Started.UTC().Format("20060102-150405")+".json")
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return "", err
	}
	return path, os.WriteFile(path, append(b, '\n'), 0o644)
}

// measure sets everything up and runs the scenarios. It returns what it
// measured so far even when a step fails.
func measure(ctx context.Context, o options, stderr io.Writer) (*Report, error) {
	started := time.Now()
	progress := func(format string, args ...any) {
		fmt.Fprintf(stderr, "%6.1fs "+format+"\n", append([]any{time.Since(started).Seconds()}, args...)...)
	}
	if _, err := os.Stat("go.mod"); err != nil {
		return nil, errors.New("run it from the repository's root: go run ./cmd/loadgen")
	}
	dir, err := os.MkdirTemp("", "loadgen")
	if err != nil {
		return nil, err
	}
	if o.keep {
		progress("logs in %s", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	r := &rig{dir: dir, log: stderr, logLevel: o.logLevel}
	defer r.close()

	rep := &Report{Meta: machine(started, o)}
	defer func() { rep.Meta.Elapsed = time.Since(started).Round(time.Second).String() }()
	if o.relayBin != "" {
		r.relayBin = o.relayBin
	} else {
		progress("building ./cmd/relay")
		if err := r.buildRelay(ctx); err != nil {
			return nil, err
		}
	}
	progress("starting redis-server, the fake upstream and the relay")
	if err := r.startRedis(ctx); err != nil {
		return nil, err
	}
	rep.Meta.Redis = redisVersion(ctx, r)
	if err := r.startFake(); err != nil {
		return nil, err
	}
	pw, err := r.startRelay(ctx)
	if err != nil {
		return nil, err
	}
	if err := r.setUp(ctx, pw); err != nil {
		return nil, fmt.Errorf("setting the relay up: %w", err)
	}
	b := newBench(r, progress)
	warm := 2 * time.Second
	if o.quick {
		warm = time.Second
	}
	progress("warming up both paths")
	b.warmUp(ctx, warm)

	if !o.skip["nonstreaming"] {
		progress("1. non-streaming chat at %v req/s, %v each, direct then relay", o.rates, o.duration)
		lagAt := 0.0
		if !o.skip["usage"] {
			lagAt = 1000
		}
		rep.NonStreaming, rep.Usage = b.nonStreaming(ctx, o.rates, o.duration, lagAt)
	}
	if ctx.Err() != nil {
		return rep, ctx.Err()
	}
	if !o.skip["profile"] {
		progress("profiling the relay at 1000 req/s for %ds", o.profileSecs)
		p, err := b.profile(ctx, 1000, o.profileSecs, o.outDir, started)
		if err != nil {
			progress("  profile failed: %v", err)
		}
		rep.Profile = p
	}
	if !o.skip["streaming"] {
		progress("2. streaming fidelity")
		d := 4 * time.Second
		if o.quick {
			d = 2 * time.Second
		}
		rep.Streaming = b.streaming(ctx, 20, d)
	}
	if !o.skip["open"] {
		for _, n := range o.streams {
			if o.quick {
				n = min(n, 500)
			}
			progress("3. %d concurrent open streams", n)
			rep.OpenStreams = append(rep.OpenStreams, b.openStreams(ctx, n, 1000))
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
		}
	}
	if !o.skip["images"] {
		progress("4. image job hand-off")
		d, backlog := 3*time.Second, 20_000
		if o.quick {
			d, backlog = time.Second, 5000
		}
		im, err := b.images(ctx, 200, d, backlog, 16)
		if err != nil {
			return rep, fmt.Errorf("images: %w", err)
		}
		rep.Images = im
	}
	if !o.skip["usage"] {
		progress("5. usage pipeline: backlog")
		n := 50_000
		if o.quick {
			n = 10_000
		}
		rate, err := b.usageBacklog(ctx, n)
		if err != nil {
			return rep, fmt.Errorf("usage: %w", err)
		}
		if rep.Usage == nil {
			rep.Usage = &UsageResult{}
		}
		rep.Usage.Backlog, rep.Usage.MaxEventsSec = n, rate
		progress("  %.0f events/s", rate)
	}
	if !o.skip["sustained"] {
		rates := o.sustained
		d := min(o.duration, 5*time.Second)
		if o.quick {
			rates = rates[:min(2, len(rates))]
		}
		progress("6. sustained throughput: %v req/s, %v each, until p99 > 10 ms", rates, d)
		rep.Sustained = b.sustained(ctx, rates, d)
	}
	return rep, ctx.Err()
}

// profile takes a CPU and an allocation profile of the relay while it
// serves rate req/s, and the top of each if the go tool can read them.
func (b *bench) profile(ctx context.Context, rate float64, secs int, outDir string, started time.Time) (*ProfileResult, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return nil, err
	}
	stamp := started.UTC().Format("20060102-150405")
	p := &ProfileResult{Rate: rate,
		CPU:    filepath.Join(outDir, "bench-"+stamp+"-cpu.pprof"),
		Allocs: filepath.Join(outDir, "bench-"+stamp+"-allocs.pprof")}
	errs := make(chan error, 2)
	fetch := func(path, file string) {
		resp, err := http.Get("http://" + b.r.pprofAddr + path)
		if err != nil {
			errs <- err
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			errs <- fmt.Errorf("%s: status %d", path, resp.StatusCode)
			return
		}
		f, err := os.Create(file)
		if err != nil {
			errs <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		f.Close()
		errs <- err
	}
	go func() {
		time.Sleep(500 * time.Millisecond) // into the steady state
		go fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), p.CPU)
		fetch(fmt.Sprintf("/debug/pprof/allocs?seconds=%d", secs), p.Allocs)
	}()
	b.load(ctx, b.relay, rate, time.Duration(secs)*time.Second+2*time.Second)
	var first error
	for range 2 {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return p, first
	}
	p.TopCPU = pprofTop(b.r.relayBin, p.CPU, "")
	p.TopAlloc = pprofTop(b.r.relayBin, p.Allocs, "-sample_index=alloc_space")
	return p, nil
}

// pprofTop is the first lines of `go tool pprof -top`, or nothing.
func pprofTop(bin, file, extra string) []string {
	args := []string{"tool", "pprof", "-top", "-nodecount=15"}
	if extra != "" {
		args = append(args, extra)
	}
	out, err := exec.Command("go", append(args, bin, file)...).Output()
	if err != nil {
		return nil
	}
	var lines []string
	on := false
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "flat") {
			on = true
		}
		if on && strings.TrimSpace(l) != "" {
			lines = append(lines, strings.TrimSpace(l))
		}
	}
	return lines
}

// machine records what the numbers depend on.
func machine(started time.Time, o options) Meta {
	m := Meta{Started: started, GoVersion: runtime.Version(), GOMAXPROCS: runtime.GOMAXPROCS(0), NumCPU: runtime.NumCPU(), Quick: o.quick,
		Colocation: fmt.Sprintf("co-located on %d CPUs: load generator + fake upstream (one process), relay, redis-server; "+
			"direct and relay runs share the same co-location, so the difference is the relay's cost", runtime.NumCPU()),
		RelayEnv: []string{"LOG_LEVEL=" + o.logLevel, "REDIS_URL=loopback redis-server (no persistence)", "PPROF_ADDR=loopback"},
	}
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPUModel = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if out, err := exec.Command("git", "rev-parse", "HEAD").Output(); err == nil {
		m.GitCommit = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no").Output(); err == nil {
		m.GitDirty = len(strings.TrimSpace(string(out))) > 0
	}
	return m
}

func redisVersion(ctx context.Context, r *rig) string {
	info, err := r.rdb.Info(ctx, "server").Result()
	if err != nil {
		return ""
	}
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "redis_version:"); ok {
			return v
		}
	}
	return ""
}
