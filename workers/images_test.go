package workers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/secretbox"
	"github.com/relaydev/relay/internal/testredis"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/session"
)

// imageRig is a Redis, the fake upstream, the shared session, an image
// worker and the queue that waits for its results.
type imageRig struct {
	t      testing.TB
	env    *testredis.Env
	keys   keyspace.Keyspace
	fake   *fakevs.Fake
	worker *ImageWorker
	queue  *ImageQueue
	files  *ImageFiles
	log    zerolog.Logger
}

func newImageRig(t testing.TB, maxDeliveries int64) *imageRig {
	t.Helper()
	env := testredis.New(t)
	keys := keyspace.New(env.Prefix)
	f := fakevs.New(fakevs.Options{})
	up := httptest.NewServer(f)
	t.Cleanup(up.Close)
	box, err := secretbox.New(strings.Repeat("k", 32))
	if err != nil {
		t.Fatal(err)
	}
	log := testLog(t)
	client := vs.New(vs.Options{BaseURL: up.URL})
	sess := session.NewVS(session.VSOptions{Redis: env.Client, Keys: keys, Box: box, Client: client,
		Email: "user@example.com", Password: "secret", Log: log, Poll: 10 * time.Millisecond})
	if err := sess.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sess.Stop)
	files := NewImageFiles(env.Client, keys, 0)
	w := NewImageWorker(ImageWorkerOptions{Redis: env.Client, Keys: keys,
		Caller:  &vs.Caller{Client: client, Creds: sess, Attempts: 1},
		Archive: NewArchiveQueue(env.Client, keys), Files: files, MaxDeliveries: maxDeliveries, Log: log})
	q := NewImageQueue(env.Client, keys, "inbox-"+uuid.NewString()[:8], log)
	if err := q.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(q.Stop)
	return &imageRig{t: t, env: env, keys: keys, fake: f, worker: w, queue: q, files: files, log: log}
}

// pool starts an image pool on the rig's stream.
func (r *imageRig) pool(consumer string, tweak func(*Config)) *Pool {
	cfg := r.worker.PoolConfig(consumer, 4, 30*time.Second, nil)
	cfg.Backoff = func(int64) time.Duration { return 10 * time.Millisecond }
	if tweak != nil {
		tweak(&cfg)
	}
	return startPool(r.t, r.env.Client, cfg)
}

func (r *imageRig) request(prompt string, n int, format string) ImageRequest {
	return ImageRequest{ID: uuid.NewString(), Model: "dall-e-3-vs", Prompt: prompt, Size: "1024x1024",
		Format: format, N: n, Deadline: time.Now().Add(30 * time.Second)}
}

func TestImageJobsBothFormats(t *testing.T) {
	r := newImageRig(t, 5)
	r.pool("a", nil)
	want := fakevs.FakeImage("a red fox")
	for _, mode := range []fakevs.ImageMode{fakevs.ImageAsFile, fakevs.ImageAsURL} {
		r.fake.SetImages(fakevs.ImageBehaviour{Mode: mode})
		for _, format := range []string{FormatURL, FormatB64} {
			t.Run(fmt.Sprintf("mode=%d/format=%s", mode, format), func(t *testing.T) {
				res, err := r.queue.Generate(context.Background(), r.request("a red fox", 2, format))
				if err != nil {
					t.Fatal(err)
				}
				if len(res) != 2 {
					t.Fatalf("%d results", len(res))
				}
				for i, x := range res {
					if x.Index != i || x.Err != nil {
						t.Fatalf("result %d: %+v", i, x)
					}
					var got []byte
					switch {
					case format == FormatB64:
						got, err = base64.StdEncoding.DecodeString(x.B64)
						if err != nil || x.MimeType != "image/png" {
							t.Fatalf("b64 result: %v, type %q", err, x.MimeType)
						}
					case mode == fakevs.ImageAsFile:
						typ, data, err := r.files.Get(context.Background(), x.FileID)
						if err != nil || typ != "image/png" {
							t.Fatalf("kept file %q: %v, type %q", x.FileID, err, typ)
						}
						got = data
						ttl := r.env.Client.PTTL(context.Background(), r.keys.ImageFile(x.FileID)).Val()
						if ttl <= 59*time.Minute || ttl > time.Hour {
							t.Fatalf("kept file TTL %s, want an hour", ttl)
						}
					default:
						if x.URL == "" || x.FileID != "" {
							t.Fatalf("URL result %+v", x)
						}
						resp, err := http.Get(x.URL)
						if err != nil {
							t.Fatal(err)
						}
						var b bytes.Buffer
						_, _ = b.ReadFrom(resp.Body)
						resp.Body.Close()
						got = b.Bytes()
					}
					if !bytes.Equal(got, want) {
						t.Fatalf("result %d: image bytes differ from the upstream's", i)
					}
					if mode == fakevs.ImageAsURL && !strings.HasPrefix(x.RevisedPrompt, "a red fox") {
						t.Fatalf("revised prompt %q", x.RevisedPrompt)
					}
				}
			})
		}
	}
	for _, req := range r.fake.ImageRequests() {
		if req.Settings["modelId"] != "dall-e-3-vs" || req.Settings["size"] != "1024x1024" || req.Content != "a red fox" {
			t.Fatalf("upstream got %+v", req)
		}
	}
	// Every image chat is queued for archiving.
	n := int64(len(r.fake.Chats()))
	if got := r.env.Client.XLen(context.Background(), r.keys.Stream(ArchiveStream)).Val(); got != n || n != 8 {
		t.Fatalf("%d archive jobs for %d chats", got, n)
	}
}

