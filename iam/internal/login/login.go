// Package login checks passwords and client secrets for IAM's token grants, with the
// abuse resistance of issue 4:
//
//   - a token bucket per source address (in memory, per replica), bounded in size;
//   - per principal, a failure counter shared by all replicas through ChainFire
//     (/iam/lockout/<principal>, on a lease): after Policy.Threshold consecutive
//     failures the principal is locked for Policy.BaseLockout, doubling with each
//     further failure up to Policy.MaxLockout; a success resets it. Attempts during a
//     lock are refused without checking the credentials;
//   - service accounts with rate_limit_exempt skip both (automation must not be locked
//     out; their secrets are 256-bit random, so guessing is hopeless anyway);
//   - an unknown user costs what a wrong password costs (one lockout read, one argon2id
//     verification with the same parameters, one lockout write), and unknown users are
//     locked out like real ones, so neither timing nor lockout reveals who exists;
//   - every attempt is audited (login.success, login.failure, login.locked); no
//     password, secret or hash is ever logged.
package login

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"golang.org/x/time/rate"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/store"
)

// Audit actions written by the Authenticator.
const (
	ActionSuccess = "login.success"
	ActionFailure = "login.failure"
	ActionLocked  = "login.locked"
)

// Policy tunes rate limiting and lockout. Zero fields take DefaultPolicy's values.
type Policy struct {
	// SourceRate and SourceBurst shape the token bucket of each source address.
	SourceRate  rate.Limit
	SourceBurst int
	// MaxSources bounds the sources tracked per replica (least recently seen dropped).
	MaxSources int
	// Threshold is the number of consecutive failures that locks a principal.
	Threshold int
	// BaseLockout is the first lock's length; each further failure doubles it, up to
	// MaxLockout.
	BaseLockout time.Duration
	MaxLockout  time.Duration
	// Forget is how long a failure record outlives its last failure (at least
	// 2×MaxLockout).
	Forget time.Duration
}

// DefaultPolicy: 5 attempts a second per source with bursts of 20; 5 failures lock a
// principal for 1 s, doubling to 15 min; failures forgotten after an hour of quiet.
func DefaultPolicy() Policy {
	return Policy{SourceRate: 5, SourceBurst: 20, MaxSources: 65536, Threshold: 5,
		BaseLockout: time.Second, MaxLockout: 15 * time.Minute, Forget: time.Hour}
}

func (p Policy) withDefaults() Policy {
	d := DefaultPolicy()
	if p.SourceRate <= 0 {
		p.SourceRate = d.SourceRate
	}
	if p.SourceBurst <= 0 {
		p.SourceBurst = d.SourceBurst
	}
	if p.MaxSources <= 0 {
		p.MaxSources = d.MaxSources
	}
	if p.Threshold <= 0 {
		p.Threshold = d.Threshold
	}
	if p.BaseLockout <= 0 {
		p.BaseLockout = d.BaseLockout
	}
	if p.MaxLockout <= 0 {
		p.MaxLockout = d.MaxLockout
	}
	p.MaxLockout = max(p.MaxLockout, p.BaseLockout)
	if p.Forget <= 0 {
		p.Forget = d.Forget
	}
	p.Forget = max(p.Forget, 2*p.MaxLockout)
	return p
}

// lockoutFor returns how long the failures-th consecutive failure locks for (0 below
// the threshold).
func (p Policy) lockoutFor(failures int) time.Duration {
	if failures < p.Threshold {
		return 0
	}
	d := p.BaseLockout
	for i := p.Threshold; i < failures && d < p.MaxLockout; i++ {
		d *= 2
	}
	return min(d, p.MaxLockout)
}

// Config holds an Authenticator's dependencies. Store is required.
type Config struct {
	Store  *store.Store
	Audit  *audit.Logger    // nil: not audited
	Logger *slog.Logger     // nil: discarded
	Policy Policy           // zero fields: DefaultPolicy
	Now    func() time.Time // nil: time.Now
}

// Authenticator checks login credentials. It is safe for concurrent use; its only
// state is the per-source limiter (per replica); the lockout state is in ChainFire.
type Authenticator struct {
	store  *store.Store
	audit  *audit.Logger
	log    *slog.Logger
	policy Policy
	now    func() time.Time
	source *sourceLimiter
}

