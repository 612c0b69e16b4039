package ingress_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/rs/zerolog"

	"github.com/relaydev/relay/ingress"
	"github.com/relaydev/relay/internal/apikeys"
	"github.com/relaydev/relay/internal/config"
	"github.com/relaydev/relay/internal/fakevs"
	"github.com/relaydev/relay/internal/metrics"
	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/session"
	"github.com/relaydev/relay/workers"
)

type imageRelay struct {
	url    string
	client openai.Client
	pool   *workers.Pool
}

// imageRelay starts a relay instance serving images: the shared session,
// the archive and image pools, the image queue and the HTTP server.
func (r *vsRig) imageRelay(timeout time.Duration, publicURL string) *imageRelay {
	t := r.t
	t.Helper()
	log := zerolog.Nop()
	client := vs.New(vs.Options{BaseURL: r.fakeU})
	sess := session.NewVS(session.VSOptions{
		Redis: r.env.Client, Keys: r.keys, Box: r.box, Client: client,
		Email: "user@example.com", Password: "secret", Log: log, Poll: 10 * time.Millisecond,
	})
	start := func(s interface {
		Start(context.Context) error
		Stop()
	}) {
		if err := s.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Stop)
	}
	start(sess)
	m := metrics.New()
	archive, err := workers.New(r.env.Client, workers.ArchivePoolConfig(r.keys, "archiver",
		workers.ArchiveHandler(client, sess), 4, log, m))
	if err != nil {
		t.Fatal(err)
	}
	start(archive)
	files := workers.NewImageFiles(r.env.Client, r.keys, 0)
	worker := workers.NewImageWorker(workers.ImageWorkerOptions{Redis: r.env.Client, Keys: r.keys,
		Caller: &vs.Caller{Client: client, Creds: sess, Attempts: 1}, Archive: workers.NewArchiveQueue(r.env.Client, r.keys),
		Files: files, MaxDeliveries: 3, Log: log})
	cfg := worker.PoolConfig("imager", 8, timeout, m)
	cfg.Backoff = func(int64) time.Duration { return 10 * time.Millisecond }
	pool, err := workers.New(r.env.Client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	start(pool)
	queue := workers.NewImageQueue(r.env.Client, r.keys, workers.ConsumerName(), log)
	start(queue)
	models, err := vs.LoadModels("", ingress.DefaultImageModels)
	if err != nil {
		t.Fatal(err)
	}
	srv := ingress.New(ingress.Deps{
		Config: config.Config{
			Host: "127.0.0.1", ShutdownTimeout: 5 * time.Second, MaxBodyBytes: 32 << 20, PublicURL: publicURL,
			KeyCacheTTL: 500 * time.Millisecond, APIKeyPrefix: apikeys.DefaultPrefix,
			Redis: config.Redis{KeyPrefix: r.env.Prefix}, JWTSecret: strings.Repeat("j", 32), EncryptionKey: strings.Repeat("e", 32),
		},
		Log: log, Redis: r.env.Client, Metrics: m, Usage: r.rec,
		Images: &ingress.Images{Models: models, Queue: queue, Files: files, Timeout: timeout},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(ln); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	url := "http://" + ln.Addr().String()
	return &imageRelay{url: url, pool: pool,
		client: openai.NewClient(option.WithBaseURL(url+"/v1/"), option.WithAPIKey(r.key), option.WithMaxRetries(0))}
}

func getBytes(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestImagesEndToEnd(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.imageRelay(30*time.Second, "")
	want := fakevs.FakeImage("a lighthouse at dusk")
	cases := []struct {
		name   string
		mode   fakevs.ImageMode
		n      int64
		format openai.ImageGenerateParamsResponseFormat
	}{
		{"n=1 url from file part", fakevs.ImageAsFile, 1, openai.ImageGenerateParamsResponseFormatURL},
		{"n=3 b64 from file part", fakevs.ImageAsFile, 3, openai.ImageGenerateParamsResponseFormatB64JSON},
		{"n=3 url from file part", fakevs.ImageAsFile, 3, openai.ImageGenerateParamsResponseFormatURL},
		{"n=1 b64 from url part", fakevs.ImageAsURL, 1, openai.ImageGenerateParamsResponseFormatB64JSON},
		{"n=2 url from url part", fakevs.ImageAsURL, 2, openai.ImageGenerateParamsResponseFormatURL},
	}
	images := 0
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r.fake.SetImages(fakevs.ImageBehaviour{Mode: tc.mode})
			res, err := in.client.Images.Generate(context.Background(), openai.ImageGenerateParams{
				Model: openai.ImageModelDallE3, Prompt: "a lighthouse at dusk", N: openai.Int(tc.n),
				Size: openai.ImageGenerateParamsSize1792x1024, ResponseFormat: tc.format, User: openai.String("u-1"),
			})
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(res.Data)) != tc.n || res.Created == 0 {
				t.Fatalf("%d images, created %d", len(res.Data), res.Created)
			}
			for _, img := range res.Data {
				var got []byte
				if tc.format == openai.ImageGenerateParamsResponseFormatB64JSON {
					if img.URL != "" {
						t.Fatalf("b64 answer has a url %q", img.URL)
					}
					got, err = base64.StdEncoding.DecodeString(img.B64JSON)
					if err != nil {
						t.Fatal(err)
					}
				} else {
					if img.B64JSON != "" {
						t.Fatal("url answer has b64_json")
					}
					if tc.mode == fakevs.ImageAsFile && !strings.HasPrefix(img.URL, in.url+"/v1/images/files/") {
						t.Fatalf("url %q is not the relay's", img.URL)
					}
					resp, b := getBytes(t, img.URL)
					if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "image/png" {
						t.Fatalf("GET %s: %d %q", img.URL, resp.StatusCode, resp.Header.Get("Content-Type"))
					}
					got = b
				}
				if !bytes.Equal(got, want) {
					t.Fatal("image bytes differ from what the upstream generated")
				}
				if tc.mode == fakevs.ImageAsURL && !strings.HasPrefix(img.RevisedPrompt, "a lighthouse at dusk") {
					t.Fatalf("revised prompt %q", img.RevisedPrompt)
				}
			}
			images += int(tc.n)
		})
	}
	reqs := r.fake.ImageRequests()
	if len(reqs) != images {
		t.Fatalf("%d upstream generations for %d images", len(reqs), images)
	}
	for _, q := range reqs {
		if q.CornerType != "image" || q.Settings["modelId"] != "dall-e-3-vs" || q.Settings["size"] != "1792x1024" ||
			!strings.Contains(q.Referer, "/stream/corners/image/") {
			t.Fatalf("upstream request %+v", q)
		}
	}
	r.allArchived(images)
	evs := r.events(len(cases))
	for i, ev := range evs {
		if ev.Model != "dall-e-3" || ev.UpstreamModel != "dall-e-3-vs" || ev.Images != int(cases[i].n) ||
			ev.ImageSize != "1792x1024" || ev.Status != 200 || ev.ErrorClass != "" || ev.KeyID == "" {
			t.Fatalf("usage event %d: %+v", i, ev)
		}
	}
}

