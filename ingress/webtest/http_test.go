package webtest

import (
	"bytes"
	"context"
	"encoding/json"
	"github.com/relaydev/relay/internal/testredis"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaydev/relay/internal/apikeys"
)

// noRedirect is a client that shows redirects instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func get(t *testing.T, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func TestWebPagesHeadersAndCaching(t *testing.T) {
	r := newRig(t)
	for path, want := range map[string]string{
		"/web/":                "/web/assets/admin.js",
		"/web/stats":           "/web/assets/stats.js",
		"/web/assets/admin.js": "import",
		"/web/assets/app.css":  "--accent",
	} {
		resp, body := get(t, r.url+path, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(want)) {
			t.Fatalf("%s: %d, body lacks %q", path, resp.StatusCode, want)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, d := range []string{"default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "object-src 'none'"} {
			if !strings.Contains(csp, d) {
				t.Errorf("%s: CSP %q lacks %q", path, csp, d)
			}
		}
		if strings.Contains(csp, "unsafe") {
			t.Errorf("%s: CSP allows unsafe sources: %q", path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: headers %v", path, resp.Header)
		}
		if resp.Header.Get("Cache-Control") != "no-cache" {
			t.Errorf("%s: Cache-Control %q", path, resp.Header.Get("Cache-Control"))
		}
		etag := resp.Header.Get("ETag")
		if etag == "" {
			t.Fatalf("%s: no ETag", path)
		}
		again, body := get(t, r.url+path, map[string]string{"If-None-Match": etag})
		if again.StatusCode != http.StatusNotModified || len(body) != 0 {
			t.Errorf("%s with its ETag: %d, %d bytes", path, again.StatusCode, len(body))
		}
	}
	types := map[string]string{"/web/": "text/html", "/web/assets/admin.js": "text/javascript", "/web/assets/app.css": "text/css", "/web/assets/icon.svg": "image/svg+xml"}
	for path, want := range types {
		if resp, _ := get(t, r.url+path, nil); !strings.HasPrefix(resp.Header.Get("Content-Type"), want) {
			t.Errorf("%s: Content-Type %q, want %s", path, resp.Header.Get("Content-Type"), want)
		}
	}
	for path, to := range map[string]string{"/web": "/web/", "/stats": "/web/stats"} {
		resp, _ := get(t, r.url+path, nil)
		if resp.StatusCode != http.StatusFound || resp.Header.Get("Location") != to {
			t.Errorf("%s: %d to %q, want a redirect to %s", path, resp.StatusCode, resp.Header.Get("Location"), to)
		}
	}
	for _, path := range []string{"/web/assets/nope.js", "/web/assets/..%2findex.html", "/web/assets/index.html"} {
		resp, body := get(t, r.url+path, nil)
		if resp.StatusCode != http.StatusNotFound || !json.Valid(body) {
			t.Errorf("%s: %d %s, want a JSON 404", path, resp.StatusCode, body)
		}
	}
}

// TestWebSourcesBuildNoMarkupFromStrings reads the shipped files: no HTML is
// ever built from strings, nothing is inline, nothing comes from elsewhere.
func TestWebSourcesBuildNoMarkupFromStrings(t *testing.T) {
	root := filepath.Join("..", "web")
	forbidden := map[string]*regexp.Regexp{
		".js":   regexp.MustCompile(`innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setAttribute\(\s*["']on|localStorage|sessionStorage|document\.cookie\s*=`),
		".html": regexp.MustCompile(`<script>|<script [^>]*>[^<]|<style|\sstyle=|\son[a-z]+=|https?://`),
		".css":  regexp.MustCompile(`@import|url\(\s*["']?https?:`),
	}
	n := 0
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		re := forbidden[filepath.Ext(p)]
		if re == nil {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		if m := re.Find(b); m != nil {
			t.Errorf("%s contains %q", p, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 6 {
		t.Fatalf("checked %d files; the web files moved?", n)
	}
}

// TestStatsUsageIsTheCallersOwn: the stats page's usage route answers about
// the key that calls it, whatever else the request says.
func TestStatsUsageIsTheCallersOwn(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	rawA, a, err := r.keys.Create(ctx, apikeys.Key{Name: "a", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	rawB, b, err := r.keys.Create(ctx, apikeys.Key{Name: "b", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.chat(rawA, "hi"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the request is aggregated", func() bool { return r.todayRequests() == 1 })

	type usageResp struct {
		Summary struct {
			KeyID string `json:"key_id"`
			Total struct {
				Requests int64 `json:"requests"`
			} `json:"total"`
			Models []struct {
				Model string `json:"model"`
			} `json:"models"`
		} `json:"summary"`
		Daily []struct {
			Requests int64 `json:"requests"`
		} `json:"daily"`
	}
	read := func(raw, query string) usageResp {
		t.Helper()
		resp, body := get(t, r.url+"/web/api/key-usage"+query, map[string]string{"Authorization": "Bearer " + raw})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("key-usage: %d %s", resp.StatusCode, body)
		}
		if resp.Header.Get("Cache-Control") != "no-store" {
			t.Errorf("Cache-Control %q", resp.Header.Get("Cache-Control"))
		}
		var u usageResp
		if err := json.Unmarshal(body, &u); err != nil {
			t.Fatal(err)
		}
		return u
	}
	ua := read(rawA, "")
	if ua.Summary.KeyID != a.ID || ua.Summary.Total.Requests != 1 || len(ua.Summary.Models) != 1 ||
		ua.Summary.Models[0].Model != "gpt-4o" || len(ua.Daily) != 30 || ua.Daily[29].Requests != 1 {
		t.Fatalf("key a: %+v", ua)
	}
	ub := read(rawB, "?id="+a.ID+"&key_id="+a.ID)
	if ub.Summary.KeyID != b.ID || ub.Summary.Total.Requests != 0 || len(ub.Summary.Models) != 0 {
		t.Fatalf("key b sees %+v", ub)
	}
	for _, h := range []map[string]string{nil, {"Authorization": "Bearer cr_" + strings.Repeat("1", 64)}} {
		resp, body := get(t, r.url+"/web/api/key-usage", h)
		if resp.StatusCode != http.StatusUnauthorized || !json.Valid(body) {
			t.Errorf("key-usage with %v: %d %s", h, resp.StatusCode, body)
		}
	}
}

func TestDashboardRoute(t *testing.T) {
	r := newRig(t)
	if resp, _ := get(t, r.url+"/admin/dashboard", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	resp, err := http.Post(r.url+"/admin/login", "application/json",
		strings.NewReader(`{"username":"`+adminUser+`","password":"`+adminPassword+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	var sess struct {
		Token string `json:"token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	auth := map[string]string{"Authorization": "Bearer " + sess.Token}
	for _, q := range []string{"?granularity=week", "?from=yesterday", "?from=2025-03-10&to=2025-03-01"} {
		if resp, body := get(t, r.url+"/admin/dashboard"+q, auth); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d %s", q, resp.StatusCode, body)
		}
	}

	raw, _, err := r.keys.Create(context.Background(), apikeys.Key{Name: "dash", Enabled: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.chat(raw, "hi"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the request is aggregated", func() bool { return r.todayRequests() == 1 })
	resp2, body := get(t, r.url+"/admin/dashboard?granularity=day&from="+time.Now().UTC().AddDate(-1, 0, 0).Format(time.DateOnly), auth)
	if resp2.StatusCode != http.StatusOK {
		t.Fatalf("dashboard: %d %s", resp2.StatusCode, body)
	}
	var d struct {
		Today struct {
			Requests int64 `json:"requests"`
		} `json:"today"`
		Range struct {
			Totals struct {
				Requests int64 `json:"requests"`
			} `json:"totals"`
		} `json:"range"`
		Series struct {
			Granularity string            `json:"granularity"`
			Points      []json.RawMessage `json:"points"`
		} `json:"series"`
		Models  []struct{ ID string } `json:"models"`
		TopKeys []struct {
			Name    string `json:"name"`
			Deleted bool   `json:"deleted"`
		} `json:"top_keys"`
		Accounts []json.RawMessage `json:"accounts"`
		Services map[string]struct {
			State string `json:"state"`
			OK    bool   `json:"ok"`
		} `json:"services"`
		Redis struct {
			OK      bool   `json:"ok"`
			Version string `json:"version"`
		} `json:"redis"`
		KeyCount int `json:"key_count"`
	}
	if err := json.Unmarshal(body, &d); err != nil {
		t.Fatal(err)
	}
	if d.Today.Requests != 1 || d.Range.Totals.Requests != 1 || d.Series.Granularity != "day" || len(d.Series.Points) < 365 ||
		len(d.Models) != 1 || d.Models[0].ID != "gpt-4o" || len(d.TopKeys) != 1 || d.TopKeys[0].Name != "dash" ||
		d.Accounts == nil || !d.Services["vertical_studio"].OK || !d.Redis.OK || (d.Redis.Version == "" && !testredis.Embedded()) || d.KeyCount != 1 {
		t.Fatalf("dashboard: %s", body)
	}
	if bytes.Contains(body, []byte(raw)) {
		t.Fatal("the dashboard shows a key")
	}
}
