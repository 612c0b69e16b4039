package ingress

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/gofiber/fiber/v2"
	"github.com/google/uuid"

	"github.com/relaydev/relay/internal/vs"
	"github.com/relaydev/relay/usage"
	"github.com/relaydev/relay/workers"
)

// DefaultImageModels is the image model mapping when VS_IMAGE_MODEL_MAPPING
// is not set: the name the original proxy's README shows.
var DefaultImageModels = []vs.Model{{Name: "dall-e-3", Upstream: "dall-e-3-vs"}}

// Images is what POST /v1/images/generations is served with.
type Images struct {
	Models *vs.Models // client model name -> upstream model id
	Queue  ImageGenerator
	Files  ImageFileStore
	// Timeout is how long a request waits for its images (IMAGE_TIMEOUT;
	// default 2 minutes).
	Timeout time.Duration
}

// ImageGenerator runs a request's image jobs and waits for them
// (workers.ImageQueue).
type ImageGenerator interface {
	Generate(ctx context.Context, r workers.ImageRequest) ([]workers.ImageResult, error)
}

// ImageFileStore holds the images the relay serves itself (workers.ImageFiles).
type ImageFileStore interface {
	Get(ctx context.Context, id string) (mimeType string, data []byte, err error)
}

const (
	maxImages        = 10
	maxImagePrompt   = 32000 // characters
	imageBodyLimit   = 1 << 20
	defaultImageSize = "1024x1024"
	imageFilesPath   = "/v1/images/files/"
)

var sizePattern = regexp.MustCompile(`^([0-9]{2,5})x([0-9]{2,5})$`)

// imageRequest is the part of an OpenAI image generation request the relay
// uses.
type imageRequest struct {
	Model  string
	Prompt string
	N      int
	Size   string // WxH or "auto"
	Format string
}