func TestImageURLUsesPublicURL(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.imageRelay(30*time.Second, "https://relay.example.com/")
	res, err := in.client.Images.Generate(context.Background(), openai.ImageGenerateParams{Prompt: "x"})
	if err != nil {
		t.Fatal(err)
	}
	u := res.Data[0].URL
	if !strings.HasPrefix(u, "https://relay.example.com/v1/images/files/") || !strings.HasSuffix(u, ".png") {
		t.Fatalf("url %q", u)
	}
	// The same path on the relay itself serves the image.
	resp, b := getBytes(t, in.url+strings.TrimPrefix(u, "https://relay.example.com"))
	if resp.StatusCode != 200 || !bytes.Equal(b, fakevs.FakeImage("x")) {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestImageFileUnknownIs404(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.imageRelay(30*time.Second, "")
	for _, id := range []string{"0123456789abcdef0123456789abcdef.png", "nothex", "../../etc"} {
		resp, b := getBytes(t, in.url+"/v1/images/files/"+id)
		var body struct {
			Error struct{ Code string } `json:"error"`
		}
		if resp.StatusCode != 404 || json.Unmarshal(b, &body) != nil || body.Error.Code == "" {
			t.Fatalf("%s: %d %s", id, resp.StatusCode, b)
		}
	}
}

func TestImageRefusalIs400WithReason(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.imageRelay(30*time.Second, "")
	r.fake.SetImages(fakevs.ImageBehaviour{Refuse: "Your prompt may contain text that is not allowed by our safety system."})
	_, err := in.client.Images.Generate(context.Background(), openai.ImageGenerateParams{Prompt: "forbidden", N: openai.Int(2)})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || !strings.Contains(apiErr.Message, "not allowed by our safety system") {
		t.Fatalf("error %v", err)
	}
	ev := r.events(1)[0]
	if ev.Status != 400 || ev.ErrorClass != vs.KindStream.String() || ev.Images != 0 {
		t.Fatalf("usage event %+v", ev)
	}
}

func TestImageBadInputIs400AndNothingQueued(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.imageRelay(30*time.Second, "")
	cases := []struct{ body, param string }{
		{`{"model":"dall-e-9","prompt":"x"}`, "model"},
		{`{"prompt":""}`, "prompt"},
		{`{"prompt":"   "}`, "prompt"},
		{`{"model":"dall-e-3"}`, "prompt"},
		{`{"prompt":"x","n":0}`, "n"},
		{`{"prompt":"x","n":11}`, "n"},
		{`{"prompt":"x","n":1.5}`, "n"},
		{`{"prompt":"x","size":"big"}`, "size"},
		{`{"prompt":"x","size":"1024x99999"}`, "size"},
		{`{"prompt":"x","response_format":"png"}`, "response_format"},
		{`{"prompt":"x","user":7}`, "user"},
		{`[1,2]`, ""},
		{`{"prompt":`, ""},
	}
	for _, tc := range cases {
		req, _ := http.NewRequest(http.MethodPost, in.url+"/v1/images/generations", strings.NewReader(tc.body))
		req.Header.Set("Authorization", "Bearer "+r.key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var body struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		if resp.StatusCode != 400 || json.Unmarshal(b, &body) != nil || body.Error.Type != "invalid_request_error" || body.Error.Message == "" {
			t.Fatalf("%s: %d %s", tc.body, resp.StatusCode, b)
		}
		if tc.param != "" && (body.Error.Param == nil || *body.Error.Param != tc.param) {
			t.Fatalf("%s: param %v, want %s", tc.body, body.Error.Param, tc.param)
		}
	}
	// The SDK sees the same.
	_, err := in.client.Images.Generate(context.Background(), openai.ImageGenerateParams{Prompt: "x", N: openai.Int(11)})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "n" {
		t.Fatalf("error %v", err)
	}
	if n := r.env.Client.XLen(context.Background(), r.keys.Stream(workers.ImageStream)).Val(); n != 0 {
		t.Fatalf("%d jobs queued for bad requests", n)
	}
	if s := r.fake.ImageStats(); s.Started != 0 {
		t.Fatalf("upstream saw %d generations", s.Started)
	}
}

func TestImageTimeoutIs504(t *testing.T) {
	r := newVSRig(t, fakevs.Options{})
	in := r.imageRelay(400*time.Millisecond, "")
	r.fake.SetImages(fakevs.ImageBehaviour{Delay: time.Minute})
	_, err := in.client.Images.Generate(context.Background(), openai.ImageGenerateParams{Prompt: "slow"})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 504 || !strings.Contains(apiErr.Message, "IMAGE_TIMEOUT") {
		t.Fatalf("error %v", err)
	}
	ev := r.events(1)[0]
	if ev.Status != 504 || ev.ErrorClass != "timeout" {
		t.Fatalf("usage event %+v", ev)
	}
	// The late job is dropped at its deadline and acknowledged, and its chat
	// archived.
	eventually(t, "the late job acknowledged", func() bool {
		p, err := r.env.Client.XPending(context.Background(), r.keys.Stream(workers.ImageStream), workers.ImageStream).Result()
		return err == nil && p.Count == 0 && in.pool.Stats().OK == 1
	})
	r.allArchived(1)
}
