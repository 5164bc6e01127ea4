// Package token issues and revokes IAM's tokens: short-lived JWT access tokens following
// the JWT access-token profile (RFC 9068, signed with the active key of package keys) and
// opaque refresh tokens stored hashed in ChainFire, rotated on every use, whose reuse
// revokes their whole family. It also writes revocations: revoked access-token ids (kept
// on a lease until the token would have expired) and watermarks.
//
// A Service is stateless apart from its configuration: every decision reads ChainFire,
// so any number of IAM replicas can serve the same clients. All methods are safe for
// concurrent use.
package token

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/pkg/chainfire"
)

// Defaults of Config.
const (
	DefaultIssuer     = "https://iam.plasmacloud.internal"
	DefaultAudience   = "plasmacloud"
	DefaultAccessTTL  = 10 * time.Minute
	DefaultRefreshTTL = 24 * time.Hour
	DefaultSkew       = 30 * time.Second
	// PasswordClientID is the client_id of password-grant tokens when none is sent.
	PasswordClientID = "iam-cli"
	// maxWatermarkWait bounds how long issuance waits for the current second to reach a
	// watermark (the rule: never issue a token with iat < W).
	maxWatermarkWait = 2 * time.Second
)

// Grant types.
const (
	GrantPassword          = "password"
	GrantClientCredentials = "client_credentials"
	GrantRefreshToken      = "refresh_token"
)

// ChainFire layout owned by this package.
const (
	PrefixRefresh    = "/iam/refresh/"
	PrefixFamilies   = "/iam/refresh-families/"
	PrefixRevoked    = "/iam/revoked/"
	PrefixWatermarks = "/iam/watermarks/"
)

// Sentinel errors; each maps to one OAuth 2.0 error code (RFC 6749 §5.2) and one
// Connect code at the API edge. Messages wrapping them say why, never echoing a secret.
var (
	// ErrInvalidRequest: a parameter is missing or malformed. invalid_request / InvalidArgument.
	ErrInvalidRequest = errors.New("token: invalid request")
	// ErrInvalidGrant: bad user credentials, or an unknown, expired, revoked or reused
	// refresh token, or a disabled principal. invalid_grant / Unauthenticated.
	ErrInvalidGrant = errors.New("token: invalid grant")
	// ErrInvalidClient: client authentication failed. invalid_client / Unauthenticated.
	ErrInvalidClient = errors.New("token: invalid client")
	// ErrUnsupportedGrant: a grant type other than the three. unsupported_grant_type / InvalidArgument.
	ErrUnsupportedGrant = errors.New("token: unsupported grant type")
	// ErrInvalidScope: the principal cannot scope a token to that project. invalid_scope / PermissionDenied.
	ErrInvalidScope = errors.New("token: invalid scope")
	// ErrInvalidToken: a token given for revocation does not verify. InvalidArgument.
	ErrInvalidToken = errors.New("token: token does not verify")
	// ErrUnavailable: storage or the signing key is unavailable now. temporarily_unavailable / Unavailable.
	ErrUnavailable = errors.New("token: temporarily unavailable")
)

// Authenticator checks credentials (IAM's login package). Errors wrap store.ErrBadCredentials,
// store.ErrDisabled, store.ErrLocked (a *store.LockedError) or store.ErrUnavailable.
type Authenticator interface {
	// AuthenticatePassword returns the principal ("user:<name>") of valid credentials.
	AuthenticatePassword(ctx context.Context, username, password, source string) (string, error)
	// AuthenticateClient returns the principal ("serviceaccount:<name>") of a valid client.
	AuthenticateClient(ctx context.Context, clientID, secret, source string) (string, error)
}

// Directory answers questions about principals and projects (IAM's store).
type Directory interface {
	// PrincipalActive fails when the principal is disabled or gone.
	PrincipalActive(ctx context.Context, principal string) error
	// CanScope fails unless principal has an allow binding in project or a global one.
	CanScope(ctx context.Context, principal, project string) error
}

// KeySet is the signing side of package keys.
type KeySet interface {
	Active() (*keys.Signer, error)
	PublicKeys() jwk.Set
}

var _ KeySet = (*keys.Manager)(nil)

// Config configures a Service. Client, Keys, Auth and Directory are required.
type Config struct {
	Client    *chainfire.Client
	Keys      KeySet
	Auth      Authenticator
	Directory Directory
	// Issuer is the iss claim (default DefaultIssuer).
	Issuer string
	// Audience is the default aud claim (default ["plasmacloud"]).
	Audience []string
	// AccessTTL and RefreshTTL are token lifetimes (defaults 10 min, 24 h); Skew is the
	// clock skew verifiers allow (default 30 s).
	AccessTTL, RefreshTTL, Skew time.Duration
	Logger                      *slog.Logger
	Audit                       *audit.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnResult, when set, is called once per token request with its grant type and
	// outcome (nil error: issued), for metrics.
	OnResult func(grant string, err error)
}

// Service issues and revokes tokens.
type Service struct {
	cfg   Config
	log   *slog.Logger
	audit *audit.Logger
	mint  *Minter
}

// New validates cfg and returns a Service.
func New(cfg Config) (*Service, error) {
	if cfg.Client == nil || cfg.Keys == nil || cfg.Auth == nil || cfg.Directory == nil {
		return nil, errors.New("token: Client, Keys, Auth and Directory are required")
	}
	cfg.setDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.New(nil)
	}
	return &Service{cfg: cfg, log: cfg.Logger.With("component", "token"), audit: cfg.Audit,
		mint: &Minter{Keys: cfg.Keys}}, nil
}

func (c *Config) setDefaults() {
	if c.Issuer == "" {
		c.Issuer = DefaultIssuer
	}
	if len(c.Audience) == 0 {
		c.Audience = []string{DefaultAudience}
	}
	if c.AccessTTL <= 0 {
		c.AccessTTL = DefaultAccessTTL
	}
	if c.RefreshTTL <= 0 {
		c.RefreshTTL = DefaultRefreshTTL
	}
	if c.Skew <= 0 {
		c.Skew = DefaultSkew
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// MaxAccessLifetime is how long after issuance an access token can still be accepted:
// its lifetime plus the verifiers' clock skew. Retired keys and revoked ids are kept so long.
func (s *Service) MaxAccessLifetime() time.Duration { return s.cfg.AccessTTL + s.cfg.Skew }

// unavailable wraps a storage error.
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrUnavailable, what, err)
}
