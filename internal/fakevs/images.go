package fakevs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"strings"
	"time"
)

// The image flow this project assumes (reference/vertical-studio-images.md):
// a chat created in the "image" corner, then /api/chat with cornerType
// "image" and settings {modelId, size}; the answer carries one image as a
// file part (k:) or as a data part (2:) with a URL, or a 3: line when the
// upstream refuses.

// ImageMode is how the fake hands back a generated image.
type ImageMode int

const (
	// ImageAsFile: `k:{"mimeType":"image/png","data":"<base64>"}`.
	ImageAsFile ImageMode = iota
	// ImageAsURL: `2:[{"type":"image","url":…,"revisedPrompt":…}]`, the URL
	// served by the fake itself under /generated/.
	ImageAsURL
)

// ImageBehaviour is how the fake answers image chats.
type ImageBehaviour struct {
	Mode ImageMode
	// Refuse, when set, answers every image chat with `3:"<Refuse>"`.
	Refuse string
	// Delay is how long each generation takes (the pause before the answer).
	Delay time.Duration
	// Text, when set, is sent as a 0: line before the image.
	Text string
}

// ImageStats counts the image generations the fake saw.
type ImageStats struct {
	Started  int // image chat requests that began generating
	Finished int // generations that produced an image
	Refused  int // answers that were a refusal
	Fetched  int // downloads of /generated/ images
	// MaxSamePrompt is the most generations of one prompt that ever ran at
	// the same time.
	MaxSamePrompt int
}

// SetImages switches how image chats are answered.
func (f *Fake) SetImages(b ImageBehaviour) { f.mu.Lock(); f.img = b; f.mu.Unlock() }

// ImageStats reports the image generations so far.
func (f *Fake) ImageStats() ImageStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.imgStats
}

// ImageRequests lists the image chat requests received, in order.
func (f *Fake) ImageRequests() []ChatRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []ChatRequest
	for _, id := range f.order {
		for _, r := range f.chats[id].Requests {
			if r.CornerType == "image" {
				out = append(out, r)
			}
		}
	}
	return out
}

// FakeImage is the PNG the fake generates for a prompt (the same bytes every
// time, so tests can compare).
func FakeImage(prompt string) []byte {
	sum := sha256.Sum256([]byte(prompt))
	img := image.NewRGBA(image.Rect(0, 0, 4, 4))
	for i := range 16 {
		img.Set(i%4, i/4, color.RGBA{R: sum[i], G: sum[i+16], B: sum[(i+8)%32], A: 255})
	}
	var b bytes.Buffer
	_ = png.Encode(&b, img)
	return b.Bytes()
}

// imageScript generates one image for r (taking the configured time, or
// until the client hangs up) and returns the answer.
func (f *Fake) imageScript(ctx context.Context, r ChatRequest, base string) Script {
	f.mu.Lock()
	b := f.img
	f.imgStats.Started++
	f.imgRunning[r.Content]++
	f.imgStats.MaxSamePrompt = max(f.imgStats.MaxSamePrompt, f.imgRunning[r.Content])
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.imgRunning[r.Content]--
		f.mu.Unlock()
	}()

	var s Script
	if b.Text != "" {
		s.Text = []string{b.Text}
	}
	if b.Delay > 0 && !sleep(ctx, b.Delay) {
		return s
	}
	if b.Refuse != "" {
		f.count(&f.imgStats.Refused)
		s.ErrorText, s.ErrorAfter = b.Refuse, len(s.Text)
		return s
	}
	model, _ := r.Settings["modelId"].(string)
	revised := fmt.Sprintf("%s (model %s)", r.Content, model)
	data := FakeImage(r.Content)
	switch b.Mode {
	case ImageAsURL:
		id := randomToken(12)
		f.mu.Lock()
		f.generated[id] = data
		f.mu.Unlock()
		item, _ := json.Marshal([]map[string]string{{"type": "image", "url": base + "/generated/" + id + ".png", "revisedPrompt": revised}})
		s.Extra = []string{"2:" + string(item)}
	default:
		item, _ := json.Marshal(map[string]string{"mimeType": "image/png", "data": base64.StdEncoding.EncodeToString(data)})
		s.Extra = []string{"k:" + string(item)}
	}
	f.count(&f.imgStats.Finished)
	return s
}

// generatedImage serves an image handed out as a URL (no cookie needed, as
// with a CDN link).
func (f *Fake) generatedImage(w http.ResponseWriter, r *http.Request) {
	id, ok := strings.CutSuffix(r.PathValue("name"), ".png")
	f.mu.Lock()
	data := f.generated[id]
	if ok && data != nil {
		f.imgStats.Fetched++
	}
	f.mu.Unlock()
	if !ok || data == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "image/png")
	_, _ = w.Write(data)
}

func (f *Fake) imageRoutes(m *http.ServeMux) {
	m.HandleFunc("GET /generated/{name}", f.generatedImage)
}

// requestBase is the scheme and host the request reached the fake at.
func requestBase(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
