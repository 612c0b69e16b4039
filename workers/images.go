package workers

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/vs"
)

// Image generation runs as jobs: the ingress turns a request for n images
// into n entries on the images stream (ImageQueue.Generate), any replica's
// image pool runs them (ImageWorker.Handle), and each result comes back to
// the waiting process through its inbox list in Redis.

// ImageStream names the stream of image jobs: one entry per generation, with
// the fields job (the job's id), inbox (where its result goes), i (its index
// in the request), model (the upstream model id), prompt, size (WxH, or empty
// for the upstream's default), format (url or b64_json), deadline (unix ms:
// nobody waits after it) and at_us (enqueue time, unix µs). Nothing secret.
const ImageStream = "images"

// Response formats a client may ask for.
const (
	FormatURL = "url"
	FormatB64 = "b64_json"
)

// ImageFileTTL is how long an image kept for a URL answer stays served.
const ImageFileTTL = time.Hour

// inboxTTL is how long an inbox lives after its last result: a live
// process drains it at once, so only a dead process's inbox ever expires.
const inboxTTL = 10 * time.Minute

// ErrImageTimeout is returned by ImageQueue.Generate when the request's
// deadline passed before every job answered.
var ErrImageTimeout = errors.New("image jobs did not finish before their deadline")

// ImageRequest is one client request for N images.
type ImageRequest struct {
	ID       string // unique per request; its jobs are ID.0 … ID.N-1
	Model    string // upstream model id (settings.modelId)
	Prompt   string
	Size     string // WxH; empty lets the upstream choose
	Format   string // FormatURL or FormatB64
	N        int
	Deadline time.Time // the client waits until then; later results are dropped
}

// ImageResult is what one job produced: exactly one of FileID (bytes kept
// under ImageFiles, for FormatURL), URL (the upstream's own URL, for
// FormatURL), B64 (for FormatB64) or Err.
type ImageResult struct {
	Request       string      `json:"req"`
	Index         int         `json:"i"`
	FileID        string      `json:"file,omitempty"`
	MimeType      string      `json:"mime,omitempty"`
	URL           string      `json:"url,omitempty"`
	B64           string      `json:"b64,omitempty"`
	RevisedPrompt string      `json:"revised,omitempty"`
	Err           *ImageError `json:"err,omitempty"`
}

