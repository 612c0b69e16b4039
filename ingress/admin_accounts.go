package ingress

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/relaydev/relay/internal/accounts"
	"github.com/relaydev/relay/internal/anthropic"
	"github.com/relaydev/relay/internal/gemini"
)

// oauthSessionTTL is how long an authorize URL waits for its pasted code.
const oauthSessionTTL = 15 * time.Minute

// accountAdminRoutes serves upstream accounts under the (authenticated)
// admin group g:
//
//	GET    /accounts                 list (never credentials)
//	POST   /accounts                 create
//	GET    /accounts/:id             one account
//	PATCH  /accounts/:id             change fields and/or credentials
//	DELETE /accounts/:id             delete
//	POST   /accounts/:id/pause       take out of the pool ({"note": "..."})
//	POST   /accounts/:id/resume      put back into the pool
//	POST   /accounts/:id/reset       clear rate limits, pauses and the re-auth mark
//	POST   /accounts/:id/refresh     refresh an OAuth token now
//	POST   /accounts/oauth/start     begin the OAuth (PKCE) flow, Claude's or with {"kind":"gemini-oauth"} Google's: authorize URL + session id
//	POST   /accounts/oauth/exchange  finish it with the pasted code: creates (or re-authorizes) an account
func (s *Server) accountAdminRoutes(r fiber.Router) {
	r.Get("/accounts", s.handleAccountList)
	r.Post("/accounts", s.handleAccountCreate)
	r.Post("/accounts/oauth/start", s.handleOAuthStart)
	r.Post("/accounts/oauth/exchange", s.handleOAuthExchange)
	r.Get("/accounts/:id", s.handleAccountGet)
	r.Patch("/accounts/:id", s.handleAccountUpdate)
	r.Delete("/accounts/:id", s.handleAccountDelete)
	r.Post("/accounts/:id/pause", s.handleAccountPause)
	r.Post("/accounts/:id/resume", s.handleAccountResume)
	r.Post("/accounts/:id/reset", s.handleAccountReset)
	r.Post("/accounts/:id/refresh", s.handleAccountRefresh)
}

// accountView is an account as the admin API shows it.
type accountView struct {
	accounts.Account
	Status string `json:"status"`
}

func (s *Server) accountView(a accounts.Account) accountView {
	return accountView{Account: a, Status: a.Status(s.sched.Store().Now())}
}

// accountInput is a create or update request. Absent fields are unchanged
// on update. Credentials are write-only.
type accountInput struct {
	Name         *string    `json:"name"`
	Description  *string    `json:"description"`
	Kind         string     `json:"kind"`
	Priority     *int       `json:"priority"`
	Enabled      *bool      `json:"enabled"`
	Schedulable  *bool      `json:"schedulable"`
	Models       *[]string  `json:"models"`
	BaseURL      *string    `json:"base_url"`
	Proxy        *string    `json:"proxy"`
	APIKey       *string    `json:"api_key"`
	AccessToken  *string    `json:"access_token"`
	RefreshToken *string    `json:"refresh_token"`
	ExpiresAt    *time.Time `json:"token_expires_at"`
	Project      *string    `json:"project"`
}

func (in *accountInput) apply(a *accounts.Account) {
	if in.Name != nil {
		a.Name = *in.Name
	}
	if in.Description != nil {
		a.Description = *in.Description
	}
	if in.Priority != nil {
		a.Priority = *in.Priority
	}
	if in.Enabled != nil {
		a.Enabled = *in.Enabled
	}
	if in.Schedulable != nil {
		a.Schedulable = *in.Schedulable
		if a.Schedulable {
			a.PauseNote = ""
		}
	}
	if in.Models != nil {
		a.Models = append([]string(nil), (*in.Models)...)
	}
	if in.BaseURL != nil {
		a.BaseURL = *in.BaseURL
	}
	if in.ExpiresAt != nil {
		a.TokenExpiresAt = in.ExpiresAt.UTC()
	}
	if in.Project != nil {
		a.Project = strings.TrimSpace(*in.Project)
	}
}

