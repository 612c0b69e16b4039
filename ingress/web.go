package ingress

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/relaydev/relay/internal/keyspace"
	"github.com/relaydev/relay/usage"
)

// webFiles is the admin web UI and the key holder's stats page: plain HTML,
// CSS and JavaScript modules, with no build step.
//
//go:embed web
var webFiles embed.FS

// webCSP allows only the relay's own scripts, styles and API: no inline
// script or style, no other origin, no framing.
const webCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; " +
	"frame-ancestors 'none'"

// webAsset is one embedded file, ready to send.
type webAsset struct {
	body  []byte
	ctype string
	etag  string
}

func loadWebAssets() map[string]webAsset {
	out := map[string]webAsset{}
	_ = fs.WalkDir(webFiles, "web", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := webFiles.ReadFile(p)
		if err != nil {
			return err
		}
		ctype := mime.TypeByExtension(path.Ext(p))
		switch path.Ext(p) { // not every system's MIME table knows these
		case ".js":
			ctype = "text/javascript; charset=utf-8"
		case ".css":
			ctype = "text/css; charset=utf-8"
		case ".html":
			ctype = "text/html; charset=utf-8"
		case ".svg":
			ctype = "image/svg+xml"
		}
		sum := sha256.Sum256(b)
		out[strings.TrimPrefix(p, "web/")] = webAsset{body: b, ctype: ctype, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
		return nil
	})
	return out
}

// webRoutes serve the admin UI at /web/, the stats page at /web/stats (and
// /stats), their assets under /web/assets/, and the stats page's own usage
// query, authenticated by the key it is about.
func (s *Server) webRoutes() {
	assets := loadWebAssets()
	send := func(c *fiber.Ctx, name string) error {
		a, ok := assets[name]
		if !ok {
			return Errorf(http.StatusNotFound, "not_found", "There is no such file.")
		}
		webHeaders(c)
		c.Set(fiber.HeaderETag, a.etag)
		// Revalidate every time: the files change with the binary, and the
		// ETag makes an unchanged file a 304.
		c.Set(fiber.HeaderCacheControl, "no-cache")
		if match := c.Get(fiber.HeaderIfNoneMatch); match != "" && strings.Contains(match, a.etag) {
			return c.SendStatus(http.StatusNotModified)
		}
		c.Set(fiber.HeaderContentType, a.ctype)
		return c.Send(a.body)
	}
	// Routing ignores a trailing slash, so "/web" also answers "/web/":
	// only the bare form is redirected, so relative links resolve alike.
	s.app.Get("/web", func(c *fiber.Ctx) error {
		if c.Path() == "/web" {
			return c.Redirect("/web/", http.StatusFound)
		}
		return send(c, "index.html")
	})
	s.app.Get("/web/stats", func(c *fiber.Ctx) error { return send(c, "stats.html") })
	s.app.Get("/stats", func(c *fiber.Ctx) error { return c.Redirect("/web/stats", http.StatusFound) })
	s.app.Get("/web/assets/:file", func(c *fiber.Ctx) error {
		name := c.Params("file")
		if strings.HasSuffix(name, ".html") {
			return Errorf(http.StatusNotFound, "not_found", "There is no such file.")
		}
		return send(c, "assets/"+name)
	})
	rd := usage.NewReader(s.rdb, keyspace.New(s.cfg.Redis.KeyPrefix))
	s.app.Get("/web/api/key-usage", s.requireKey(""), s.handleWebKeyUsage(rd))
}

// webHeaders are the security headers of every page and asset.
func webHeaders(c *fiber.Ctx) {
	c.Set("Content-Security-Policy", webCSP)
	c.Set(fiber.HeaderXContentTypeOptions, "nosniff")
	c.Set(fiber.HeaderXFrameOptions, "DENY")
	c.Set(fiber.HeaderReferrerPolicy, "no-referrer")
	c.Set("Cross-Origin-Opener-Policy", "same-origin")
	c.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
}

// handleWebKeyUsage is the calling key's own usage: today, this month and in
// total, per model, and per day over the last 30 days. The key is the one
// that authenticated the request; no other key can be asked for.
func (s *Server) handleWebKeyUsage(rd *usage.Reader) fiber.Handler {
	return func(c *fiber.Ctx) error {
		k := apiKey(c)
		ctx, cancel := context.WithTimeout(c.UserContext(), adminTimeout)
		defer cancel()
		now := time.Now().UTC()
		sum, err := rd.KeySummary(ctx, k.ID, now)
		if err != nil {
			return s.usageError(c, err)
		}
		from := startOfDay(now).AddDate(0, 0, -29)
		daily, err := rd.Series(ctx, usage.DimKey, k.ID, usage.Day, from, now)
		if err != nil {
			return s.usageError(c, err)
		}
		c.Set(fiber.HeaderCacheControl, "no-store")
		return c.JSON(fiber.Map{"summary": sum, "daily": daily, "now": now})
	}
}
