package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/resilience"
)

// Config is what a service's main hands to [Setup]: where IAM is, what
// tokens must say, and the service's permission table.
type Config struct {
	// IAMEndpoints are IAM base URLs (JWKS and the policy stream). Required.
	IAMEndpoints []string
	// TLS for https:// endpoints (nil: system roots).
	TLS *tls.Config
	// Credentials authenticates the policy stream (WatchPolicy needs
	// iam.policy.watch): typically a pkg/iamclient client-credentials
	// source for the service's own service account. Nil sends no token.
	Credentials TokenSource
	// Issuer, Audience, Algorithms, ClockSkew, MaxTokenSize: see
	// [VerifierConfig].
	Issuer       string
	Audience     string
	Algorithms   []string
	ClockSkew    time.Duration
	MaxTokenSize int
	// Staleness: see [PolicyConfig] (default 15 min).
	Staleness time.Duration
	// JWKSRefreshInterval and JWKSMinRefreshInterval: see [JWKSConfig].
	JWKSRefreshInterval    time.Duration
	JWKSMinRefreshInterval time.Duration
	// Permissions and Public: see [InterceptorConfig].
	Permissions map[string]string
	Public      []string
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// Service is the wired verifier stack of one service: a JWKS cache, a
// policy copy with its follower, the verifier and the interceptor. Build it
// with [Setup], install Interceptor on the handlers, run Run for the
// service's lifetime and report Ready on /readyz.
type Service struct {
	Keys        *JWKS
	Policy      *Policy
	Follower    *Follower
	Verifier    *Verifier
	Interceptor *Interceptor
}

// Setup wires the stack from cfg. Nothing runs until [Service.Run].
func Setup(cfg Config) (*Service, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "auth")
	hc := resilience.NewHTTPClient(resilience.TransportOptions{TLS: cfg.TLS})
	keys, err := NewJWKS(JWKSConfig{
		Endpoints:          cfg.IAMEndpoints,
		HTTPClient:         hc,
		RefreshInterval:    cfg.JWKSRefreshInterval,
		MinRefreshInterval: cfg.JWKSMinRefreshInterval,
		Logger:             log,
	})
	if err != nil {
		return nil, err
	}
	policy := NewPolicy(PolicyConfig{Staleness: cfg.Staleness, OnSigningKey: keys.KeyChanged, Logger: log})
	var opts []connect.ClientOption
	if cfg.Credentials != nil {
		opts = append(opts, connect.WithInterceptors(BearerInterceptor(cfg.Credentials)))
	}
	follower, err := NewFollower(policy, FollowerConfig{
		Endpoints:     cfg.IAMEndpoints,
		HTTPClient:    hc,
		ClientOptions: opts,
		Logger:        log,
	})
	if err != nil {
		return nil, err
	}
	verifier, err := NewVerifier(VerifierConfig{
		Keys:         keys,
		Policy:       policy,
		Issuer:       cfg.Issuer,
		Audience:     cfg.Audience,
		Algorithms:   cfg.Algorithms,
		ClockSkew:    cfg.ClockSkew,
		MaxTokenSize: cfg.MaxTokenSize,
	})
	if err != nil {
		return nil, err
	}
	ic, err := NewInterceptor(InterceptorConfig{
		Verifier:    verifier,
		Permissions: cfg.Permissions,
		Public:      cfg.Public,
		Logger:      log,
	})
	if err != nil {
		return nil, err
	}
	return &Service{Keys: keys, Policy: policy, Follower: follower, Verifier: verifier, Interceptor: ic}, nil
}

// Run runs the background loops (JWKS refresh, policy follower) until ctx
// ends, then returns nil once both have stopped.
func (s *Service) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { _ = s.Keys.Run(ctx) })
	wg.Go(func() { _ = s.Follower.Run(ctx) })
	wg.Wait()
	return nil
}

// Ready returns nil when tokens can be checked: the key set is loaded and
// the policy copy is fresh. Otherwise the errors wrap [ErrKeysUnavailable]
// and/or [ErrPolicyStale].
func (s *Service) Ready(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.Join(s.Keys.Ready(), s.Policy.Fresh())
}