// credentials applies the input's credential fields to cur and reports
// whether any was given.
func (in *accountInput) credentials(cur accounts.Credentials) (accounts.Credentials, bool) {
	changed := false
	set := func(dst *string, v *string) {
		if v != nil {
			*dst, changed = strings.TrimSpace(*v), true
		}
	}
	set(&cur.APIKey, in.APIKey)
	set(&cur.AccessToken, in.AccessToken)
	set(&cur.RefreshToken, in.RefreshToken)
	set(&cur.Proxy, in.Proxy)
	return cur, changed
}

func (s *Server) accountsReady() error {
	if s.sched == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "Upstream accounts are not configured on this relay.")
	}
	return nil
}

func decodeAccountJSON(c *fiber.Ctx, v any) error {
	if len(c.Body()) == 0 {
		return nil
	}
	if err := json.Unmarshal(c.Body(), v); err != nil {
		return Errorf(http.StatusBadRequest, "invalid_json", "The request body is not valid JSON: %s", err.Error())
	}
	return nil
}

func (s *Server) accountErr(c *fiber.Ctx, err error) error {
	var inv *accounts.InvalidError
	switch {
	case errors.Is(err, accounts.ErrNotFound):
		return Errorf(http.StatusNotFound, "account_not_found", "There is no account with this id.")
	case errors.As(err, &inv):
		return &Error{Status: http.StatusBadRequest, Code: "invalid_account", Message: inv.Msg}
	case errors.Is(err, accounts.ErrNoOAuthSession):
		return Errorf(http.StatusNotFound, "oauth_session_not_found", "%s", err.Error())
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	s.requestLog(c).Error().Err(err).Msg("account admin request failed")
	return Errorf(http.StatusInternalServerError, "internal_error", "The account operation failed; it has been logged under request id %s.", requestID(c))
}

func (s *Server) handleAccountList(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	list, err := s.sched.Store().List(ctx)
	if err != nil {
		return s.accountErr(c, err)
	}
	kind := c.Query("kind")
	out := make([]accountView, 0, len(list))
	for _, a := range list {
		if kind == "" || string(a.Kind) == kind {
			out = append(out, s.accountView(a))
		}
	}
	return c.JSON(fiber.Map{"accounts": out})
}

func (s *Server) handleAccountCreate(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	var in accountInput
	if err := decodeAccountJSON(c, &in); err != nil {
		return err
	}
	a := accounts.Account{Kind: accounts.Kind(in.Kind), Enabled: true, Schedulable: true}
	in.apply(&a)
	creds, _ := in.credentials(accounts.Credentials{})
	ctx, cancel := adminCtx(c)
	defer cancel()
	created, err := s.sched.Store().Create(ctx, a, creds)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.Status(http.StatusCreated).JSON(s.accountView(created))
}

func (s *Server) handleAccountGet(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	a, err := s.sched.Store().Get(ctx, c.Params("id"))
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(s.accountView(a))
}

func (s *Server) handleAccountUpdate(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	var in accountInput
	if err := decodeAccountJSON(c, &in); err != nil {
		return err
	}
	if in.Kind != "" {
		return Errorf(http.StatusBadRequest, "invalid_account", "kind cannot be changed; create a new account instead.")
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	id := c.Params("id")
	_, cur, err := s.sched.Store().Credentials(ctx, id)
	if err != nil {
		return s.accountErr(c, err)
	}
	var credsPtr *accounts.Credentials
	if next, changed := in.credentials(cur); changed {
		credsPtr = &next
	}
	a, err := s.sched.Store().Update(ctx, id, func(a *accounts.Account) error { in.apply(a); return nil }, credsPtr)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(s.accountView(a))
}

func (s *Server) handleAccountDelete(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	if err := s.sched.Store().Delete(ctx, c.Params("id")); err != nil {
		return s.accountErr(c, err)
	}
	return c.SendStatus(http.StatusNoContent)
}

func (s *Server) handleAccountPause(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	var in struct {
		Note string `json:"note"`
	}
	if err := decodeAccountJSON(c, &in); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	a, err := s.sched.Store().Update(ctx, c.Params("id"), func(a *accounts.Account) error {
		a.Schedulable, a.PauseNote = false, strings.TrimSpace(in.Note)
		return nil
	}, nil)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(s.accountView(a))
}

func (s *Server) handleAccountResume(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	a, err := s.sched.Store().Update(ctx, c.Params("id"), func(a *accounts.Account) error {
		a.Schedulable, a.PauseNote = true, ""
		return nil
	}, nil)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(s.accountView(a))
}

func (s *Server) handleAccountReset(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	id := c.Params("id")
	if _, err := s.sched.Store().Get(ctx, id); err != nil {
		return s.accountErr(c, err)
	}
	if err := s.sched.Store().ClearState(ctx, id); err != nil {
		return s.accountErr(c, err)
	}
	a, err := s.sched.Store().Get(ctx, id)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(s.accountView(a))
}

func (s *Server) handleAccountRefresh(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	id := c.Params("id")
	a, cur, err := s.sched.Store().Credentials(ctx, id)
	if err != nil {
		return s.accountErr(c, err)
	}
	if !a.Kind.OAuth() {
		return Errorf(http.StatusBadRequest, "not_oauth", "Only OAuth accounts (claude-oauth, gemini-oauth) have tokens to refresh.")
	}
	keeper := s.claudeTokens
	if a.Kind == accounts.KindGeminiOAuth {
		keeper = s.geminiTokens
	}
	if keeper == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "The OAuth token keeper is not running on this relay.")
	}
	// Passing the current token as the stale one forces a refresh.
	stale := cur.AccessToken
	if stale == "" {
		stale = "-"
	}
	if _, err := keeper.Refresh(ctx, id, stale); err != nil {
		var te *anthropic.TokenError
		var ge *gemini.TokenError
		if errors.As(err, &te) {
			return Errorf(http.StatusBadGateway, "refresh_failed", "The token endpoint refused the refresh: %s. Re-authorize the account.", te.Error())
		}
		if errors.As(err, &ge) {
			return Errorf(http.StatusBadGateway, "refresh_failed", "The token endpoint refused the refresh: %s. Re-authorize the account.", ge.Error())
		}
		return Errorf(http.StatusBadGateway, "refresh_failed", "The refresh failed: %s", err.Error())
	}
	a, err = s.sched.Store().Get(ctx, id)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(s.accountView(a))
}

