package anthropic

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// OAuthConfig is the Claude OAuth client (Claude Code's public client).
type OAuthConfig struct {
	ClientID     string
	AuthorizeURL string
	TokenURL     string
	RedirectURL  string
	Scopes       string // space-separated
}

// OAuth runs the PKCE (S256) authorization-code flow and token refreshes.
type OAuth struct {
	cfg  OAuthConfig
	http *http.Client
}

// NewOAuth makes the flow. httpClient may be nil for a default with a 30 s
// timeout.
func NewOAuth(cfg OAuthConfig, httpClient *http.Client) *OAuth {
	if httpClient == nil {
		httpClient = &http.Client{Timeout: 30 * time.Second}
	}
	return &OAuth{cfg: cfg, http: httpClient}
}

// PKCE is one authorization attempt's secrets.
type PKCE struct {
	Verifier  string // sent with the code exchange; keep it secret
	Challenge string // BASE64URL(SHA256(Verifier)), sent in the authorize URL
	State     string
}

// NewPKCE makes a fresh verifier (43 characters from 32 random bytes), its
// S256 challenge and a state value.
func NewPKCE() PKCE {
	v := randomURLSafe(32)
	return PKCE{Verifier: v, Challenge: Challenge(v), State: randomURLSafe(32)}
}

// Challenge is the S256 code challenge of verifier.
func Challenge(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func randomURLSafe(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic("crypto/rand: " + err.Error())
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// AuthorizeURL is where an administrator signs in and approves; the page
// then shows a code to paste back.
func (o *OAuth) AuthorizeURL(p PKCE) string {
	q := url.Values{}
	q.Set("code", "true")
	q.Set("client_id", o.cfg.ClientID)
	q.Set("response_type", "code")
	q.Set("redirect_uri", o.cfg.RedirectURL)
	q.Set("scope", o.cfg.Scopes)
	q.Set("code_challenge", p.Challenge)
	q.Set("code_challenge_method", "S256")
	q.Set("state", p.State)
	return o.cfg.AuthorizeURL + "?" + q.Encode()
}

// Tokens is a token endpoint's answer.
type Tokens struct {
	AccessToken  string
	RefreshToken string
	ExpiresAt    time.Time
	Scopes       string
	Email        string
	Organization string
}

// TokenError is a refusal from the token endpoint (a bad code, a revoked
// refresh token). Its message never contains a token.
type TokenError struct {
	Status int
	Code   string
	Desc   string
}

func (e *TokenError) Error() string {
	msg := fmt.Sprintf("token endpoint answered %d", e.Status)
	if e.Code != "" {
		msg += " " + e.Code
	}
	if e.Desc != "" {
		msg += ": " + e.Desc
	}
	return msg
}

// CleanCode takes what an administrator pasted: the code, "code#state", or
// the whole callback URL, and returns the code and the state if present.
func CleanCode(pasted string) (code, state string) {
	pasted = strings.TrimSpace(pasted)
	if u, err := url.Parse(pasted); err == nil && u.Scheme != "" && u.RawQuery != "" {
		q := u.Query()
		if c := q.Get("code"); c != "" {
			return c, q.Get("state")
		}
	}
	code, state, _ = strings.Cut(pasted, "#")
	return strings.TrimSpace(code), strings.TrimSpace(state)
}

// Exchange trades an authorization code for tokens.
func (o *OAuth) Exchange(ctx context.Context, code, state string, p PKCE) (Tokens, error) {
	if state == "" {
		state = p.State
	}
	return o.token(ctx, map[string]string{
		"grant_type":    "authorization_code",
		"client_id":     o.cfg.ClientID,
		"code":          code,
		"redirect_uri":  o.cfg.RedirectURL,
		"code_verifier": p.Verifier,
		"state":         state,
	})
}

// Refresh trades a refresh token for new tokens. The answer may carry a new
// refresh token (rotation); the old one is then spent.
func (o *OAuth) Refresh(ctx context.Context, refreshToken string) (Tokens, error) {
	return o.token(ctx, map[string]string{
		"grant_type":    "refresh_token",
		"client_id":     o.cfg.ClientID,
		"refresh_token": refreshToken,
	})
}

func (o *OAuth) token(ctx context.Context, body map[string]string) (Tokens, error) {
	b, _ := json.Marshal(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.cfg.TokenURL, bytes.NewReader(b))
	if err != nil {
		return Tokens{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := o.http.Do(req)
	if err != nil {
		return Tokens{}, fmt.Errorf("token endpoint: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return Tokens{}, fmt.Errorf("token endpoint: %w", err)
	}
	var w struct {
		AccessToken  string `json:"access_token"`
		RefreshToken string `json:"refresh_token"`
		ExpiresIn    int64  `json:"expires_in"`
		Scope        string `json:"scope"`
		Error        any    `json:"error"`
		ErrorDesc    string `json:"error_description"`
		Account      *struct {
			Email string `json:"email_address"`
		} `json:"account"`
		Organization *struct {
			Name string `json:"name"`
		} `json:"organization"`
	}
	_ = json.Unmarshal(raw, &w)
	if resp.StatusCode != http.StatusOK || w.AccessToken == "" {
		te := &TokenError{Status: resp.StatusCode, Desc: w.ErrorDesc}
		switch e := w.Error.(type) {
		case string:
			te.Code = e
		case map[string]any:
			te.Code, _ = e["type"].(string)
			if m, _ := e["message"].(string); m != "" && te.Desc == "" {
				te.Desc = m
			}
		}
		if len(te.Desc) > 200 {
			te.Desc = te.Desc[:200]
		}
		return Tokens{}, te
	}
	t := Tokens{AccessToken: w.AccessToken, RefreshToken: w.RefreshToken, Scopes: w.Scope}
	if w.ExpiresIn > 0 {
		t.ExpiresAt = time.Now().Add(time.Duration(w.ExpiresIn) * time.Second).UTC()
	}
	if w.Account != nil {
		t.Email = w.Account.Email
	}
	if w.Organization != nil {
		t.Organization = w.Organization.Name
	}
	return t, nil
}