func TestImageRefusalAnswersAtOnce(t *testing.T) {
	r := newImageRig(t, 5)
	r.pool("a", nil)
	r.fake.SetImages(fakevs.ImageBehaviour{Refuse: "Your request was rejected by the safety system."})
	_, err := r.queue.Generate(context.Background(), r.request("something", 1, FormatURL))
	var ie *ImageError
	if !errors.As(err, &ie) || ie.Status != http.StatusBadRequest || !strings.Contains(ie.Message, "rejected by the safety system") {
		t.Fatalf("error %v", err)
	}
	if s := r.fake.ImageStats(); s.Started != 1 || s.Refused != 1 {
		t.Fatalf("a refusal was retried: %+v", s)
	}
}

func TestImageUpstream4xxGivesItsReason(t *testing.T) {
	r := newImageRig(t, 5)
	r.pool("a", nil)
	r.fake.FailNewChat(http.StatusNotFound)
	_, err := r.queue.Generate(context.Background(), r.request("x", 1, FormatURL))
	var ie *ImageError
	if !errors.As(err, &ie) || ie.Status != http.StatusBadGateway || !strings.Contains(ie.Message, "404") {
		t.Fatalf("error %v", err)
	}
}

func TestImageJobReloginOnce(t *testing.T) {
	r := newImageRig(t, 5)
	r.pool("a", nil)
	if _, err := r.queue.Generate(context.Background(), r.request("x", 1, FormatB64)); err != nil {
		t.Fatal(err)
	}
	r.fake.ExpireSessions()
	if _, err := r.queue.Generate(context.Background(), r.request("y", 1, FormatB64)); err != nil {
		t.Fatal(err)
	}
	if n := r.fake.Logins(); n != 2 {
		t.Fatalf("%d logins, want 2", n)
	}
}

func TestFailingImageJobIsDeadLetteredAndAnswered(t *testing.T) {
	r := newImageRig(t, 3)
	p := r.pool("a", nil)
	r.fake.FailChat(503, 503, 503, 503)
	_, err := r.queue.Generate(context.Background(), r.request("x", 1, FormatURL))
	var ie *ImageError
	if !errors.As(err, &ie) || ie.Status != http.StatusBadGateway || !strings.Contains(ie.Message, "503") {
		t.Fatalf("error %v", err)
	}
	waitFor(t, "the job in the dead-letter stream", func() bool {
		return r.env.Client.XLen(context.Background(), r.keys.DeadLetter(ImageStream)).Val() == 1 && p.Stats().Dead == 1
	})
	if s := p.Stats(); s.Dead != 1 || s.Retried != 2 {
		t.Fatalf("pool stats %+v", s)
	}
	if n := r.fake.RequestsTo("/api/chat"); n != 3 {
		t.Fatalf("%d upstream attempts, want 3 (MaxDeliveries)", n)
	}
}

func TestImageJobIsIdempotent(t *testing.T) {
	r := newImageRig(t, 5)
	ctx := context.Background()
	job := Entry{ID: "1-0", Deliveries: 1, Values: map[string]string{
		"job": "req1.0", "inbox": "box", "i": "0", "model": "dall-e-3-vs", "prompt": "a cat", "size": "",
		"format": FormatB64, "deadline": strconv.FormatInt(time.Now().Add(time.Minute).UnixMilli(), 10)}}
	if err := r.worker.Handle(ctx, job); err != nil {
		t.Fatal(err)
	}
	job.Deliveries = 2 // redelivered: its first worker died before acknowledging
	if err := r.worker.Handle(ctx, job); err != nil {
		t.Fatal(err)
	}
	if s := r.fake.ImageStats(); s.Started != 1 {
		t.Fatalf("generated %d times, want once", s.Started)
	}
	got := r.env.Client.LRange(ctx, r.keys.ImageInbox("box"), 0, -1).Val()
	if len(got) != 2 || got[0] != got[1] {
		t.Fatalf("inbox %d entries, want the same result twice", len(got))
	}
	if ttl := r.env.Client.PTTL(ctx, r.keys.ImageInbox("box")).Val(); ttl <= 0 {
		t.Fatalf("inbox has no TTL (%s)", ttl)
	}
	if _, ok := r.fake.ImageRequests()[0].Settings["size"]; ok {
		t.Fatal("an empty size was sent upstream")
	}
}