// parseImageRequest validates body. defaultModel is used when model is left
// out.
func parseImageRequest(body []byte, defaultModel string) (imageRequest, *Error) {
	bad := func(param, format string, args ...any) *Error {
		return &Error{Status: http.StatusBadRequest, Code: "invalid_request_error", Param: param, Message: fmt.Sprintf(format, args...)}
	}
	r := imageRequest{N: 1, Size: defaultImageSize, Format: workers.FormatURL, Model: defaultModel}
	if len(bytes.TrimSpace(body)) == 0 {
		return r, bad("", "The request body is empty; send a JSON object with `prompt`.")
	}
	var raw struct {
		Model          json.RawMessage `json:"model"`
		Prompt         json.RawMessage `json:"prompt"`
		N              json.RawMessage `json:"n"`
		Size           json.RawMessage `json:"size"`
		ResponseFormat json.RawMessage `json:"response_format"`
		User           json.RawMessage `json:"user"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return r, bad("", "The request body must be a JSON object.")
		}
		return r, bad("", "The request body is not valid JSON: %s.", err.Error())
	}
	if !isNull(raw.Model) {
		if json.Unmarshal(raw.Model, &r.Model) != nil || r.Model == "" {
			return r, bad("model", "`model` must be a non-empty string.")
		}
	}
	if isNull(raw.Prompt) {
		return r, bad("prompt", "`prompt` is required.")
	}
	if json.Unmarshal(raw.Prompt, &r.Prompt) != nil {
		return r, bad("prompt", "`prompt` must be a string.")
	}
	if strings.TrimSpace(r.Prompt) == "" {
		return r, bad("prompt", "`prompt` must not be empty.")
	}
	if n := utf8.RuneCountInString(r.Prompt); n > maxImagePrompt {
		return r, bad("prompt", "`prompt` is %d characters long; at most %d are accepted.", n, maxImagePrompt)
	}
	if !isNull(raw.N) {
		var n float64
		if json.Unmarshal(raw.N, &n) != nil || n != math.Trunc(n) {
			return r, bad("n", "`n` must be a whole number from 1 to %d.", maxImages)
		}
		if n < 1 || n > maxImages {
			return r, bad("n", "`n` is %s; it must be from 1 to %d.", strconv.FormatFloat(n, 'f', -1, 64), maxImages)
		}
		r.N = int(n)
	}
	if !isNull(raw.Size) {
		if json.Unmarshal(raw.Size, &r.Size) != nil || !validSize(r.Size) {
			return r, bad("size", "`size` must be WIDTHxHEIGHT in pixels (64 to 4096 each), e.g. 1024x1024, 1792x1024, "+
				"1024x1792, 1536x1024, 1024x1536, 512x512, 256x256, or \"auto\".")
		}
	}
	if !isNull(raw.ResponseFormat) {
		if json.Unmarshal(raw.ResponseFormat, &r.Format) != nil || (r.Format != workers.FormatURL && r.Format != workers.FormatB64) {
			return r, bad("response_format", "`response_format` must be \"url\" or \"b64_json\".")
		}
	}
	if !isNull(raw.User) {
		var user string
		if json.Unmarshal(raw.User, &user) != nil {
			return r, bad("user", "`user` must be a string.")
		}
	}
	return r, nil
}

func validSize(s string) bool {
	if s == "auto" {
		return true
	}
	m := sizePattern.FindStringSubmatch(s)
	if m == nil {
		return false
	}
	for _, v := range m[1:] {
		n, _ := strconv.Atoi(v)
		if n < 64 || n > 4096 {
			return false
		}
	}
	return true
}

type imageDatum struct {
	URL           string `json:"url,omitempty"`
	B64JSON       string `json:"b64_json,omitempty"`
	RevisedPrompt string `json:"revised_prompt,omitempty"`
}

type imagesResponse struct {
	Created int64        `json:"created"`
	Data    []imageDatum `json:"data"`
}

// handleImageGenerations is POST /v1/images/generations: the request
// becomes n jobs on the images stream, and the handler waits for their
// results (up to IMAGE_TIMEOUT) and answers with them in job order.
func (s *Server) handleImageGenerations(c *fiber.Ctx) error {
	start := time.Now()
	if s.images == nil {
		return vsNotConfigured()
	}
	if len(c.Body()) > imageBodyLimit {
		return &Error{Status: http.StatusRequestEntityTooLarge, Code: "request_too_large",
			Message: fmt.Sprintf("The request body is %d bytes; this route accepts at most %d.", len(c.Body()), imageBodyLimit)}
	}
	defaultModel := ""
	if list := s.images.Models.List(); len(list) > 0 {
		defaultModel = list[0].Name
	}
	req, perr := parseImageRequest(c.Body(), defaultModel)
	if perr != nil {
		return perr
	}
	model, ok := s.images.Models.Lookup(req.Model)
	if !ok {
		return unknownImageModel(req.Model, s.images.Models)
	}
	adm, err := s.admit(c, usage.ServiceOpenAI, req.Model)
	if err != nil {
		return err
	}
	defer adm.Release()

	base := strings.TrimRight(s.cfg.PublicURL, "/")
	if base == "" {
		base = strings.Clone(c.BaseURL())
	}
	timeout := s.images.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	upSize := req.Size
	if upSize == "auto" {
		upSize = ""
	}
	ev := usage.Event{
		ID: uuid.NewString(), RequestID: requestID(c), Time: start, KeyID: adm.KeyID,
		Service: usage.ServiceOpenAI, Model: req.Model, UpstreamModel: model.Upstream,
		ImageSize: req.Size, TokenWindowSec: adm.TokenWindowSec,
	}
	finish := func(status int, class string, images int) {
		ev.Status, ev.ErrorClass, ev.Images = status, class, images
		ev.LatencyMs = time.Since(start).Milliseconds()
		s.recordUsage(ev)
		if m := s.metrics; m != nil {
			label := "ok"
			if class != "" {
				label = class
			}
			m.UpstreamRequests.WithLabelValues("vertical_studio_images", label).Inc()
		}
	}

	deadline := start.Add(timeout)
	ctx, cancel := context.WithDeadline(s.base, deadline)
	defer cancel()
	results, err := s.images.Queue.Generate(ctx, workers.ImageRequest{
		ID: uuid.NewString(), Model: model.Upstream, Prompt: req.Prompt, Size: upSize, Format: req.Format,
		N: req.N, Deadline: deadline,
	})
	if err != nil {
		e, class := imageFailure(err, s.base, timeout)
		if class == "" {
			s.requestLog(c).Error().Err(err).Msg("could not queue image jobs")
			class = "redis_unavailable"
		}
		finish(e.Status, class, 0)
		return e
	}
	out := imagesResponse{Created: start.Unix(), Data: make([]imageDatum, len(results))}
	for i, r := range results {
		d := imageDatum{RevisedPrompt: r.RevisedPrompt, B64JSON: r.B64, URL: r.URL}
		if r.FileID != "" {
			d.URL = base + imageFilesPath + r.FileID + workers.FileExtension(r.MimeType)
		}
		out.Data[i] = d
	}
	body, err := json.Marshal(out)
	if err != nil {
		return err
	}
	finish(http.StatusOK, "", len(results))
	c.Set(fiber.HeaderContentType, fiber.MIMEApplicationJSON)
	return c.Status(http.StatusOK).Send(body)
}

// imageFailure turns what Generate returned into the client's error and the
// usage error class ("" for an unexpected failure).
func imageFailure(err error, base context.Context, timeout time.Duration) (*Error, string) {
	var ie *workers.ImageError
	switch {
	case errors.As(err, &ie):
		return &Error{Status: ie.Status, Code: ie.Code, Message: ie.Message}, ie.Class
	case errors.Is(err, workers.ErrImageTimeout), errors.Is(err, context.DeadlineExceeded):
		return &Error{Status: http.StatusGatewayTimeout, Code: "timeout",
			Message: fmt.Sprintf("The images were not ready within %s (the relay's IMAGE_TIMEOUT), so the request was given up. "+
				"Try again, or ask for fewer images at once.", timeout)}, "timeout"
	case base.Err() != nil:
		return &Error{Status: http.StatusServiceUnavailable, Code: "service_unavailable", RetryAfter: time.Second,
			Message: "The relay is shutting down; try again."}, "shutting_down"
	}
	return &Error{Status: http.StatusServiceUnavailable, Code: "service_unavailable", RetryAfter: time.Second,
		Message: "The relay could not queue the image jobs because its database does not answer. Try again shortly."}, ""
}

func unknownImageModel(name string, models *vs.Models) *Error {
	var names []string
	for _, m := range models.List() {
		names = append(names, strconv.Quote(m.Name))
	}
	return &Error{Status: http.StatusBadRequest, Code: "model_not_found", Param: "model",
		Message: fmt.Sprintf("The image model %q does not exist on this relay; use one of %s.", name, strings.Join(names, ", "))}
}

// handleImageFile is GET /v1/images/files/<id>[.ext]: an image the relay
// kept for a URL answer. The id is the capability (128 random bits), as
// with OpenAI's own image links, so no API key is asked for.
func (s *Server) handleImageFile(c *fiber.Ctx) error {
	if s.images == nil || s.images.Files == nil {
		return vsNotConfigured()
	}
	id, _, _ := strings.Cut(c.Params("name"), ".")
	ctx, cancel := context.WithTimeout(c.UserContext(), 5*time.Second)
	defer cancel()
	typ, data, err := s.images.Files.Get(ctx, strings.Clone(id))
	switch {
	case errors.Is(err, workers.ErrNoImageFile):
		return &Error{Status: http.StatusNotFound, Code: "image_not_found",
			Message: "There is no such image, or it expired (images are kept for an hour)."}
	case err != nil:
		s.requestLog(c).Error().Err(err).Msg("image file lookup failed")
		return &Error{Status: http.StatusServiceUnavailable, Code: "service_unavailable", RetryAfter: time.Second,
			Message: "The relay cannot read the image right now because its database does not answer. Try again shortly."}
	}
	c.Set(fiber.HeaderContentType, typ)
	c.Set(fiber.HeaderCacheControl, "private, max-age=3600")
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	return c.Status(http.StatusOK).Send(data)
}

// imageRoutes are the image generation routes.
func (s *Server) imageRoutes() {
	s.app.Post("/v1/images/generations", s.requireKey(usage.ServiceOpenAI), s.handleImageGenerations)
	s.app.Get(imageFilesPath+":name", s.handleImageFile)
}