func (s *Server) handleOAuthStart(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	var in struct {
		Kind      string `json:"kind"`
		AccountID string `json:"account_id"`
	}
	if err := decodeAccountJSON(c, &in); err != nil {
		return err
	}
	if in.Kind == string(accounts.KindGeminiOAuth) {
		return s.googleOAuthStart(c, in.AccountID)
	}
	if s.claudeOAuth == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "Claude OAuth is not configured on this relay.")
	}
	if in.Kind != "" && in.Kind != string(accounts.KindClaudeOAuth) {
		return Errorf(http.StatusBadRequest, "invalid_kind", "Only kinds claude-oauth and gemini-oauth have an OAuth flow here.")
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	if in.AccountID != "" {
		a, err := s.sched.Store().Get(ctx, in.AccountID)
		if err != nil {
			return s.accountErr(c, err)
		}
		if a.Kind != accounts.KindClaudeOAuth {
			return Errorf(http.StatusBadRequest, "not_oauth", "That account is not a Claude OAuth account.")
		}
	}
	p := anthropic.NewPKCE()
	now := time.Now().UTC()
	id, err := s.sched.Store().SaveOAuthSession(ctx, accounts.OAuthSession{
		Kind: accounts.KindClaudeOAuth, Verifier: p.Verifier, State: p.State, AccountID: in.AccountID, CreatedAt: now,
	}, oauthSessionTTL)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(fiber.Map{
		"session_id":    id,
		"authorize_url": s.claudeOAuth.AuthorizeURL(p),
		"expires_at":    now.Add(oauthSessionTTL),
		"instructions":  "Open authorize_url, sign in and approve, then POST the code the page shows to /admin/accounts/oauth/exchange with this session_id.",
	})
}