func TestExpiredImageJobIsSkipped(t *testing.T) {
	r := newImageRig(t, 5)
	job := Entry{ID: "1-0", Deliveries: 1, Values: map[string]string{
		"job": "req1.0", "inbox": "box", "i": "0", "model": "m", "prompt": "a cat",
		"format": FormatURL, "deadline": strconv.FormatInt(time.Now().Add(-time.Second).UnixMilli(), 10)}}
	if err := r.worker.Handle(context.Background(), job); err != nil {
		t.Fatal(err)
	}
	if r.fake.ImageStats().Started != 0 || r.env.Client.Exists(context.Background(), r.keys.ImageInbox("box")).Val() != 0 {
		t.Fatal("an expired job ran")
	}
}

func TestBadImageJobIsDeadLettered(t *testing.T) {
	r := newImageRig(t, 5)
	err := r.worker.Handle(context.Background(), Entry{ID: "1-0", Deliveries: 1, Values: map[string]string{"job": "x"}})
	if !errors.Is(err, ErrPermanent) {
		t.Fatalf("error %v, want permanent", err)
	}
}

func TestImageResultsKeepJobOrderAndDropDuplicates(t *testing.T) {
	r := newImageRig(t, 5) // no pool: this test answers the jobs itself
	ctx := context.Background()
	req := r.request("p", 3, FormatB64)
	type out struct {
		res []ImageResult
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := r.queue.Generate(ctx, req)
		done <- out{res, err}
	}()
	waitFor(t, "three jobs queued", func() bool { return r.env.Client.XLen(ctx, r.keys.Stream(ImageStream)).Val() == 3 })
	entries := r.env.Client.XRange(ctx, r.keys.Stream(ImageStream), "-", "+").Val()
	for _, i := range []int{2, 0, 2, 1} {
		e := entries[i]
		job, err := parseImageJob(stringValues(e.Values))
		if err != nil {
			t.Fatal(err)
		}
		if err := r.worker.send(ctx, job, ImageResult{Request: job.Request, Index: job.Index, B64: "img" + strconv.Itoa(i)}, false); err != nil {
			t.Fatal(err)
		}
	}
	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	for i, x := range o.res {
		if x.B64 != "img"+strconv.Itoa(i) {
			t.Fatalf("result %d is %q", i, x.B64)
		}
	}
	// A result for a request nobody waits for any more is dropped.
	job, _ := parseImageJob(stringValues(entries[0].Values))
	if err := r.worker.send(ctx, job, ImageResult{Request: job.Request, Index: 0}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the late result taken off the inbox", func() bool {
		return r.env.Client.LLen(ctx, r.keys.ImageInbox(r.queue.inbox)).Val() == 0
	})
}

func TestImageRequestTimesOut(t *testing.T) {
	r := newImageRig(t, 5)
	r.pool("a", nil)
	r.fake.SetImages(fakevs.ImageBehaviour{Delay: time.Minute})
	req := r.request("slow", 1, FormatURL)
	req.Deadline = time.Now().Add(300 * time.Millisecond)
	if _, err := r.queue.Generate(context.Background(), req); !errors.Is(err, ErrImageTimeout) {
		t.Fatalf("error %v, want a timeout", err)
	}
	// The job is dropped at its deadline (upstream request cancelled) and
	// acknowledged, not retried.
	waitFor(t, "the expired job acknowledged", func() bool {
		p, err := r.env.Client.XPending(context.Background(), r.keys.Stream(ImageStream), ImageStream).Result()
		return err == nil && p.Count == 0
	})
	if s := r.fake.ImageStats(); s.Started != 1 || s.Finished != 0 {
		t.Fatalf("fake stats %+v", s)
	}
}

