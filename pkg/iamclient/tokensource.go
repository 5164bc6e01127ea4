package iamclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// OAuth 2.0 grant types accepted by TokenService.Token and /oauth2/token.
const (
	GrantPassword          = "password"
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
)

// ErrRefreshTokenLost is wrapped by the errors of a [CachingTokenSource] whose refresh
// token can no longer be used: a refresh reached IAM and its outcome is unknown (the token
// may have been rotated), or IAM refused it. Log in again.
var ErrRefreshTokenLost = errors.New("iamclient: refresh token lost; log in again")

// TokenSource supplies the bearer token of each call. Implementations are safe for
// concurrent use; Token may block (to obtain a token) and must honour ctx.
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// StaticToken is a TokenSource that always returns the same token.
type StaticToken string

// Token returns the token itself.
func (s StaticToken) Token(context.Context) (string, error) {
	if s == "" {
		return "", errors.New("empty static token")
	}
	return string(s), nil
}

// TokenSourceConfig says how a [CachingTokenSource] obtains its tokens: with client
// credentials (ClientID and ClientSecret) or with a refresh token (RefreshToken), one or
// the other.
type TokenSourceConfig struct {
	// ClientID and ClientSecret select the client_credentials grant (a service account's
	// name and secret).
	ClientID, ClientSecret string
	// RefreshToken selects the refresh_token grant. IAM rotates the refresh token on every
	// use; the source keeps the newest and reports it through OnToken.
	RefreshToken string
	// Project scopes the tokens to a project; empty asks for unscoped tokens.
	Project string
	// Audience asks for these audiences; empty gives IAM's default.
	Audience []string
	// RefreshAfter is the fraction of a token's lifetime after which a new one is
	// obtained (default 0.8). Between it and expiry, callers get the cached token at once
	// while one background refresh runs.
	RefreshAfter float64
	// ExpiryMargin is how long before its expiry a cached token is no longer handed out,
	// so it does not expire in flight (default 10 s, at most a tenth of the lifetime).
	ExpiryMargin time.Duration
	// FetchTimeout bounds one grant, retries included (default 30 s).
	FetchTimeout time.Duration
	// OnToken, when set, is called after every successful grant with IAM's response (the
	// rotated refresh token included), e.g. to persist it. It is called with no lock
	// held, from the goroutine that ran the grant; it must not block for long.
	OnToken func(*iamv1.TokenResponse)
	// Now is the clock (default time.Now); tests replace it.
	Now func() time.Time
	// Logger receives background refresh failures; nil discards them.
	Logger *slog.Logger
}

// CachingTokenSource obtains access tokens from IAM with client credentials or a refresh
// token and caches each until RefreshAfter of its lifetime has passed. It is safe for
// concurrent use: however many callers want a token at once, at most one grant is in
// flight (the others wait for its result). Once a token is due for refresh but still
// valid, callers are not delayed: they get it at once while one grant runs in the
// background; only when there is no usable token do callers block on the grant.
//
// A failed background refresh is retried no sooner than a second later (doubling up to
// 30 s), so an IAM outage does not turn every call into a grant; the cached token is
// served until its expiry margin.
//
// Close stops a grant in flight. The source holds no goroutine otherwise.
type CachingTokenSource struct {
	client *Client
	cfg    TokenSourceConfig
	log    *slog.Logger

	ctx    context.Context // ends on Close; bounds grants
	cancel context.CancelFunc

	mu        sync.Mutex
	tok       string    // cached access token, "" if none
	refreshAt time.Time // when a new token should be obtained
	expireAt  time.Time // when tok stops being handed out (expiry minus margin)
	refresh   string    // current refresh token (refresh grant)
	lost      error     // sticky: the refresh token is unusable
	flight    *flight   // grant in flight, nil if none
	nextTry   time.Time // earliest background retry after a failure
	failWait  time.Duration
}

// flight is one grant in flight; done closes when tok/err are set.
type flight struct {
	done chan struct{}
	tok  string
	err  error
}