// New returns an Authenticator.
func New(cfg Config) (*Authenticator, error) {
	if cfg.Store == nil {
		return nil, errors.New("login: nil store")
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.New(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := cfg.Policy.withDefaults()
	return &Authenticator{store: cfg.Store, audit: cfg.Audit, log: cfg.Logger, policy: p, now: cfg.Now,
		source: newSourceLimiter(p.SourceRate, p.SourceBurst, p.MaxSources)}, nil
}

// AuthenticatePassword checks a user's password and returns its principal
// ("user:<name>"). Errors: a *store.LockedError (errors.Is ErrLocked) when the source
// is over its rate or the user is locked out; ErrBadCredentials for an unknown user or
// a wrong password alike; ErrDisabled for a disabled user with the right password;
// ErrUnavailable when ChainFire cannot be reached. source is the caller's address
// ("10.0.0.9" or "10.0.0.9:5555"; IPv6 sources are grouped by /64).
func (a *Authenticator) AuthenticatePassword(ctx context.Context, username, password, source string) (string, error) {
	subject := store.UserPrincipal(username)
	if store.ValidateName("username", username) != nil {
		subject = "" // cannot exist: nothing to lock (the source limit still applies)
	}
	return a.authenticate(ctx, "password", subject, source, false, func(ctx context.Context) error {
		_, err := a.store.CheckPassword(ctx, username, password)
		return err
	})
}

// AuthenticateClient checks a service account's client secret and returns its
// principal ("serviceaccount:<client_id>"). Errors as AuthenticatePassword; accounts
// with rate_limit_exempt skip the source limit and the lockout.
func (a *Authenticator) AuthenticateClient(ctx context.Context, clientID, secret, source string) (string, error) {
	subject := store.ServiceAccountPrincipal(clientID)
	exempt := false
	if store.ValidateName("client_id", clientID) != nil {
		subject = ""
	} else {
		sa, err := a.store.GetServiceAccount(ctx, clientID)
		switch {
		case err == nil:
			exempt = sa.RateLimitExempt
		case !errors.Is(err, store.ErrNotFound):
			a.record(ctx, ActionFailure, subject, source, "storage unavailable", "client_credentials")
			return "", err
		}
	}
	return a.authenticate(ctx, "client_credentials", subject, source, exempt, func(ctx context.Context) error {
		_, err := a.store.CheckClientSecret(ctx, clientID, secret)
		return err
	})
}

// authenticate runs the limits around check. subject is "" when the name is invalid.
func (a *Authenticator) authenticate(ctx context.Context, grant, subject, source string, exempt bool, check func(context.Context) error) (string, error) {
	src := normalizeSource(source)
	target := subject
	if target == "" {
		target = "(invalid name)"
	}
	if !exempt {
		if ok, wait := a.source.allow(src, a.now()); !ok {
			err := &store.LockedError{Subject: "source:" + src, RetryAfter: wait}
			a.record(ctx, ActionLocked, target, source, "source over rate limit", grant)
			return "", err
		}
	}
	var prior store.Lockout
	if subject != "" && !exempt {
		l, err := a.store.GetLockout(ctx, subject)
		if err != nil {
			a.record(ctx, ActionFailure, target, source, "storage unavailable", grant)
			return "", err
		}
		prior = l
		if now := a.now(); now.Before(l.LockedUntil) {
			a.record(ctx, ActionLocked, target, source, fmt.Sprintf("locked after %d failures", l.Failures), grant)
			return "", &store.LockedError{Subject: subject, RetryAfter: l.LockedUntil.Sub(now)}
		}
	}
	err := check(ctx)
	switch {
	case errors.Is(err, store.ErrBadCredentials):
		if subject != "" && !exempt {
			a.recordFailure(ctx, subject)
		}
		a.record(ctx, ActionFailure, target, source, "invalid credentials", grant)
		return "", err
	case errors.Is(err, store.ErrDisabled):
		a.reset(ctx, subject, prior)
		a.record(ctx, ActionFailure, target, source, "disabled", grant)
		return "", err
	case err != nil:
		a.record(ctx, ActionFailure, target, source, "storage unavailable", grant)
		return "", err
	}
	a.reset(ctx, subject, prior)
	a.record(ctx, ActionSuccess, target, source, "", grant)
	return subject, nil
}

// recordFailure counts one failure of subject and locks it per the policy.
func (a *Authenticator) recordFailure(ctx context.Context, subject string) {
	_, err := a.store.UpdateLockout(ctx, subject, a.policy.Forget, func(l *store.Lockout) {
		l.Failures++
		if d := a.policy.lockoutFor(l.Failures); d > 0 {
			l.LockedUntil = a.now().Add(d)
		}
	})
	if err != nil {
		a.log.Warn("login: could not record failed attempt", "subject", subject, "error", err)
	}
}

// reset clears subject's failure record after correct credentials.
func (a *Authenticator) reset(ctx context.Context, subject string, prior store.Lockout) {
	if subject == "" || prior.Failures == 0 {
		return
	}
	if err := a.store.ClearLockout(ctx, subject); err != nil {
		a.log.Warn("login: could not reset failure count", "subject", subject, "error", err)
	}
}

func (a *Authenticator) record(ctx context.Context, action, target, source, reason, grant string) {
	outcome := audit.Failure
	if action == ActionSuccess {
		outcome = audit.Success
	}
	a.audit.Record(ctx, audit.Event{Action: action, Target: target, Outcome: outcome, Reason: reason, Source: source,
		Attrs: []slog.Attr{slog.String("grant_type", grant)}})
}

// normalizeSource strips a port and groups IPv6 addresses by /64 (one host usually
// owns a whole /64); anything unparsable is used as is.
func normalizeSource(source string) string {
	host := source
	if h, _, err := net.SplitHostPort(source); err == nil {
		host = h
	}
	addr, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	addr = addr.Unmap()
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}