// Two pools whose visibility timeout is far shorter than a generation: the
// keepers renew running jobs, so none is taken over and run a second time.
func TestImageJobNeverRunsTwiceConcurrently(t *testing.T) {
	r := newImageRig(t, 5)
	tweak := func(c *Config) { c.VisibilityTimeout = 150 * time.Millisecond }
	pa, pb := r.pool("a", tweak), r.pool("b", tweak)
	r.fake.SetImages(fakevs.ImageBehaviour{Delay: 900 * time.Millisecond})
	var wg sync.WaitGroup
	errs := make(chan error, 6)
	for i := range 6 {
		wg.Go(func() {
			_, err := r.queue.Generate(context.Background(), r.request("prompt "+strconv.Itoa(i), 1, FormatURL))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s := r.fake.ImageStats()
	if s.Started != 6 || s.MaxSamePrompt != 1 {
		t.Fatalf("fake stats %+v: a job ran twice", s)
	}
	waitFor(t, "six jobs acknowledged", func() bool { return pa.Stats().OK+pb.Stats().OK == 6 })
	sa, sb := pa.Stats(), pb.Stats()
	if sa.OK+sb.OK != 6 || sa.Lost+sb.Lost+sa.Reclaimed+sb.Reclaimed != 0 {
		t.Fatalf("pool stats %+v %+v", sa, sb)
	}
}

// A worker process killed in the middle of a job: another pool reclaims it
// and the waiting request still gets its image.
func TestKilledImageWorkerJobIsReclaimed(t *testing.T) {
	r := newImageRig(t, 5)
	ctx := context.Background()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=block",
		"RELAY_WORKERS_TEST_ADDR="+r.env.Addr, "RELAY_WORKERS_TEST_STREAM="+r.keys.Stream(ImageStream),
		"RELAY_WORKERS_TEST_DEAD="+r.keys.DeadLetter(ImageStream), "RELAY_WORKERS_TEST_GROUP="+ImageStream)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	// The helper creates the group; wait for it so the job is not missed.
	waitFor(t, "the helper's consumer group", func() bool {
		g, err := r.env.Client.XInfoGroups(ctx, r.keys.Stream(ImageStream)).Result()
		return err == nil && len(g) == 1
	})

	type result struct {
		res []ImageResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := r.queue.Generate(ctx, r.request("survivor", 1, FormatB64))
		done <- result{res, err}
	}()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "HANDLING ") {
		t.Fatalf("helper said %q (%v)", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	p := r.pool("rescuer", func(c *Config) { c.VisibilityTimeout = 300 * time.Millisecond })
	got := <-done
	if got.err != nil {
		t.Fatal(got.err)
	}
	data, _ := base64.StdEncoding.DecodeString(got.res[0].B64)
	if !bytes.Equal(data, fakevs.FakeImage("survivor")) {
		t.Fatal("wrong image")
	}
	waitFor(t, "the reclaimed job acknowledged", func() bool { return p.Stats().OK == 1 })
	if s := p.Stats(); s.Reclaimed != 1 {
		t.Fatalf("rescuer stats %+v", s)
	}
}

// BenchmarkImageJobs measures enqueue-to-pickup latency of image jobs and
// jobs/s through Generate with an instant fake upstream: one request at a
// time (the hand-off alone), and 8 requests at a time (the machine busy
// with the whole flow: 4 fake upstream calls, Redis and the waiters).
func BenchmarkImageJobs(b *testing.B) {
	for _, bc := range []struct {
		name     string
		parallel bool
	}{{"serial", false}, {"parallel=8", true}} {
		b.Run(bc.name, func(b *testing.B) {
			r := newImageRig(b, 5)
			var mu sync.Mutex
			var pickup []time.Duration
			cfg := r.worker.PoolConfig("bench", 16, 30*time.Second, nil)
			cfg.Handler = func(ctx context.Context, e Entry) error {
				at, _ := strconv.ParseInt(e.Values["at_us"], 10, 64)
				d := time.Since(time.UnixMicro(at))
				mu.Lock()
				pickup = append(pickup, d)
				mu.Unlock()
				return r.worker.Handle(ctx, e)
			}
			startPool(b, r.env.Client, cfg)
			ctx := context.Background()
			one := func() bool {
				if _, err := r.queue.Generate(ctx, r.request("bench", 1, FormatURL)); err != nil {
					b.Error(err)
					return false
				}
				return true
			}
			b.ResetTimer()
			start := time.Now()
			if bc.parallel {
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() && one() {
					}
				})
			} else {
				for range b.N {
					if !one() {
						break
					}
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "jobs/s")
			slices.Sort(pickup)
			if len(pickup) > 0 {
				pct := func(q float64) float64 {
					return float64(pickup[min(len(pickup)-1, int(q*float64(len(pickup))))].Microseconds())
				}
				b.ReportMetric(pct(0.50), "pickup-p50-µs")
				b.ReportMetric(pct(0.99), "pickup-p99-µs")
			}
		})
	}
}
