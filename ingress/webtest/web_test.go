package webtest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// chat sends one chat request through the relay with key, as a client would.
func (r *rig) chat(key, text string) (string, error) {
	c := openai.NewClient(option.WithBaseURL(r.url+"/v1/"), option.WithAPIKey(key), option.WithMaxRetries(0))
	resp, err := c.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:    "gpt-4o",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage(text)},
	})
	if err != nil {
		return "", err
	}
	if len(resp.Choices) == 0 {
		return "", errors.New("no choices")
	}
	return resp.Choices[0].Message.Content, nil
}

// keyInfoStatus is the status of GET /v1/key-info with key.
func (r *rig) keyInfoStatus(key string) int {
	r.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, r.url+"/v1/key-info", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func (p *page) login(password string) {
	p.t.Helper()
	p.do(chromedp.WaitVisible(chromedp.ID("login-form")))
	p.set("#login-username", adminUser)
	p.set("#login-password", password)
	p.click("#login-submit")
}

// TestAdminUIAndStatsPage is the browser test: a wrong password is
// refused; the admin logs in, creates a key and sees it once with client
// settings; a chat request with the key shows on the dashboard and on the
// key holder's stats page; then the key's edit, disable, regenerate and
// delete, an account, and the password change, all through the pages.
func TestAdminUIAndStatsPage(t *testing.T) {
	r := newRig(t)
	p := newPage(t, r.url)

	// A wrong password is refused and no admin page shows.
	p.open("/web")
	p.login("not-the-password")
	p.waitText("#login-error", "Wrong username or password")
	if p.eval(`document.getElementById("nav-dashboard") !== null`) {
		t.Fatal("the admin pages show after a wrong password")
	}

	// The right one opens the dashboard, with nothing used yet.
	p.set("#login-password", "")
	p.login(adminPassword)
	p.waitText("#today-requests", "0")
	p.waitText("#vs-state", "ok")
	p.waitText("#redis-state", "connected")

	// Create a key with limits.
	p.click("#nav-keys")
	p.click("#new-key")
	p.do(chromedp.WaitVisible(chromedp.ID("key-form")))
	p.set("#kf-name", "browser key")
	p.set("#kf-description", "made in the browser test")
	p.set("#kf-tags", "test, web")
	p.set("#kf-window", "3600")
	p.set("#kf-requests", "100")
	p.set("#kf-daily-cost", "5")
	p.click("#kf-submit")
	p.waitText("#new-key-card", "only time")
	key := p.text("#new-key-value")
	if !strings.HasPrefix(key, "cr_") || len(key) != len("cr_")+64 {
		t.Fatalf("shown key %q", key)
	}
	for sel, want := range map[string][]string{
		"#settings-claude":      {"ANTHROPIC_BASE_URL=" + r.url + "/api/", "ANTHROPIC_AUTH_TOKEN=" + key},
		"#settings-openai":      {"base_url: " + r.url + "/v1", key},
		"#settings-sillytavern": {r.url + "/api/v1", r.url + "/v1", key},
	} {
		got := p.text(sel)
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("%s lacks %q:\n%s", sel, w, got)
			}
		}
	}
	p.waitText("#keys-table", "browser key")
	p.waitText("#keys-table", "100 req / 1 h")
	p.screenshot("keys-new-key")
	p.click("#new-key-done")
	p.waitGone("#new-key-card")
	if strings.Contains(p.bodyText(), key) {
		t.Fatal("the key is still on the page after it was dismissed")
	}

	// Use it for a chat request through the relay.
	answer, err := r.chat(key, "hello from the browser test")
	if err != nil {
		t.Fatalf("chat with the new key: %v", err)
	}
	if answer == "" {
		t.Fatal("empty answer")
	}
	eventually(t, "the request is aggregated", func() bool { return r.todayRequests() == 1 })

	// The dashboard shows it: totals, trend, model and key.
	p.click("#nav-dashboard")
	p.waitText("#today-requests", "1")
	p.waitText("#models-table", "gpt-4o")
	p.waitText("#top-keys", "browser key")
	if !p.eval(`document.querySelectorAll("#trend-chart svg rect.bar[height]:not([height='0'])").length === 1`) {
		t.Fatal("the trend chart does not show one bar for the request")
	}
	p.set("#range", "7d")
	p.waitText("#dashboard-body", "Last 7 days by day")
	p.waitText("#range-requests", "1")
	p.checkClean()
	p.screenshot("dashboard")

	// At phone width nothing runs off the side.
	p.do(chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
	p.waitJS(`() => { const s = document.querySelector("#trend-chart svg"); return !!s && Number(s.getAttribute("width")) <= 390; }`, "the chart redrawn for the phone")
	if !p.eval(`document.documentElement.scrollWidth <= window.innerWidth`) {
		t.Fatal("the dashboard is wider than a phone screen")
	}
	p.screenshot("dashboard-phone")

	// The key holder's stats page, at phone width too.
	p.open("/web/stats")
	p.typeIn("#stats-key", "cr_"+strings.Repeat("0", 64))
	p.click("#stats-submit")
	p.waitText("#stats-error", "not valid")
	p.typeIn("#stats-key", key)
	p.click("#stats-submit")
	p.waitText("#stats-name", "browser key")
	p.waitText("#ku-today-requests", "1")
	p.waitText("#ku-total-requests", "1")
	p.waitText("#stats-result", "gpt-4o")
	p.waitText("#limit-meters", "1 / 100")
	p.waitText("#limit-meters", "/ $5.00")
	if !p.eval(`document.documentElement.scrollWidth <= window.innerWidth`) {
		t.Fatal("the stats page is wider than a phone screen")
	}
	p.screenshot("stats-phone")
	p.do(chromedp.EmulateViewport(1280, 900))
	p.waitJS(`() => { const s = document.querySelector("#stats-chart svg"); return !!s && Number(s.getAttribute("width")) > 390; }`, "the chart redrawn for the desktop")
	p.screenshot("stats")
	p.checkClean()

	// The admin token lived only in the page's memory: a new page load asks
	// for the password again.
	p.open("/web/#/keys")
	p.do(chromedp.WaitVisible(chromedp.ID("login-form")))
	if p.eval(`sessionStorage.length + localStorage.length > 0 || document.cookie !== ""`) {
		t.Fatal("the UI stored something in the browser")
	}
	p.login(adminPassword)
	p.waitText("#keys-table", "browser key")

	row := `#keys-table .row-actions[data-key="browser key"]`
	// Search.
	p.typeIn("#key-search", "nothing-like-this")
	p.waitText("#keys-table", "No key matches")
	p.set("#key-search", "browser")
	p.waitText("#keys-table", "browser key")

	// Disable: the key stops working; enable: it works again.
	p.click(row + ` button[data-action="disable"]`)
	p.waitText("#keys-table", "disabled")
	eventually(t, "the disabled key is refused", func() bool { return r.keyInfoStatus(key) == http.StatusUnauthorized })
	p.click(row + ` button[data-action="enable"]`)
	p.waitText("#keys-table", "enabled")
	eventually(t, "the enabled key works", func() bool { return r.keyInfoStatus(key) == http.StatusOK })

	// Edit, with a name that would be markup if it were ever parsed as HTML.
	const evil = `<img src=x id=pwned onerror="document.title='pwned'">`
	p.click(row + ` button[data-action="edit"]`)
	p.do(chromedp.WaitVisible(chromedp.ID("key-form")))
	p.set("#kf-name", evil)
	p.set("#kf-concurrent", "3")
	p.click("#kf-submit")
	p.waitText("#keys-table", evil)
	p.waitText("#keys-table", "3 at once")
	if !p.eval(`document.getElementById("pwned") === null && document.title !== "pwned"`) {
		t.Fatal("a key name was rendered as HTML")
	}

	// Regenerate: a new key is shown once; the old one stops working.
	p.set("#key-search", "browser test")
	evilRow := `#keys-table .row-actions[data-key="` + strings.ReplaceAll(evil, `"`, `\"`) + `"]`
	p.click(evilRow + ` button[data-action="regenerate"]`)
	p.click(evilRow + ` button[data-action="yes, regenerate"]`)
	p.waitText("#new-key-card", "old key no longer works")
	newKey := p.text("#new-key-value")
	if newKey == key || !strings.HasPrefix(newKey, "cr_") {
		t.Fatalf("regenerated key %q (old %q)", newKey, key)
	}
	eventually(t, "the old key is refused", func() bool { return r.keyInfoStatus(key) == http.StatusUnauthorized })
	if got := r.keyInfoStatus(newKey); got != http.StatusOK {
		t.Fatalf("new key: status %d", got)
	}

	// Delete.
	p.click(evilRow + ` button[data-action="delete"]`)
	p.click(evilRow + ` button[data-action="yes, delete"]`)
	p.waitText("#keys-table", "No key matches")
	eventually(t, "the deleted key is refused", func() bool { return r.keyInfoStatus(newKey) == http.StatusUnauthorized })

	// Accounts: add a Console account, pause it with a note; the dashboard
	// says why it is out of service. Its API key never shows.
	p.click("#nav-accounts")
	p.click("#add-console")
	p.set("#af-name", "console one")
	p.set("#af-api-key", "sk-ant-api03-secret-value")
	p.set("#af-priority", "10")
	p.click("#af-submit")
	p.waitText("#accounts-table", "console one")
	p.waitText("#accounts-table", "active")
	p.click(`#accounts-table .row-actions[data-account="console one"] button[data-action="pause"]`)
	p.typeIn(`#accounts-table .row-actions[data-account="console one"] input`, "maintenance")
	p.click(`#accounts-table .row-actions[data-account="console one"] button[data-action="pause now"]`)
	p.waitText("#accounts-table", "paused by an administrator: maintenance")

	// Connect a Claude account with the OAuth flow: open the link (here the
	// fake signs in), paste the code back.
	p.click("#start-oauth")
	p.do(chromedp.WaitVisible(chromedp.ID("oauth-url")))
	authURL := p.evalString(`document.getElementById("oauth-url").href`)
	code, err := r.claude.Authorize(authURL)
	if err != nil {
		t.Fatalf("the authorize link %q: %v", authURL, err)
	}
	p.set("#oauth-code", code)
	p.set("#oauth-name", "team max")
	p.click("#oauth-submit")
	p.waitText("#accounts-table", "team max")
	p.waitText("#accounts-table", "claude-oauth")
	p.waitGone("#oauth-form")
	p.screenshot("accounts")

	p.click("#nav-dashboard")
	p.waitText("#dash-accounts", "paused by an administrator: maintenance")
	p.waitText("#dash-accounts", "team max")
	if strings.Contains(p.bodyText(), "sk-ant-api03-secret-value") {
		t.Fatal("an account's API key is shown")
	}
	p.screenshot("dashboard-after")

	// Change the password; the old one no longer logs in.
	p.click("#nav-password")
	p.set("#pw-current", adminPassword)
	p.set("#pw-new", "a-new-password-42")
	p.set("#pw-again", "a-new-password-42")
	p.click("#pw-submit")
	p.waitText("#pw-result", "changed")
	p.click("#nav-dashboard") // the session goes on with the new token
	p.waitText("#today-requests", "1")
	p.click("#logout")
	p.login(adminPassword)
	p.waitText("#login-error", "Wrong username or password")
	p.set("#login-password", "")
	p.login("a-new-password-42")
	p.waitText("#today-requests", "1")
	p.checkClean()
}
