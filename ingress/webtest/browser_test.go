package webtest

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// chromiumPath finds the browser: RELAY_CHROMIUM, else Debian's chromium
// (or another Chromium or Chrome on PATH).
func chromiumPath() string {
	if p := os.Getenv("RELAY_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// page is one browser tab on the relay, with what went wrong in it: uncaught
// exceptions and console errors (a Content-Security-Policy violation is one).
type page struct {
	t    *testing.T
	ctx  context.Context
	base string

	mu       sync.Mutex
	problems []string
}

// stepTimeout bounds one browser step (waiting for the page, not timing it).
const stepTimeout = 30 * time.Second

// newPage starts a fresh headless Chromium (its own profile) and opens a tab.
// Without a browser the test fails: these tests are part of the suite.
func newPage(t *testing.T, base string) *page {
	t.Helper()
	bin := chromiumPath()
	if bin == "" {
		msg := "Chromium is not installed, and the web UI tests need it: install Debian's package " +
			"(apt-get install -y chromium) or set RELAY_CHROMIUM to a Chromium or Chrome binary"
		if os.Getenv("RELAY_TEST_REQUIRE_REDIS") != "" {
			msg += " (CI: .ci/run installs it)"
		}
		t.Fatal(msg)
	}
	profile := t.TempDir()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(bin),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("lang", "en-US"),
		chromedp.UserDataDir(profile),
		chromedp.WindowSize(1280, 900),
	}
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelTab := chromedp.NewContext(allocCtx)
	// Cleanups run last-in first-out: the browser ends before its profile
	// directory is removed.
	t.Cleanup(func() { cancelTab(); cancelAlloc() })
	p := &page{t: t, ctx: ctx, base: base}
	if err := chromedp.Listen(ctx, p.watch); err != nil {
		t.Fatalf("start chromium (%s): %v", bin, err)
	}
	p.do(chromedp.EmulateViewport(1280, 900))
	return p
}

func (p *page) watch(ev any) {
	var problem string
	switch e := ev.(type) {
	case *runtime.EventExceptionThrown:
		problem = "exception: " + e.ExceptionDetails.Text
		if e.ExceptionDetails.Exception != nil {
			problem += " " + e.ExceptionDetails.Exception.Description
		}
	case *log.EventEntryAdded:
		// Refused requests (a wrong password's 401) are expected; anything
		// else logged as an error (CSP violations included) is not.
		if e.Entry.Level == log.EntryLevelError && e.Entry.Source != log.EntrySourceNetwork {
			problem = "console " + string(e.Entry.Source) + ": " + e.Entry.Text
		}
	case *runtime.EventConsoleAPICalled:
		if e.Type == runtime.ConsoleAPICalledTypeError {
			problem = "console.error called"
		}
	}
	if problem != "" {
		p.mu.Lock()
		p.problems = append(p.problems, problem)
		p.mu.Unlock()
	}
}

// checkClean fails the test if the page logged an error.
func (p *page) checkClean() {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.problems) > 0 {
		p.t.Fatalf("the page reported problems:\n%s", strings.Join(p.problems, "\n"))
	}
}

func (p *page) do(steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		p.t.Fatalf("browser: %v\npage text:\n%s", err, p.bodyText())
	}
}

func (p *page) bodyText() string {
	ctx, cancel := context.WithTimeout(p.ctx, 5*time.Second)
	defer cancel()
	s, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	return s
}

func (p *page) open(path string) {
	p.t.Helper()
	p.do(chromedp.Navigate(p.base + path))
}

func (p *page) click(css string) {
	p.t.Helper()
	p.do(chromedp.Click(chromedp.CSS(css)))
}

// set gives an input, select or textarea its value and fires its input and
// change events, as a person's edit would.
func (p *page) set(css, value string) {
	p.t.Helper()
	p.do(chromedp.WaitVisible(chromedp.CSS(css)))
	sel, _ := json.Marshal(css)
	val, _ := json.Marshal(value)
	if !p.eval(`(() => { const el = document.querySelector(` + string(sel) + `); el.value = ` + string(val) + `;
		el.dispatchEvent(new Event("input", {bubbles: true})); el.dispatchEvent(new Event("change", {bubbles: true}));
		return el.value === ` + string(val) + `; })()`) {
		p.t.Fatalf("could not set %s to %q", css, value)
	}
}

// typeIn types into an input, firing key and input events.
func (p *page) typeIn(css, text string) {
	p.t.Helper()
	p.do(chromedp.SendKeys(chromedp.CSS(css), text))
}

func (p *page) text(css string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(css)))
	if err != nil {
		p.t.Fatalf("read %s: %v\npage text:\n%s", css, err, p.bodyText())
	}
	return s
}

// waitText waits until the element matching css exists and its text
// contains want.
func (p *page) waitText(css, want string) {
	p.t.Helper()
	p.waitJS(`(sel, want) => { const el = document.querySelector(sel); return !!el && el.textContent.includes(want); }`,
		css+" shows "+want, css, want)
}

// waitGone waits until no element matches css.
func (p *page) waitGone(css string) {
	p.t.Helper()
	p.waitJS(`(sel) => document.querySelector(sel) === null`, css+" is gone", css)
}

func (p *page) waitJS(fn, what string, args ...any) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout+5*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.PollFunction[bool](fn, chromedp.WithPollingArgs(args...),
		chromedp.WithPollingTimeout(stepTimeout))); err != nil {
		p.t.Fatalf("never happened: %s (%v)\npage text:\n%s", what, err, p.bodyText())
	}
}

func (p *page) eval(js string) bool {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

func (p *page) evalString(js string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
	if err != nil {
		p.t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// screenshot saves a full-page PNG under the artifacts directory and
// returns its path.
func (p *page) screenshot(name string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, stepTimeout)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		p.t.Fatalf("screenshot: %v", err)
	}
	dir := artifactsDir(p.t)
	path := filepath.Join(dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
	p.t.Logf("screenshot: %s", path)
	return path
}

// artifactsDir is RELAY_TEST_ARTIFACTS, or relay-test-artifacts/web under
// the temporary directory.
func artifactsDir(t *testing.T) string {
	dir := os.Getenv("RELAY_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "relay-test-artifacts")
	}
	dir = filepath.Join(dir, "web")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}
