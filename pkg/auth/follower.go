package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/resilience"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// Defaults of [FollowerConfig] fields left at zero.
const (
	// DefaultIdleTimeout: IAM sends a heartbeat every 2 s; a stream silent
	// for this long is presumed stuck and reopened.
	DefaultIdleTimeout = 10 * time.Second
	// defaultFollowMaxBackoff caps the wait between reconnects.
	defaultFollowMaxBackoff = 5 * time.Second
)

// FollowerConfig configures a [Follower].
type FollowerConfig struct {
	// Endpoints are IAM base URLs; the follower streams from the current
	// one and rotates to the next after a failure. Required.
	Endpoints []string
	// HTTPClient carries the stream; nil builds one with
	// resilience.NewHTTPClient (HTTP/2, h2c for http://, keepalive pings).
	HTTPClient *http.Client
	// ClientOptions are added to the PolicyService client, e.g.
	// connect.WithInterceptors(BearerInterceptor(src)): WatchPolicy needs a
	// token with iam.policy.watch.
	ClientOptions []connect.ClientOption
	// Backoff shapes the waits between reconnects (its MaxInterval
	// defaults to 5 s); it is reset once a stream delivers a message.
	Backoff resilience.Policy
	// IdleTimeout reopens a stream that delivered nothing, not even a
	// heartbeat, for that long (default 10 s).
	IdleTimeout time.Duration
	// Logger (default: discard).
	Logger *slog.Logger
}

// Follower keeps a [Policy] in step with IAM: it runs
// PolicyService.WatchPolicy against the configured endpoints and applies
// every message. After any disconnect (stream error, IAM replica killed,
// silent stream) it reconnects with backoff to the next endpoint and
// resumes with after_revision = the last revision applied, so nothing is
// missed and nothing is applied twice; a replica that cannot replay sends a
// snapshot, which replaces the copy.
//
// A Follower has a single goroutine, the one calling Run; it is the
// Policy's only writer.
type Follower struct {
	policy *Policy
	cfg    FollowerConfig
	eps    *resilience.Endpoints
	log    *slog.Logger
	conns  map[string]iamv1connect.PolicyServiceClient

	streams atomic.Int64 // streams opened, for tests and metrics
}

// NewFollower returns a follower feeding p; it fails on a bad endpoint list.
func NewFollower(p *Policy, cfg FollowerConfig) (*Follower, error) {
	eps, err := resilience.NewEndpoints(cfg.Endpoints)
	if err != nil {
		return nil, fmt.Errorf("auth: policy follower: %w", err)
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = resilience.NewHTTPClient(resilience.TransportOptions{})
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Backoff.MaxInterval <= 0 {
		cfg.Backoff.MaxInterval = defaultFollowMaxBackoff
	}
	f := &Follower{policy: p, cfg: cfg, eps: eps, log: cfg.Logger,
		conns: make(map[string]iamv1connect.PolicyServiceClient)}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	for _, ep := range eps.All() {
		f.conns[ep] = iamv1connect.NewPolicyServiceClient(cfg.HTTPClient, ep, cfg.ClientOptions...)
	}
	return f, nil
}

// Streams returns how many WatchPolicy streams Run has opened.
func (f *Follower) Streams() int64 { return f.streams.Load() }

// Run follows the policy stream until ctx ends, then returns nil. It never
// gives up on IAM: failures (including Unauthenticated or PermissionDenied
// from a misconfigured credential) are logged and retried with backoff,
// while the Policy serves its copy until it goes stale.
func (f *Follower) Run(ctx context.Context) error {
	bo := f.cfg.Backoff.NewBackOff()
	for {
		ep := f.eps.Pick()
		err := f.stream(ctx, ep, bo.Reset)
		if ctx.Err() != nil {
			return nil
		}
		next := f.eps.Failed(ep)
		wait := bo.NextBackOff()
		level := slog.LevelWarn
		if connect.CodeOf(err) == connect.CodeUnauthenticated || connect.CodeOf(err) == connect.CodePermissionDenied {
			level = slog.LevelError
		}
		f.log.Log(ctx, level, "auth: policy stream failed, resuming",
			"endpoint", ep, "next_endpoint", next, "after_revision", f.policy.Revision(),
			"retry_in", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// errIdle ends a stream that went silent.
var errIdle = errors.New("auth: policy stream silent")

// stream runs one WatchPolicy stream until it fails or ctx ends.
func (f *Follower) stream(ctx context.Context, ep string, healthy func()) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	idle := time.AfterFunc(f.cfg.IdleTimeout, func() { cancel(errIdle) })
	defer idle.Stop()

	after := f.policy.Revision()
	f.streams.Add(1)
	st, err := f.conns[ep].WatchPolicy(ctx, connect.NewRequest(&iamv1.WatchPolicyRequest{AfterRevision: after}))
	if err != nil {
		return f.cause(ctx, err)
	}
	defer st.Close()
	f.log.Debug("auth: policy stream open", "endpoint", ep, "after_revision", after)
	for st.Receive() {
		idle.Reset(f.cfg.IdleTimeout)
		msg := st.Msg()
		if err := f.policy.Apply(msg); err != nil {
			if errors.Is(err, errNotLoaded) {
				return err // reconnect; Revision is 0, so IAM sends a snapshot
			}
			f.log.Warn("auth: policy message partly applied", "endpoint", ep, "revision", msg.GetRevision(), "error", err)
		}
		healthy()
	}
	if err := st.Err(); err != nil {
		return f.cause(ctx, err)
	}
	return f.cause(ctx, connect.NewError(connect.CodeUnavailable, io.EOF))
}

// cause prefers the idle timeout over the context-cancelled error it caused.
func (f *Follower) cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); errors.Is(c, errIdle) {
		return fmt.Errorf("%w for %s", errIdle, f.cfg.IdleTimeout)
	}
	return err
}
