// Package server runs one IAM replica: it connects to ChainFire (retrying until it can),
// ensures the built-in roles and the first-start bootstrap, starts the signing-key manager
// and the policy view, and serves the Connect API, the OAuth 2.0 endpoints, discovery,
// health, readiness and metrics on one port, authorizing its own API with pkg/auth over
// its in-process keys and policy. A replica keeps no local state: run several over one
// ChainFire.
package server

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"time"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/iam/internal/token"
	plasmaserver "plasmacloud.dev/pkg/server"
)

// Config is everything Run needs. Start from DefaultConfig.
type Config struct {
	// Listen is host:port of the API (default ":7001").
	Listen string
	// Listener, when set, is used instead of Listen (tests).
	Listener net.Listener
	// TLS serves HTTPS when its files are set.
	TLS plasmaserver.TLSFiles
	// ChainFire holds the ChainFire client URLs and the TLS files (CAFile, and
	// CertFile + KeyFile for mutual TLS) for https:// endpoints.
	ChainFire plasmaserver.ChainFireFlags
	// DataDir is accepted for the shared command line; IAM keeps no local state.
	DataDir string
	// Issuer (iss) and Audience (default aud; IAM's own API accepts Audience[0]).
	Issuer   string
	Audience []string
	// PublicURL is the base URL clients reach IAM at, for discovery (default: from the request).
	PublicURL string
	// Token lifetimes and the verifiers' clock skew.
	AccessTokenTTL, RefreshTokenTTL, ClockSkew time.Duration
	// MasterKey encrypts signing keys (required unless DevInsecureMasterKey).
	MasterKey            *keys.MasterKey
	DevInsecureMasterKey bool
	// KeyAlgorithm of new signing keys ("EdDSA" or "ES256"), rotation and publish delay.
	KeyAlgorithm        string
	KeyRotationInterval time.Duration
	KeyPublishDelay     time.Duration
	// BootstrapAdminPassword, when set, is the first-start password of user admin;
	// otherwise one is generated and written to Stderr once, if this replica creates admin.
	BootstrapAdminPassword string
	// Logger for operations; Audit for the audit trail (nil: Logger's handler).
	Logger *slog.Logger
	Audit  *slog.Logger
	// Stderr receives the generated admin password (default: discard).
	Stderr io.Writer
	// DrainTimeout bounds the graceful shutdown (default 10 s).
	DrainTimeout time.Duration
}

// DefaultConfig returns the defaults of every field.
func DefaultConfig() Config {
	return Config{
		Listen:              ":7001",
		ChainFire:           plasmaserver.ChainFireFlags{Endpoints: []string{"http://127.0.0.1:2379"}},
		Issuer:              token.DefaultIssuer,
		Audience:            []string{token.DefaultAudience},
		AccessTokenTTL:      token.DefaultAccessTTL,
		RefreshTokenTTL:     token.DefaultRefreshTTL,
		ClockSkew:           token.DefaultSkew,
		KeyAlgorithm:        keys.AlgEdDSA,
		KeyRotationInterval: keys.DefaultRotationInterval,
		KeyPublishDelay:     keys.DefaultPublishDelay,
		DrainTimeout:        10 * time.Second,
	}
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" && c.Listener == nil {
		errs = append(errs, errors.New("--listen is required"))
	}
	if len(c.ChainFire.Endpoints) == 0 {
		errs = append(errs, errors.New("--chainfire-endpoints is required"))
	}
	if c.Issuer == "" {
		errs = append(errs, errors.New("--issuer is required"))
	}
	if len(c.Audience) == 0 {
		errs = append(errs, errors.New("--audience is required"))
	}
	if c.AccessTokenTTL < 10*time.Second || c.AccessTokenTTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("--access-token-ttl %s: want between 10s and 24h", c.AccessTokenTTL))
	}
	if c.RefreshTokenTTL < c.AccessTokenTTL {
		errs = append(errs, fmt.Errorf("--refresh-token-ttl %s is shorter than --access-token-ttl", c.RefreshTokenTTL))
	}
	if c.ClockSkew < 0 {
		errs = append(errs, errors.New("--clock-skew must not be negative"))
	}
	if err := keys.ValidAlgorithm(c.KeyAlgorithm); err != nil {
		errs = append(errs, fmt.Errorf("--key-algorithm: %w", err))
	}
	if c.KeyPublishDelay <= 0 {
		errs = append(errs, errors.New("--key-publish-delay must be positive"))
	}
	if c.KeyRotationInterval > 0 && c.KeyRotationInterval <= c.KeyPublishDelay {
		errs = append(errs, fmt.Errorf("--key-rotation-interval %s must exceed --key-publish-delay %s", c.KeyRotationInterval, c.KeyPublishDelay))
	}
	if c.MasterKey == nil && !c.DevInsecureMasterKey {
		errs = append(errs, fmt.Errorf("%w: none given: --master-key-file or IAM_MASTER_KEY (base64 of 32 bytes; or --dev-insecure-master-key for development)", keys.ErrMasterKey))
	}
	return errors.Join(errs...)
}