// NewTokenSource returns a source that obtains tokens through c (whose own token source,
// if any, is not used: grants carry no bearer token). It does not contact IAM.
func (c *Client) NewTokenSource(cfg TokenSourceConfig) (*CachingTokenSource, error) {
	cc := cfg.ClientID != "" || cfg.ClientSecret != ""
	if cc == (cfg.RefreshToken != "") {
		return nil, errors.New("iamclient: token source needs client credentials or a refresh token (one of them)")
	}
	if cc && (cfg.ClientID == "" || cfg.ClientSecret == "") {
		return nil, errors.New("iamclient: token source: client id and client secret go together")
	}
	if cfg.RefreshAfter <= 0 || cfg.RefreshAfter >= 1 {
		cfg.RefreshAfter = 0.8
	}
	if cfg.ExpiryMargin <= 0 {
		cfg.ExpiryMargin = 10 * time.Second
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &CachingTokenSource{
		client:  c,
		cfg:     cfg,
		log:     log,
		ctx:     ctx,
		cancel:  cancel,
		refresh: cfg.RefreshToken,
	}, nil
}

// Token returns a valid cached access token, or obtains one (see the type's
// documentation). The error of a failed grant wraps IAM's error; after a refresh whose
// outcome is unknown it wraps [ErrRefreshTokenLost].
func (s *CachingTokenSource) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	now := s.cfg.Now()
	if s.tok != "" && now.Before(s.expireAt) {
		tok := s.tok
		if !now.Before(s.refreshAt) && s.flight == nil && !now.Before(s.nextTry) && s.lost == nil {
			s.startLocked(true)
		}
		s.mu.Unlock()
		return tok, nil
	}
	f := s.flight
	if f == nil {
		f = s.startLocked(false)
	}
	s.mu.Unlock()
	select {
	case <-f.done:
		return f.tok, f.err
	case <-ctx.Done():
		return "", context.Cause(ctx)
	}
}

// Invalidate drops tok from the cache if it is the cached token, so that the next Token
// obtains a new one. Clients call it when IAM or a service refused tok.
func (s *CachingTokenSource) Invalidate(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok == tok {
		s.tok = ""
	}
}

// RefreshToken returns the current refresh token ("" for client credentials).
func (s *CachingTokenSource) RefreshToken() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refresh
}

// Close stops a grant in flight (its waiters get an error) and makes later grants fail.
func (s *CachingTokenSource) Close() { s.cancel() }

// startLocked starts a grant. s.mu is held.
func (s *CachingTokenSource) startLocked(background bool) *flight {
	f := &flight{done: make(chan struct{})}
	s.flight = f
	if s.lost != nil {
		f.err = s.lost
		s.flight = nil
		close(f.done)
		return f
	}
	req := &iamv1.TokenRequest{Project: s.cfg.Project, Audience: s.cfg.Audience}
	if s.refresh != "" {
		req.GrantType, req.RefreshToken = GrantRefreshToken, s.refresh
	} else {
		req.GrantType, req.ClientId, req.ClientSecret = GrantClientCredentials, s.cfg.ClientID, s.cfg.ClientSecret
	}
	go s.grant(f, req, background)
	return f
}

// grant runs one grant and publishes its result.
func (s *CachingTokenSource) grant(f *flight, req *iamv1.TokenRequest, background bool) {
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.FetchTimeout)
	defer cancel()
	start := s.cfg.Now()
	resp, err := s.client.Token(ctx, req)

	s.mu.Lock()
	if err != nil {
		if req.GrantType == GrantRefreshToken && refreshLost(err) {
			s.lost = fmt.Errorf("%w: %w", ErrRefreshTokenLost, err)
			err = s.lost
		}
		s.failWait = min(max(2*s.failWait, time.Second), 30*time.Second)
		s.nextTry = s.cfg.Now().Add(s.failWait)
		f.err = err
	} else {
		life := time.Duration(resp.GetExpiresIn()) * time.Second
		if life <= 0 {
			life = time.Minute // IAM always says; be conservative if it did not
		}
		margin := min(s.cfg.ExpiryMargin, life/10)
		s.tok = resp.GetAccessToken()
		s.refreshAt = start.Add(time.Duration(float64(life) * s.cfg.RefreshAfter))
		s.expireAt = start.Add(life - margin)
		if rt := resp.GetRefreshToken(); rt != "" && req.GrantType == GrantRefreshToken {
			s.refresh = rt
		}
		s.failWait, s.nextTry = 0, time.Time{}
		f.tok = s.tok
	}
	s.flight = nil
	s.mu.Unlock()
	close(f.done)

	if err != nil {
		if background {
			s.log.Warn("iamclient: background token refresh failed; serving the cached token", "grant", req.GrantType, "error", err)
		}
		return
	}
	if s.cfg.OnToken != nil {
		s.cfg.OnToken(resp)
	}
}

// refreshLost reports whether a failed refresh grant leaves the refresh token unusable:
// the outcome is unknown (it may have been rotated) or IAM refused the token itself.
func refreshLost(err error) bool {
	if errors.Is(err, ErrOutcomeUnknown) {
		return true
	}
	return isUnauthenticated(err)
}
