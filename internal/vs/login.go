package vs

import (
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"sort"
	"strings"
)

// AuthCookieMarker is the part of the session cookie's name the login looks
// for. The upstream's cookie is the Supabase SSR one,
// sb-<project>-auth-token, possibly split into .0, .1, … chunks.
const AuthCookieMarker = "auth-token"

// Login runs the three-step password login and returns the value for a
// Cookie header that carries the session (every auth-token cookie the login
// set, chunks included). It never includes the password or cookie in an
// error.
func (c *Client) Login(ctx context.Context, email, password string) (string, error) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return "", &Error{Kind: KindClient, Op: "login", Err: err}
	}
	// A client of its own, with a jar that collects what each step sets,
	// over the shared transport; redirects are followed by do.
	hc := &http.Client{Transport: c.http.Transport, Jar: jar, CheckRedirect: c.http.CheckRedirect}
	pwPath := "/login-password.data?" + url.Values{"email": {email}}.Encode()
	steps := []request{
		{op: "login: open page", method: http.MethodGet, path: "/login"},
		{op: "login: email step", method: http.MethodGet, path: pwPath},
		{op: "login: password step", method: http.MethodPost, path: pwPath,
			form: url.Values{"email": {email}, "password": {password}}},
	}
	for _, st := range steps {
		st.client, st.follow = hc, true
		if err := c.step(ctx, st, http.StatusOK, http.StatusAccepted, http.StatusFound); err != nil {
			return "", err
		}
	}
	base, _ := url.Parse(c.base)
	var parts []string
	for _, ck := range jar.Cookies(base) {
		if strings.Contains(strings.ToLower(ck.Name), AuthCookieMarker) && ck.Value != "" {
			parts = append(parts, ck.Name+"="+ck.Value)
		}
	}
	if len(parts) == 0 {
		return "", &Error{Kind: KindClient, Op: "login", Msg: "no session cookie was set (wrong email or password?)"}
	}
	sort.Strings(parts) // chunk order .0, .1, … and a stable header
	return strings.Join(parts, "; "), nil
}

// step runs one request bounded by the step timeout, drains its body and
// checks its status.
func (c *Client) step(ctx context.Context, r request, ok ...int) error {
	ctx, cancel := context.WithTimeout(ctx, c.stepLimit)
	defer cancel()
	resp, err := c.do(ctx, r)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := readSmall(resp.Body, 1<<20)
	if err != nil {
		return transportError(r.op, err)
	}
	for _, s := range ok {
		if resp.StatusCode == s {
			return nil
		}
	}
	msg := preview(body)
	if strings.HasPrefix(r.op, "login") {
		msg = "" // a login page might echo what was posted
	}
	return statusError(r.op, resp.StatusCode, msg)
}
