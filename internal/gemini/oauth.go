package gemini

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// OAuthConfig is the Google OAuth client (by default Gemini CLI's public
// installed-app client, whose secret is not a secret).
type OAuthConfig struct {
	ClientID     string
	ClientSecret string
	AuthorizeURL string
	TokenURL     string
	RedirectURL  string // a page that shows the code to paste back
	Scopes       string // space-separated
}

// OAuth runs Google's authorization-code flow with PKCE (S256), and token
// refreshes.
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

// AuthorizeURL is where an administrator signs in to Google and approves;
// the redirect page then shows a code to paste back. challenge is the S256
// PKCE challenge of the verifier later given to Exchange.
func (o *OAuth) AuthorizeURL(challenge, state string) string {
	q := url.Values{}
	q.Set("client_id", o.cfg.ClientID)
	q.Set("redirect_uri", o.cfg.RedirectURL)
	q.Set("response_type", "code")
	q.Set("scope", o.cfg.Scopes)
	q.Set("access_type", "offline") // a refresh token
	q.Set("prompt", "consent")      // ... every time, also for a returning user
	q.Set("code_challenge", challenge)
	q.Set("code_challenge_method", "S256")
	q.Set("state", state)
	return o.cfg.AuthorizeURL + "?" + q.Encode()
}

// Tokens is a token endpoint's answer.
type Tokens struct {
	AccessToken  string
	RefreshToken string // empty on most refreshes: the old one stays valid
	ExpiresAt    time.Time
	Scopes       string
	Email        string // from the id_token, when the answer has one
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

// Exchange trades an authorization code for tokens.
func (o *OAuth) Exchange(ctx context.Context, code, verifier string) (Tokens, error) {
	return o.token(ctx, url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"client_id":     {o.cfg.ClientID},
		"client_secret": {o.cfg.ClientSecret},
		"redirect_uri":  {o.cfg.RedirectURL},
		"code_verifier": {verifier},
	})
}

// Refresh trades a refresh token for a new access token.
func (o *OAuth) Refresh(ctx context.Context, refreshToken string) (Tokens, error) {
	return o.token(ctx, url.Values{
		"grant_type":    {"refresh_token"},
		"refresh_token": {refreshToken},
		"client_id":     {o.cfg.ClientID},
		"client_secret": {o.cfg.ClientSecret},
	})
}

func (o *OAuth) token(ctx context.Context, form url.Values) (Tokens, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return Tokens{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
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
		IDToken      string `json:"id_token"`
		Error        string `json:"error"`
		ErrorDesc    string `json:"error_description"`
	}
	_ = json.Unmarshal(raw, &w)
	if resp.StatusCode != http.StatusOK || w.AccessToken == "" {
		te := &TokenError{Status: resp.StatusCode, Code: w.Error, Desc: w.ErrorDesc}
		if len(te.Desc) > 200 {
			te.Desc = te.Desc[:200]
		}
		return Tokens{}, te
	}
	t := Tokens{AccessToken: w.AccessToken, RefreshToken: w.RefreshToken, Scopes: w.Scope, Email: idTokenEmail(w.IDToken)}
	if w.ExpiresIn > 0 {
		t.ExpiresAt = time.Now().Add(time.Duration(w.ExpiresIn) * time.Second).UTC()
	}
	return t, nil
}

// idTokenEmail reads the email claim of an id_token. The token came straight
// from the token endpoint over TLS, and the email is only shown to the
// administrator, so its signature is not checked.
func idTokenEmail(tok string) string {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var claims struct {
		Email string `json:"email"`
	}
	_ = json.Unmarshal(b, &claims)
	return claims.Email
}