func (s *Server) handleOAuthExchange(c *fiber.Ctx) error {
	if err := s.accountsReady(); err != nil {
		return err
	}
	var in struct {
		SessionID string `json:"session_id"`
		Code      string `json:"code"`
		accountInput
	}
	if err := decodeAccountJSON(c, &in); err != nil {
		return err
	}
	if in.SessionID == "" || strings.TrimSpace(in.Code) == "" {
		return Errorf(http.StatusBadRequest, "invalid_request", "session_id and code are required.")
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	store := s.sched.Store()
	sess, err := store.LoadOAuthSession(ctx, in.SessionID)
	if err != nil {
		return s.accountErr(c, err)
	}
	if sess.Kind == accounts.KindGeminiOAuth {
		return s.googleOAuthExchange(ctx, c, in.SessionID, sess, in.Code, in.accountInput)
	}
	if s.claudeOAuth == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "Claude OAuth is not configured on this relay.")
	}
	code, state := anthropic.CleanCode(in.Code)
	if state != "" && state != sess.State {
		return Errorf(http.StatusBadRequest, "state_mismatch", "The pasted code belongs to another authorization; start again.")
	}
	t, err := s.claudeOAuth.Exchange(ctx, code, state, anthropic.PKCE{Verifier: sess.Verifier, State: sess.State})
	if err != nil {
		var te *anthropic.TokenError
		if errors.As(err, &te) {
			return Errorf(http.StatusBadRequest, "code_exchange_failed", "The token endpoint refused the code: %s", te.Error())
		}
		return Errorf(http.StatusBadGateway, "code_exchange_failed", "The token endpoint could not be reached: %s", err.Error())
	}
	_ = store.DropOAuthSession(ctx, in.SessionID)

	if sess.AccountID != "" {
		_, cur, err := store.Credentials(ctx, sess.AccountID)
		if err != nil {
			return s.accountErr(c, err)
		}
		cur.AccessToken, cur.RefreshToken = t.AccessToken, t.RefreshToken
		a, err := store.Update(ctx, sess.AccountID, func(a *accounts.Account) error {
			a.TokenExpiresAt, a.Scopes = t.ExpiresAt, t.Scopes
			a.Email, a.Organization = t.Email, t.Organization
			return nil
		}, &cur)
		if err != nil {
			return s.accountErr(c, err)
		}
		return c.JSON(s.accountView(a))
	}
	a := accounts.Account{Kind: accounts.KindClaudeOAuth, Enabled: true, Schedulable: true,
		TokenExpiresAt: t.ExpiresAt, Scopes: t.Scopes, Email: t.Email, Organization: t.Organization}
	in.accountInput.apply(&a)
	if a.Name == "" {
		a.Name = t.Email
		if a.Name == "" {
			a.Name = "Claude account"
		}
	}
	creds := accounts.Credentials{AccessToken: t.AccessToken, RefreshToken: t.RefreshToken}
	if in.Proxy != nil {
		creds.Proxy = strings.TrimSpace(*in.Proxy)
	}
	created, err := store.Create(ctx, a, creds)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.Status(http.StatusCreated).JSON(s.accountView(created))
}

// googleOAuthStart begins Google's OAuth flow for a gemini-oauth account
// (Gemini CLI's client): the authorize URL, whose page shows a code to
// paste back to /accounts/oauth/exchange.
func (s *Server) googleOAuthStart(c *fiber.Ctx, accountID string) error {
	if s.geminiOAuth == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "Google OAuth is not configured on this relay.")
	}
	ctx, cancel := adminCtx(c)
	defer cancel()
	if accountID != "" {
		a, err := s.sched.Store().Get(ctx, accountID)
		if err != nil {
			return s.accountErr(c, err)
		}
		if a.Kind != accounts.KindGeminiOAuth {
			return Errorf(http.StatusBadRequest, "not_oauth", "That account is not a Google OAuth (gemini-oauth) account.")
		}
	}
	p := anthropic.NewPKCE() // RFC 7636 S256, the same for Google
	now := time.Now().UTC()
	id, err := s.sched.Store().SaveOAuthSession(ctx, accounts.OAuthSession{
		Kind: accounts.KindGeminiOAuth, Verifier: p.Verifier, State: p.State, AccountID: accountID, CreatedAt: now,
	}, oauthSessionTTL)
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.JSON(fiber.Map{
		"session_id":    id,
		"authorize_url": s.geminiOAuth.AuthorizeURL(p.Challenge, p.State),
		"expires_at":    now.Add(oauthSessionTTL),
		"instructions":  "Open authorize_url, sign in with Google and approve, then POST the code the page shows to /admin/accounts/oauth/exchange with this session_id.",
	})
}