// ImageError is a failed job, described for the client: the HTTP status and
// code to answer with, a message that gives the upstream's reason, and the
// error class for usage accounting.
type ImageError struct {
	Status  int    `json:"status"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Class   string `json:"class"`
}

func (e *ImageError) Error() string { return e.Message }

// ---------------------------------------------------------------------------
// Waiting side

// ImageQueue enqueues image jobs and waits for their results. One reader
// per process (BLPOP with a short block) takes every result pushed to the
// process's inbox and hands it to the request waiting for it, so waiting
// requests hold no Redis connection of their own. Start it once; Stop it
// once or more.
type ImageQueue struct {
	rdb      redis.UniversalClient
	stream   string
	inbox    string
	inboxKey string
	log      zerolog.Logger
	block    time.Duration

	mu      sync.Mutex
	waiters map[string]*imageWait
	running bool

	ctx       context.Context
	cancel    context.CancelFunc
	done      chan struct{}
	startOnce sync.Once
	stopOnce  sync.Once
}

// NewImageQueue returns a queue on keyspace.Stream(ImageStream) whose
// results come back to the inbox named inbox (unique per process, e.g.
// ConsumerName()).
func NewImageQueue(rdb redis.UniversalClient, keys keyspace.Keyspace, inbox string, log zerolog.Logger) *ImageQueue {
	ctx, cancel := context.WithCancel(context.Background())
	return &ImageQueue{
		rdb: rdb, stream: keys.Stream(ImageStream), inbox: inbox, inboxKey: keys.ImageInbox(inbox), log: log,
		block: time.Second, waiters: map[string]*imageWait{},
		ctx: ctx, cancel: cancel, done: make(chan struct{}),
	}
}

// Start starts the inbox reader.
func (q *ImageQueue) Start(context.Context) error {
	q.startOnce.Do(func() {
		q.mu.Lock()
		q.running = true
		q.mu.Unlock()
		go q.read()
	})
	return nil
}

// Stop ends the inbox reader; requests still waiting fail at once. It is
// idempotent.
func (q *ImageQueue) Stop() {
	q.stopOnce.Do(func() {
		q.mu.Lock()
		wasRunning := q.running
		q.running = false
		q.mu.Unlock()
		q.cancel()
		if wasRunning {
			<-q.done
		}
	})
}

// imageWait is one request waiting for its results.
type imageWait struct {
	mu      sync.Mutex
	results []ImageResult
	have    []bool
	got     int
	failed  *ImageError
	done    chan struct{}
	closed  bool
}

// take records r; duplicates (a job re-sent after a redelivery) are ignored.
func (w *imageWait) take(r ImageResult) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || r.Index < 0 || r.Index >= len(w.results) || w.have[r.Index] {
		return
	}
	w.have[r.Index] = true
	w.results[r.Index] = r
	w.got++
	if r.Err != nil && w.failed == nil {
		w.failed = r.Err
	}
	if w.failed != nil || w.got == len(w.results) {
		w.closed = true
		close(w.done)
	}
}

// Generate enqueues r.N jobs and waits until all of them answered, one
// failed (its *ImageError is returned), r.Deadline passed (ErrImageTimeout)
// or ctx ended. Results are in job order.
func (q *ImageQueue) Generate(ctx context.Context, r ImageRequest) ([]ImageResult, error) {
	if r.N < 1 || r.ID == "" || r.Deadline.IsZero() {
		return nil, fmt.Errorf("image request: need an id, a deadline and at least one image")
	}
	w := &imageWait{results: make([]ImageResult, r.N), have: make([]bool, r.N), done: make(chan struct{})}
	q.mu.Lock()
	if !q.running {
		q.mu.Unlock()
		return nil, errors.New("image queue is not running")
	}
	q.waiters[r.ID] = w
	q.mu.Unlock()
	defer func() {
		q.mu.Lock()
		delete(q.waiters, r.ID)
		q.mu.Unlock()
	}()

	at := strconv.FormatInt(time.Now().UnixMicro(), 10)
	deadline := strconv.FormatInt(r.Deadline.UnixMilli(), 10)
	_, err := q.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range r.N {
			p.XAdd(ctx, &redis.XAddArgs{Stream: q.stream, Values: []string{
				"job", r.ID + "." + strconv.Itoa(i), "inbox", q.inbox, "i", strconv.Itoa(i),
				"model", r.Model, "prompt", r.Prompt, "size", r.Size, "format", r.Format,
				"deadline", deadline, "at_us", at,
			}})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue image jobs: %w", err)
	}

	t := time.NewTimer(time.Until(r.Deadline))
	defer t.Stop()
	select {
	case <-w.done:
	case <-t.C:
		return nil, ErrImageTimeout
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-q.ctx.Done():
		return nil, errors.New("image queue stopped")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.failed != nil {
		return nil, w.failed
	}
	return w.results, nil
}

// read takes results off the inbox until Stop.
func (q *ImageQueue) read() {
	defer close(q.done)
	var lastWarn time.Time
	for q.ctx.Err() == nil {
		vals, err := q.rdb.BLPop(q.ctx, q.block, q.inboxKey).Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue
		case err != nil:
			if q.ctx.Err() != nil {
				return
			}
			if time.Since(lastWarn) > 10*time.Second {
				lastWarn = time.Now()
				q.log.Warn().Err(err).Msg("cannot read image results; retrying")
			}
			sleepCtx(q.ctx, 200*time.Millisecond)
			continue
		}
		q.deliver(vals[1])
		// Drain what else arrived without blocking again.
		for q.ctx.Err() == nil {
			more, err := q.rdb.LPopCount(q.ctx, q.inboxKey, 64).Result()
			if err != nil || len(more) == 0 {
				break
			}
			for _, m := range more {
				q.deliver(m)
			}
		}
	}
}

func (q *ImageQueue) deliver(payload string) {
	var r ImageResult
	if err := json.Unmarshal([]byte(payload), &r); err != nil {
		q.log.Error().Err(err).Msg("unreadable image result dropped")
		return
	}
	q.mu.Lock()
	w := q.waiters[r.Request]
	q.mu.Unlock()
	if w == nil {
		q.log.Debug().Str("request", r.Request).Int("index", r.Index).Msg("late image result dropped; nobody waits for it")
		return
	}
	w.take(r)
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// ---------------------------------------------------------------------------
// Kept images

// ErrNoImageFile is returned by ImageFiles.Get for an unknown or expired id.
var ErrNoImageFile = errors.New("no such image")

var fileIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ImageFiles keeps generated images in Redis for an hour, under ids nobody
// can guess (128 random bits), so the relay can hand out URLs to them.
type ImageFiles struct {
	rdb  redis.UniversalClient
	keys keyspace.Keyspace
	ttl  time.Duration
}

// NewImageFiles returns the store; ttl 0 means ImageFileTTL.
func NewImageFiles(rdb redis.UniversalClient, keys keyspace.Keyspace, ttl time.Duration) *ImageFiles {
	if ttl <= 0 {
		ttl = ImageFileTTL
	}
	return &ImageFiles{rdb: rdb, keys: keys, ttl: ttl}
}

// Put keeps data and returns its id.
func (f *ImageFiles) Put(ctx context.Context, mimeType string, data []byte) (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	id := hex.EncodeToString(b)
	key := f.keys.ImageFile(id)
	_, err := f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, key, "type", mimeType, "data", data)
		p.PExpire(ctx, key, f.ttl)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("keep image: %w", err)
	}
	return id, nil
}

// Get returns a kept image's type and bytes, or ErrNoImageFile.
func (f *ImageFiles) Get(ctx context.Context, id string) (string, []byte, error) {
	if !fileIDPattern.MatchString(id) {
		return "", nil, ErrNoImageFile
	}
	vals, err := f.rdb.HMGet(ctx, f.keys.ImageFile(id), "type", "data").Result()
	if err != nil {
		return "", nil, err
	}
	typ, _ := vals[0].(string)
	data, _ := vals[1].(string)
	if typ == "" || data == "" {
		return "", nil, ErrNoImageFile
	}
	return typ, []byte(data), nil
}

// FileExtension is the file name extension for an image type ("" if none).
func FileExtension(mimeType string) string {
	switch mimeType {
	case "image/png":
		return ".png"
	case "image/jpeg":
		return ".jpg"
	case "image/webp":
		return ".webp"
	case "image/gif":
		return ".gif"
	}
	return ""
}

// ---------------------------------------------------------------------------
// Running side

// ImageWorkerOptions configure an ImageWorker. Zero values take the defaults
// in the comments.
type ImageWorkerOptions struct {
	Redis redis.UniversalClient
	Keys  keyspace.Keyspace
	// Caller opens image chats through the shared session (one re-login on
	// 401/403). Give it Attempts 1: the pool retries failed jobs.
	Caller  *vs.Caller
	Archive *ArchiveQueue // the image chats are archived through it (nil: not archived)
	Files   *ImageFiles   // default NewImageFiles(Redis, Keys, 0)
	// Fetch gets URL results asked for as b64_json; default a client with a
	// 30s timeout. FetchLimit caps what it reads (default 32 MB).
	Fetch      *http.Client
	FetchLimit int64
	// MaxDeliveries is the pool's (PoolConfig sets it): on the last one a
	// failing job answers its client with the error; default 5.
	MaxDeliveries int64
	Log           zerolog.Logger
}

// ImageWorker runs image jobs.
type ImageWorker struct {
	rdb        redis.UniversalClient
	keys       keyspace.Keyspace
	caller     *vs.Caller
	archive    *ArchiveQueue
	files      *ImageFiles
	fetch      *http.Client
	fetchLimit int64
	maxDeliv   int64
	log        zerolog.Logger
}

// NewImageWorker returns a worker.
func NewImageWorker(o ImageWorkerOptions) *ImageWorker {
	if o.Files == nil {
		o.Files = NewImageFiles(o.Redis, o.Keys, 0)
	}
	if o.Fetch == nil {
		o.Fetch = &http.Client{Timeout: 30 * time.Second}
	}
	if o.FetchLimit <= 0 {
		o.FetchLimit = 32 << 20
	}
	if o.MaxDeliveries <= 0 {
		o.MaxDeliveries = 5
	}
	return &ImageWorker{rdb: o.Redis, keys: o.Keys, caller: o.Caller, archive: o.Archive, files: o.Files,
		fetch: o.Fetch, fetchLimit: o.FetchLimit, maxDeliv: o.MaxDeliveries, log: o.Log}
}

// PoolConfig is the configuration of the pool that runs image jobs. timeout
// bounds one job (IMAGE_TIMEOUT: nobody waits longer); the visibility
// timeout keeps its default, since running jobs are renewed.
func (w *ImageWorker) PoolConfig(consumer string, concurrency int, timeout time.Duration, m *metrics.Metrics) Config {
	return Config{
		Stream:         w.keys.Stream(ImageStream),
		Group:          ImageStream,
		Consumer:       consumer,
		DeadLetter:     w.keys.DeadLetter(ImageStream),
		Handler:        w.Handle,
		Concurrency:    concurrency,
		MaxDeliveries:  w.maxDeliv,
		HandlerTimeout: timeout + 5*time.Second,
		Log:            w.log,
		Metrics:        m,
	}
}

// imageJob is one stream entry, parsed.
type imageJob struct {
	ID, Inbox, Request  string
	Index               int
	Model, Prompt, Size string
	Format              string
	Deadline            time.Time
}

func parseImageJob(v map[string]string) (imageJob, error) {
	j := imageJob{ID: v["job"], Inbox: v["inbox"], Model: v["model"], Prompt: v["prompt"], Size: v["size"], Format: v["format"]}
	req, idx, ok := strings.Cut(j.ID, ".")
	i, err := strconv.Atoi(idx)
	if !ok || req == "" || err != nil || v["i"] != idx {
		return j, fmt.Errorf("bad job id %q", j.ID)
	}
	j.Request, j.Index = req, i
	if j.Inbox == "" || j.Model == "" || j.Prompt == "" {
		return j, errors.New("job lacks inbox, model or prompt")
	}
	if j.Format != FormatURL && j.Format != FormatB64 {
		return j, fmt.Errorf("bad format %q", j.Format)
	}
	ms, err := strconv.ParseInt(v["deadline"], 10, 64)
	if err != nil {
		return j, fmt.Errorf("bad deadline %q", v["deadline"])
	}
	j.Deadline = time.UnixMilli(ms)
	return j, nil
}

// Handle runs one image job. It is idempotent by job id: a job whose result
// exists already (it was redelivered after its worker died past answering)
// re-sends that result. A job whose deadline passed is dropped: nobody waits
// for it. A refusal or a rejected request answers the client at once; other
// failures are retried by the pool, and the last allowed delivery answers
// the client with the error before giving the entry up.
func (w *ImageWorker) Handle(ctx context.Context, e Entry) error {
	job, err := parseImageJob(e.Values)
	if err != nil {
		if job.Inbox != "" && job.Request != "" {
			_ = w.send(ctx, job, ImageResult{Request: job.Request, Index: job.Index, Err: &ImageError{
				Status: http.StatusInternalServerError, Code: "internal_error", Class: "bad_job",
				Message: "The relay queued an image job it cannot read."}}, false)
		}
		return fmt.Errorf("image job %s: %v: %w", e.ID, err, ErrPermanent)
	}
	log := w.log.With().Str("job", job.ID).Int64("delivery", e.Deliveries).Logger()
	if !time.Now().Before(job.Deadline) {
		log.Info().Msg("image job expired before it ran; nobody waits for it")
		return nil
	}
	prev, err := w.rdb.Get(ctx, w.keys.ImageResult(job.ID)).Bytes()
	switch {
	case err == nil:
		return w.push(ctx, job, prev)
	case !errors.Is(err, redis.Nil):
		return fmt.Errorf("image job %s: read earlier result: %w", job.ID, err)
	}

	jctx, cancel := context.WithDeadline(ctx, job.Deadline)
	defer cancel()
	res, err := w.generate(jctx, job)
	if err == nil {
		return w.send(ctx, job, res, true)
	}
	if ctx.Err() != nil {
		return err // stopped, lost or over the handler timeout: the pool decides
	}
	if !time.Now().Before(job.Deadline) {
		log.Info().Msg("image job ran past its deadline; dropped")
		return nil
	}
	ie, final := imageErrorFor(err)
	if final {
		log.Info().Err(err).Msg("image job failed for good")
		return w.send(ctx, job, ImageResult{Request: job.Request, Index: job.Index, Err: ie}, true)
	}
	if e.Deliveries >= w.maxDeliv {
		log.Warn().Err(err).Msg("image job failed on its last delivery; answering the client with the error")
		if serr := w.send(ctx, job, ImageResult{Request: job.Request, Index: job.Index, Err: ie}, true); serr != nil {
			log.Error().Err(serr).Msg("could not send the error to the client")
		}
	}
	return err
}

// send stores res as the job's result (when keep) and pushes it to the job's
// inbox.
func (w *ImageWorker) send(ctx context.Context, job imageJob, res ImageResult, keep bool) error {
	payload, err := json.Marshal(res)
	if err != nil {
		return err
	}
	if keep {
		ttl := time.Until(job.Deadline) + time.Minute
		if err := w.rdb.Set(ctx, w.keys.ImageResult(job.ID), payload, ttl).Err(); err != nil {
			return fmt.Errorf("image job %s: keep result: %w", job.ID, err)
		}
	}
	return w.push(ctx, job, payload)
}

func (w *ImageWorker) push(ctx context.Context, job imageJob, payload []byte) error {
	inbox := w.keys.ImageInbox(job.Inbox)
	_, err := w.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.RPush(ctx, inbox, payload)
		p.PExpire(ctx, inbox, inboxTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("image job %s: send result: %w", job.ID, err)
	}
	return nil
}

// generate runs the upstream flow for one image and shapes the result for
// the format the client asked for.
func (w *ImageWorker) generate(ctx context.Context, job imageJob) (ImageResult, error) {
	var chats []string
	defer func() { w.archiveChats(chats) }()
	st, err := w.caller.Open(ctx, imageChatRequest(job), func(id string) {
		chats = append(chats, id)
		if w.archive != nil {
			// Recorded at once, so a crash before the job ends still gets
			// the chat archived (by the orphan sweeper).
			_ = w.archive.Opened(ctx, vs.CornerImage, id)
		}
	})
	if err != nil {
		return ImageResult{}, err
	}
	img, err := readImage(st)
	_ = st.Close()
	if err != nil {
		return ImageResult{}, err
	}
	res := ImageResult{Request: job.Request, Index: job.Index, RevisedPrompt: img.revised}
	switch {
	case job.Format == FormatURL && img.data == nil:
		res.URL = img.url
	case job.Format == FormatURL:
		id, err := w.files.Put(ctx, img.mime, img.data)
		if err != nil {
			return res, err
		}
		res.FileID, res.MimeType = id, img.mime
	default:
		if img.data == nil {
			if img.data, img.mime, err = w.download(ctx, img.url); err != nil {
				return res, err
			}
		}
		res.B64, res.MimeType = base64.StdEncoding.EncodeToString(img.data), img.mime
	}
	return res, nil
}

func (w *ImageWorker) archiveChats(chats []string) {
	if len(chats) == 0 || w.archive == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := w.archive.Enqueue(ctx, vs.CornerImage, chats...); err != nil {
		w.log.Error().Err(err).Strs("chats", chats).Msg("could not queue image chats for archiving; they stay in the account")
	}
}

// fetchError is a URL result that could not be fetched.
type fetchError struct{ msg string }

func (e *fetchError) Error() string { return e.msg }

// download fetches an image the upstream gave as a URL.
func (w *ImageWorker) download(ctx context.Context, raw string) ([]byte, string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, "", &fetchError{"the upstream gave an image URL the relay cannot fetch"}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, "", &fetchError{"the upstream gave an image URL the relay cannot fetch"}
	}
	resp, err := w.fetch.Do(req)
	if err != nil {
		reason := err.Error()
		var ue *url.Error
		if errors.As(err, &ue) {
			reason = ue.Err.Error() // without the URL
		}
		return nil, "", &fetchError{"fetching the generated image failed: " + reason}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, "", &fetchError{fmt.Sprintf("fetching the generated image failed with status %d", resp.StatusCode)}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, w.fetchLimit+1))
	if err != nil {
		return nil, "", &fetchError{"fetching the generated image broke off"}
	}
	if int64(len(data)) > w.fetchLimit {
		return nil, "", &fetchError{fmt.Sprintf("the generated image is larger than %d bytes", w.fetchLimit)}
	}
	mime, ok := imageType(resp.Header.Get("Content-Type"), data)
	if !ok {
		return nil, "", &fetchError{"the generated image URL did not return an image"}
	}
	return data, mime, nil
}

// imageErrorFor describes a failed generation for the client, and says
// whether it is final (the upstream's answer will not change on a retry).
func imageErrorFor(err error) (*ImageError, bool) {
	var fe *fetchError
	if errors.As(err, &fe) {
		return &ImageError{Status: http.StatusBadGateway, Code: "upstream_error", Class: "image_fetch", Message: fe.msg + "."}, false
	}
	if errors.Is(err, errNoImage) {
		return &ImageError{Status: http.StatusBadGateway, Code: "upstream_error", Class: "upstream_no_image",
			Message: "Vertical Studio finished without an image."}, false
	}
	var ve *vs.Error
	if !errors.As(err, &ve) {
		return &ImageError{Status: http.StatusBadGateway, Code: "upstream_error", Class: "upstream",
			Message: "The image could not be generated: " + err.Error()}, false
	}
	class := ve.Kind.String()
	switch ve.Kind {
	case vs.KindStream:
		return &ImageError{Status: http.StatusBadRequest, Code: "image_generation_refused", Class: class,
			Message: "Vertical Studio refused to generate the image: " + ve.Msg}, true
	case vs.KindClient:
		reason := upstreamReason(ve.Msg)
		if ve.Status == http.StatusBadRequest || ve.Status == http.StatusUnprocessableEntity {
			return &ImageError{Status: http.StatusBadRequest, Code: "upstream_rejected", Class: class,
				Message: "Vertical Studio rejected the image request: " + reason}, true
		}
		msg := fmt.Sprintf("Vertical Studio failed to %s", ve.Op)
		if ve.Status != 0 {
			msg += fmt.Sprintf(" (status %d)", ve.Status)
		}
		if reason != "" {
			msg += ": " + reason
		}
		return &ImageError{Status: http.StatusBadGateway, Code: "upstream_error", Class: class, Message: msg + "."}, true
	case vs.KindNotReady:
		return &ImageError{Status: http.StatusServiceUnavailable, Code: "service_unavailable", Class: class,
			Message: "The relay's Vertical Studio session is not ready (" + ve.Msg + "). Try again shortly."}, false
	case vs.KindAuth:
		return &ImageError{Status: http.StatusBadGateway, Code: "upstream_auth_error", Class: class,
			Message: "Vertical Studio refused the relay's session even after a fresh login."}, false
	}
	msg := fmt.Sprintf("Vertical Studio failed to %s", ve.Op)
	if ve.Status != 0 {
		msg += fmt.Sprintf(" (status %d)", ve.Status)
	} else {
		msg += " (no answer)"
	}
	return &ImageError{Status: http.StatusBadGateway, Code: "upstream_error", Class: class, Message: msg + "."}, false
}

// upstreamReason pulls the reason out of an error body preview: the
// "error" or "message" of a JSON body, else the text itself.
func upstreamReason(preview string) string {
	var body struct {
		Error   json.RawMessage `json:"error"`
		Message string          `json:"message"`
	}
	if json.Unmarshal([]byte(preview), &body) == nil {
		var s string
		var obj struct {
			Message string `json:"message"`
		}
		switch {
		case json.Unmarshal(body.Error, &s) == nil && s != "":
			return s
		case json.Unmarshal(body.Error, &obj) == nil && obj.Message != "":
			return obj.Message
		case body.Message != "":
			return body.Message
		}
	}
	return preview
}

// ---------------------------------------------------------------------------
// The upstream image protocol (reference/vertical-studio-images.md, an
// assumption): imageChatRequest builds the request and readImage parses the
// answer. Replacing the protocol means replacing these two.

// imageSettings is an image chat's "settings" object.
type imageSettings struct {
	ModelID string `json:"modelId"`
	Size    string `json:"size,omitempty"`
}

func imageChatRequest(job imageJob) vs.ChatRequest {
	return vs.ChatRequest{Corner: vs.CornerImage, Content: job.Prompt,
		Settings: imageSettings{ModelID: job.Model, Size: job.Size}}
}

// upstreamImage is one generated image: bytes (from a file part, or a data:
// URL) or an URL to fetch them from.
type upstreamImage struct {
	mime    string
	data    []byte
	url     string
	revised string
}

var errNoImage = errors.New("the answer held no image")

// readImage reads an image chat's answer: the first image given as a file
// part (k:) or a data part (2:), up to the finish line. A 3: line is the
// upstream's error (a refusal, an exhausted credit).
func readImage(st *vs.Stream) (upstreamImage, error) {
	var img upstreamImage
	found := false
	for {
		p, err := st.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return img, err
		}
		switch p.Type {
		case vs.PartError:
			return img, &vs.Error{Kind: vs.KindStream, Op: "generate image", Msg: p.Text}
		case vs.PartFile:
			if found {
				continue
			}
			var f struct {
				MimeType string `json:"mimeType"`
				Data     string `json:"data"`
			}
			if json.Unmarshal(p.Raw, &f) != nil {
				return img, &vs.Error{Kind: vs.KindServer, Op: "generate image", Msg: "unreadable file part"}
			}
			data, err := decodeBase64(f.Data)
			if err != nil {
				return img, &vs.Error{Kind: vs.KindServer, Op: "generate image", Msg: "file part is not base64"}
			}
			mime, ok := imageType(f.MimeType, data)
			if !ok {
				continue // a file that is not an image
			}
			img.mime, img.data, found = mime, data, true
		case vs.PartData:
			var items []json.RawMessage
			if json.Unmarshal(p.Raw, &items) != nil {
				continue
			}
			for _, raw := range items {
				var d struct {
					Type          string `json:"type"`
					URL           string `json:"url"`
					RevisedPrompt string `json:"revisedPrompt"`
				}
				if json.Unmarshal(raw, &d) != nil || d.Type != "image" {
					continue
				}
				if img.revised == "" {
					img.revised = d.RevisedPrompt
				}
				if found || d.URL == "" {
					continue
				}
				if mime, data, ok := parseDataURL(d.URL); ok {
					img.mime, img.data, found = mime, data, true
				} else {
					img.url, found = d.URL, true
				}
			}
		case vs.PartFinish:
			if found {
				return img, nil
			}
			return img, errNoImage
		}
	}
	if !found {
		return img, errNoImage
	}
	return img, nil
}

func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimSpace(s)
	if _, rest, ok := strings.Cut(s, ";base64,"); ok && strings.HasPrefix(s, "data:") {
		s = rest
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) > 0 {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// parseDataURL decodes a data:<type>;base64,<data> URL holding an image.
func parseDataURL(s string) (string, []byte, bool) {
	rest, ok := strings.CutPrefix(s, "data:")
	if !ok {
		return "", nil, false
	}
	head, payload, ok := strings.Cut(rest, ",")
	if !ok || !strings.HasSuffix(head, ";base64") {
		return "", nil, false
	}
	data, err := decodeBase64(payload)
	if err != nil {
		return "", nil, false
	}
	mime, ok := imageType(strings.TrimSuffix(head, ";base64"), data)
	return mime, data, ok
}

// imageType is the MIME type to serve data with: the declared one when it
// is an image type, else what the bytes look like; ok is false for data
// that is no image.
func imageType(declared string, data []byte) (string, bool) {
	declared = strings.ToLower(strings.TrimSpace(strings.Split(declared, ";")[0]))
	if strings.HasPrefix(declared, "image/") && !strings.Contains(declared, "svg") {
		return declared, true
	}
	sniffed := http.DetectContentType(data)
	if strings.HasPrefix(sniffed, "image/") && !bytes.Contains([]byte(sniffed), []byte("svg")) {
		return sniffed, true
	}
	return "", false
}
