package token

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"time"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/store"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

var (
	projectRE  = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	audienceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$`)
)

// issued describes one issued access token, for the response and the audit trail.
type issued struct {
	access  string
	claims  Claims
	refresh string
}

// Token runs one token request (the three grants of RFC 6749 §4.3, §4.4, §6) for a caller
// at source (its address, for rate limiting and the audit trail). Errors wrap the
// sentinels of this package; a lockout keeps its *store.LockedError in the chain so the
// edge can say when to retry.
func (s *Service) Token(ctx context.Context, req *iamv1.TokenRequest, source string) (*iamv1.TokenResponse, error) {
	var (
		is        *issued
		principal string
		err       error
	)
	switch req.GetGrantType() {
	case GrantPassword:
		principal, is, err = s.passwordGrant(ctx, req, source)
	case GrantClientCredentials:
		principal, is, err = s.clientGrant(ctx, req, source)
	case GrantRefreshToken:
		principal, is, err = s.refreshGrant(ctx, req, source)
	case "":
		err = fmt.Errorf("%w: grant_type is required", ErrInvalidRequest)
	default:
		err = fmt.Errorf("%w %q: want password, client_credentials or refresh_token", ErrUnsupportedGrant, req.GetGrantType())
	}
	if s.cfg.OnResult != nil {
		s.cfg.OnResult(req.GetGrantType(), err)
	}
	if err != nil {
		target := principal
		if target == "" {
			target = firstNonEmpty(req.GetUsername(), req.GetClientId())
		}
		s.audit.Record(ctx, audit.Event{Action: "token.refuse", Target: target, Outcome: audit.Failure,
			Reason: err.Error(), Source: source, Attrs: []slog.Attr{slog.String("grant_type", req.GetGrantType())}})
		return nil, err
	}
	s.audit.Record(ctx, audit.Event{Action: "token.issue", Actor: principal, Target: principal, Source: source,
		Attrs: []slog.Attr{slog.String("grant_type", req.GetGrantType()), slog.String("jti", is.claims.JTI),
			slog.String("client_id", is.claims.ClientID), slog.String("project", is.claims.Project),
			slog.Bool("refresh_token", is.refresh != "")}})
	return &iamv1.TokenResponse{
		AccessToken:  is.access,
		TokenType:    "Bearer",
		ExpiresIn:    is.claims.ExpiresAt - is.claims.IssuedAt,
		RefreshToken: is.refresh,
		Project:      is.claims.Project,
	}, nil
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// checkCommon validates the project and audience parameters.
func (s *Service) audience(req *iamv1.TokenRequest) ([]string, error) {
	if p := req.GetProject(); p != "" && !projectRE.MatchString(p) {
		return nil, fmt.Errorf("%w: project %q is not a valid project name", ErrInvalidRequest, p)
	}
	if len(req.GetAudience()) == 0 {
		return s.cfg.Audience, nil
	}
	if len(req.GetAudience()) > 8 {
		return nil, fmt.Errorf("%w: at most 8 audiences", ErrInvalidRequest)
	}
	for _, a := range req.GetAudience() {
		if !audienceRE.MatchString(a) {
			return nil, fmt.Errorf("%w: audience %q is malformed", ErrInvalidRequest, a)
		}
	}
	return req.GetAudience(), nil
}

// credentialError maps an Authenticator error: bad or disabled credentials become bad,
// the lockout and unavailability keep their identity.
func credentialError(bad error, err error) error {
	switch {
	case errors.Is(err, store.ErrLocked):
		return err
	case errors.Is(err, store.ErrUnavailable):
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	case errors.Is(err, store.ErrDisabled):
		return fmt.Errorf("%w: principal is disabled", bad)
	default:
		return fmt.Errorf("%w: invalid credentials", bad)
	}
}

// scope checks that principal may scope a token to project ("" always may).
func (s *Service) scope(ctx context.Context, principal, project string) error {
	if project == "" {
		return nil
	}
	if err := s.cfg.Directory.CanScope(ctx, principal, project); err != nil {
		if errors.Is(err, store.ErrUnavailable) {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		return fmt.Errorf("%w: %s cannot scope a token to project %q (no allow binding there or globally)", ErrInvalidScope, principal, project)
	}
	return nil
}

func (s *Service) passwordGrant(ctx context.Context, req *iamv1.TokenRequest, source string) (string, *issued, error) {
	if req.GetUsername() == "" || req.GetPassword() == "" {
		return "", nil, fmt.Errorf("%w: username and password are required", ErrInvalidRequest)
	}
	aud, err := s.audience(req)
	if err != nil {
		return "", nil, err
	}
	principal, err := s.cfg.Auth.AuthenticatePassword(ctx, req.GetUsername(), req.GetPassword(), source)
	if err != nil {
		return "", nil, credentialError(ErrInvalidGrant, err)
	}
	if err := s.scope(ctx, principal, req.GetProject()); err != nil {
		return principal, nil, err
	}
	clientID := firstNonEmpty(req.GetClientId(), PasswordClientID)
	is, err := s.issue(ctx, Claims{Subject: principal, Audience: aud, ClientID: clientID, Project: req.GetProject()})
	if err != nil {
		return principal, nil, err
	}
	fam := &familyRecord{Principal: principal, Started: time.Unix(is.claims.IssuedAt, 0).UTC()}
	if is.refresh, err = s.startFamily(ctx, fam, refreshRecord{Principal: principal, Project: req.GetProject(),
		ClientID: clientID, Audience: aud}); err != nil {
		return principal, nil, err
	}
	return principal, is, nil
}

func (s *Service) clientGrant(ctx context.Context, req *iamv1.TokenRequest, source string) (string, *issued, error) {
	if req.GetClientId() == "" || req.GetClientSecret() == "" {
		return "", nil, fmt.Errorf("%w: client authentication (client_id and client_secret) is required", ErrInvalidClient)
	}
	aud, err := s.audience(req)
	if err != nil {
		return "", nil, err
	}
	principal, err := s.cfg.Auth.AuthenticateClient(ctx, req.GetClientId(), req.GetClientSecret(), source)
	if err != nil {
		return "", nil, credentialError(ErrInvalidClient, err)
	}
	if err := s.scope(ctx, principal, req.GetProject()); err != nil {
		return principal, nil, err
	}
	is, err := s.issue(ctx, Claims{Subject: principal, Audience: aud, ClientID: req.GetClientId(), Project: req.GetProject()})
	return principal, is, err
}

// issue mints an access token for c, obeying the watermark rule: it never issues a token
// with iat < W of an applicable watermark, waiting (at most maxWatermarkWait) for the
// current second to reach W.
func (s *Service) issue(ctx context.Context, c Claims) (*issued, error) {
	iat, err := s.issueTime(ctx, c.Subject, c.Project)
	if err != nil {
		return nil, err
	}
	c.Issuer = s.cfg.Issuer
	raw, c, err := s.mint.Mint(c, iat, s.cfg.AccessTTL)
	if err != nil {
		return nil, err
	}
	return &issued{access: raw, claims: c}, nil
}

// issueTime returns the iat to use now for principal/project.
func (s *Service) issueTime(ctx context.Context, principal, project string) (time.Time, error) {
	w, err := s.Watermark(ctx, principal, project)
	if err != nil {
		return time.Time{}, err
	}
	now := s.cfg.Now()
	iat := now.Truncate(time.Second)
	if !iat.Before(w) {
		return iat, nil
	}
	wait := w.Sub(now)
	if wait > maxWatermarkWait {
		return time.Time{}, fmt.Errorf("%w: tokens for %s are revoked until %s", ErrUnavailable, principal, w.Format(time.RFC3339))
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return time.Time{}, ctx.Err()
	case <-t.C:
	}
	return w, nil
}