// googleOAuthExchange trades the pasted code for tokens, finds the
// account's Code Assist project (best effort: a request finds it later
// otherwise), and creates or re-authorizes the account.
func (s *Server) googleOAuthExchange(ctx context.Context, c *fiber.Ctx, sessionID string, sess accounts.OAuthSession,
	pasted string, in accountInput) error {
	if s.geminiOAuth == nil {
		return Errorf(http.StatusServiceUnavailable, "service_unavailable", "Google OAuth is not configured on this relay.")
	}
	code, state := anthropic.CleanCode(pasted)
	if state != "" && state != sess.State {
		return Errorf(http.StatusBadRequest, "state_mismatch", "The pasted code belongs to another authorization; start again.")
	}
	t, err := s.geminiOAuth.Exchange(ctx, code, sess.Verifier)
	if err != nil {
		var te *gemini.TokenError
		if errors.As(err, &te) {
			return Errorf(http.StatusBadRequest, "code_exchange_failed", "The token endpoint refused the code: %s", te.Error())
		}
		return Errorf(http.StatusBadGateway, "code_exchange_failed", "The token endpoint could not be reached: %s", err.Error())
	}
	store := s.sched.Store()
	_ = store.DropOAuthSession(ctx, sessionID)

	project := ""
	if in.Project != nil {
		project = strings.TrimSpace(*in.Project)
	}
	proxy := ""
	if in.Proxy != nil {
		proxy = strings.TrimSpace(*in.Proxy)
	}
	if sess.AccountID != "" {
		a, cur, err := store.Credentials(ctx, sess.AccountID)
		if err != nil {
			return s.accountErr(c, err)
		}
		if project == "" {
			project = a.Project
		}
		proxy = cur.Proxy
	}
	var baseURL string
	if in.BaseURL != nil {
		baseURL = strings.TrimSpace(*in.BaseURL)
	}
	if s.gemini != nil {
		d, err := s.gemini.DiscoverProject(ctx, gemini.Target{BaseURL: baseURL, BearerToken: t.AccessToken, Proxy: proxy},
			project, onboardPoll, onboardTries)
		if err != nil {
			s.requestLog(c).Warn().Err(err).Msg("Code Assist project discovery failed; it is retried on first use")
		} else {
			project = d.Project
		}
	}

	if sess.AccountID != "" {
		_, cur, err := store.Credentials(ctx, sess.AccountID)
		if err != nil {
			return s.accountErr(c, err)
		}
		cur.AccessToken = t.AccessToken
		if t.RefreshToken != "" {
			cur.RefreshToken = t.RefreshToken
		}
		a, err := store.Update(ctx, sess.AccountID, func(a *accounts.Account) error {
			a.TokenExpiresAt, a.Scopes, a.Email, a.Project = t.ExpiresAt, t.Scopes, t.Email, project
			return nil
		}, &cur)
		if err != nil {
			return s.accountErr(c, err)
		}
		return c.JSON(s.accountView(a))
	}
	a := accounts.Account{Kind: accounts.KindGeminiOAuth, Enabled: true, Schedulable: true,
		TokenExpiresAt: t.ExpiresAt, Scopes: t.Scopes, Email: t.Email}
	in.apply(&a)
	a.Project = project
	if a.Name == "" {
		a.Name = t.Email
		if a.Name == "" {
			a.Name = "Google account"
		}
	}
	created, err := store.Create(ctx, a, accounts.Credentials{AccessToken: t.AccessToken, RefreshToken: t.RefreshToken, Proxy: proxy})
	if err != nil {
		return s.accountErr(c, err)
	}
	return c.Status(http.StatusCreated).JSON(s.accountView(created))
}
