package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// DefaultStaleness is how long the policy copy may go without hearing from
// IAM before authorization fails closed.
const DefaultStaleness = 15 * time.Minute

// revokedRetention is how long a revoked jti is kept after its token's
// expiry (which already rejects the token, give or take the clock skew).
const revokedRetention = 5 * time.Minute

// PolicyConfig configures a [Policy].
type PolicyConfig struct {
	// Staleness is the window after the last message (snapshot, change or
	// heartbeat) within which the copy counts as current (default 15 min).
	// Past it, Authorize and CheckRevoked fail with [ErrPolicyStale]. A
	// negative value disables the check (for an in-process copy whose feed
	// cannot lag).
	Staleness time.Duration
	// OnSigningKey, when set, is called after each applied signing-key
	// change (deleted: an OP_DELETE), outside the lock, on the goroutine
	// calling Apply. [JWKS.KeyChanged] fits.
	OnSigningKey func(key *iamv1.SigningKey, deleted bool)
	// Logger (default: discard).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Policy is the local copy of what IAM's policy stream carries: roles,
// bindings, watermarks and revoked jtis (signing keys only pass through to
// OnSigningKey). It answers [Policy.Authorize] and [Policy.CheckRevoked] per
// request, offline.
//
// Concurrency: one writer ([Policy.Apply], normally the [Follower]'s
// goroutine) and any number of readers. Reads take a read lock and touch only
// the requesting principal's bindings (indexed by principal) and the roles
// they name, whose patterns are compiled when applied; they allocate only
// for the permission's segments and for errors.
//
// Freshness: every message counts, heartbeats included. Before the first
// snapshot and once the last message is older than the staleness window,
// reads fail with [ErrPolicyStale] (Unavailable): a short IAM outage is
// invisible, a long one fails closed.
type Policy struct {
	cfg PolicyConfig
	log *slog.Logger

	fresh atomic.Int64 // UnixNano of the last message; 0 before the first snapshot

	mu          sync.RWMutex
	loaded      bool
	revision    int64
	roles       map[string][]pattern
	bindings    map[string]map[bindingKey]iamv1.Effect // by principal
	byPrincipal map[string][]grant
	watermarks  map[watermarkKey]int64 // W, Unix seconds (not_before rounded up)
	revoked     map[string]time.Time   // jti → expire time
	lastPrune   time.Time
}

// bindingKey identifies a binding.
type bindingKey struct{ principal, role, project string }

// grant is a binding as indexed under its principal.
type grant struct {
	role, project string
	deny          bool
}

type watermarkKey struct {
	scope iamv1.WatermarkScope
	name  string
}

// NewPolicy returns an empty (not yet loaded, hence stale) policy copy.
func NewPolicy(cfg PolicyConfig) *Policy {
	if cfg.Staleness == 0 {
		cfg.Staleness = DefaultStaleness
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Policy{cfg: cfg, log: cfg.Logger}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.reset()
	return p
}

func (p *Policy) reset() {
	p.roles = make(map[string][]pattern)
	p.bindings = make(map[string]map[bindingKey]iamv1.Effect)
	p.byPrincipal = make(map[string][]grant)
	p.watermarks = make(map[watermarkKey]int64)
	p.revoked = make(map[string]time.Time)
}

// errNotLoaded: a change arrived before any snapshot.
var errNotLoaded = errors.New("auth: policy change before the first snapshot")

// Apply applies one message of the policy stream:
//   - a snapshot (snapshot: true) replaces the whole copy;
//   - a batch of changes applies its PUTs and DELETEs in order; a batch at
//     or below the current revision is a replay and is skipped, and a batch
//     before the first snapshot is refused;
//   - a heartbeat (no changes) advances the revision.
//
// Every accepted message refreshes the freshness time. Malformed changes are
// skipped and reported in the returned error (joined); the rest of the
// message still applies. Apply must not be called concurrently with itself.
func (p *Policy) Apply(msg *iamv1.WatchPolicyResponse) error {
	now := p.cfg.Now()
	var keys []keyEvent
	var errs []error
	p.mu.Lock()
	switch {
	case msg.GetSnapshot():
		p.reset()
		p.loaded = true
		p.revision = msg.GetRevision()
		keys, errs = p.applyChanges(msg.GetChanges())
	case !p.loaded:
		p.mu.Unlock()
		if len(msg.GetChanges()) == 0 {
			return nil // heartbeat before the snapshot: not fresh yet
		}
		return errNotLoaded
	case len(msg.GetChanges()) > 0 && msg.GetRevision() <= p.revision:
		// Replay of changes already applied.
	default:
		keys, errs = p.applyChanges(msg.GetChanges())
		p.revision = max(p.revision, msg.GetRevision())
	}
	if now.Sub(p.lastPrune) > time.Minute {
		p.lastPrune = now
		for jti, exp := range p.revoked {
			if now.Sub(exp) > revokedRetention {
				delete(p.revoked, jti)
			}
		}
	}
	p.mu.Unlock()
	p.fresh.Store(now.UnixNano())
	if p.cfg.OnSigningKey != nil {
		for _, k := range keys {
			p.cfg.OnSigningKey(k.key, k.deleted)
		}
	}
	return errors.Join(errs...)
}

type keyEvent struct {
	key     *iamv1.SigningKey
	deleted bool
}

// applyChanges applies changes in order; p.mu is held.
func (p *Policy) applyChanges(changes []*iamv1.PolicyChange) (keys []keyEvent, errs []error) {
	for _, c := range changes {
		del := c.GetOp() == iamv1.PolicyChange_OP_DELETE
		if !del && c.GetOp() != iamv1.PolicyChange_OP_PUT {
			errs = append(errs, fmt.Errorf("auth: policy change with op %v", c.GetOp()))
			continue
		}
		switch o := c.GetObject().(type) {
		case *iamv1.PolicyChange_Role:
			if del {
				delete(p.roles, o.Role.GetName())
				continue
			}
			pats := make([]pattern, 0, len(o.Role.GetPermissions()))
			for _, s := range o.Role.GetPermissions() {
				pats = append(pats, compilePattern(s))
			}
			p.roles[o.Role.GetName()] = pats
		case *iamv1.PolicyChange_Binding:
			b := o.Binding
			k := bindingKey{b.GetPrincipal(), b.GetRole(), b.GetProject()}
			bs := p.bindings[k.principal]
			if del {
				delete(bs, k)
			} else {
				if bs == nil {
					bs = make(map[bindingKey]iamv1.Effect)
					p.bindings[k.principal] = bs
				}
				bs[k] = b.GetEffect()
			}
			p.reindex(k.principal)
		case *iamv1.PolicyChange_Watermark:
			w := o.Watermark
			k := watermarkKey{w.GetScope(), w.GetName()}
			if k.scope == iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL {
				k.name = ""
			}
			if del {
				delete(p.watermarks, k)
				continue
			}
			if k.scope == iamv1.WatermarkScope_WATERMARK_SCOPE_UNSPECIFIED || w.GetNotBefore() == nil {
				errs = append(errs, fmt.Errorf("auth: malformed watermark %v/%q", k.scope, k.name))
				continue
			}
			nb := w.GetNotBefore().AsTime()
			sec := nb.Unix()
			if nb.Nanosecond() > 0 {
				sec++ // round up to a whole second, as iat is whole seconds
			}
			p.watermarks[k] = sec
		case *iamv1.PolicyChange_RevokedToken:
			if del {
				delete(p.revoked, o.RevokedToken.GetJti())
				continue
			}
			p.revoked[o.RevokedToken.GetJti()] = o.RevokedToken.GetExpireTime().AsTime()
		case *iamv1.PolicyChange_SigningKey:
			keys = append(keys, keyEvent{o.SigningKey, del})
		default:
			errs = append(errs, errors.New("auth: policy change without object"))
		}
	}
	return keys, errs
}

// reindex rebuilds principal's grant list; the old slice is replaced, not
// modified.
func (p *Policy) reindex(principal string) {
	bs := p.bindings[principal]
	if len(bs) == 0 {
		delete(p.bindings, principal)
		delete(p.byPrincipal, principal)
		return
	}
	gs := make([]grant, 0, len(bs))
	for k, eff := range bs {
		gs = append(gs, grant{role: k.role, project: k.project, deny: eff == iamv1.Effect_EFFECT_DENY})
	}
	p.byPrincipal[principal] = gs
}

// Revision returns the revision of the last applied message, 0 before the
// first snapshot. The follower resumes after it.
func (p *Policy) Revision() int64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.revision
}

// LastUpdate returns when the last message was applied (zero before the
// first snapshot).
func (p *Policy) LastUpdate() time.Time {
	n := p.fresh.Load()
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Fresh returns nil when the copy is loaded and within the staleness
// window, and an error wrapping [ErrPolicyStale] otherwise. Fit for /readyz.
func (p *Policy) Fresh() error {
	n := p.fresh.Load()
	if n == 0 {
		return fmt.Errorf("%w: no snapshot received from IAM yet", ErrPolicyStale)
	}
	if p.cfg.Staleness < 0 {
		return nil
	}
	if age := p.cfg.Now().Sub(time.Unix(0, n)); age > p.cfg.Staleness {
		return fmt.Errorf("%w: last heard from IAM %s ago (window %s)", ErrPolicyStale, age.Round(time.Second), p.cfg.Staleness)
	}
	return nil
}

// Authorize decides whether id holds permission: it does when an allow
// binding of id.Subject grants a role with a matching pattern and no deny
// binding's role matches it (deny always wins). A project-scoped identity
// gets its project's bindings and the global ones; an unscoped identity only
// the global ones. It returns nil, a [*DeniedError] (wrapping
// [ErrPermissionDenied]) or an error wrapping [ErrPolicyStale].
func (p *Policy) Authorize(id Identity, permission string) error {
	if err := p.Fresh(); err != nil {
		return err
	}
	segs := strings.Split(permission, ".")
	allowed := false
	p.mu.RLock()
	for _, g := range p.byPrincipal[id.Subject] {
		if g.project != "" && g.project != id.Project {
			continue
		}
		if !g.deny && allowed {
			continue // already allowed; only a deny can change the answer
		}
		for _, pat := range p.roles[g.role] {
			if pat.match(segs) {
				if g.deny {
					p.mu.RUnlock()
					return &DeniedError{Permission: permission, Principal: id.Subject, Project: id.Project}
				}
				allowed = true
				break
			}
		}
	}
	p.mu.RUnlock()
	if !allowed {
		return &DeniedError{Permission: permission, Principal: id.Subject, Project: id.Project}
	}
	return nil
}

// AuthorizeContext is Authorize for the identity the interceptor put in ctx;
// without one it fails with [ErrTokenMissing]. Handlers of public procedures
// that authorize conditionally use it.
func (p *Policy) AuthorizeContext(ctx context.Context, permission string) error {
	id, ok := IdentityFromContext(ctx)
	if !ok {
		return ErrTokenMissing
	}
	return p.Authorize(id, permission)
}

// CheckRevoked returns an error wrapping [ErrTokenRevoked] when id's jti is
// revoked or id was issued (iat, whole seconds) before the newest applicable
// watermark (principal = Subject, project = Project, global), an error
// wrapping [ErrPolicyStale] when the copy is stale, and nil otherwise.
func (p *Policy) CheckRevoked(id Identity) error {
	if err := p.Fresh(); err != nil {
		return err
	}
	iat := id.IssuedAt.Unix()
	p.mu.RLock()
	defer p.mu.RUnlock()
	if _, ok := p.revoked[id.JTI]; ok {
		return fmt.Errorf("%w: token id revoked", ErrTokenRevoked)
	}
	w := p.watermarks[watermarkKey{iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, ""}]
	w = max(w, p.watermarks[watermarkKey{iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, id.Subject}])
	if id.Project != "" {
		w = max(w, p.watermarks[watermarkKey{iamv1.WatermarkScope_WATERMARK_SCOPE_PROJECT, id.Project}])
	}
	if iat < w {
		return fmt.Errorf("%w: issued before a revocation watermark", ErrTokenRevoked)
	}
	return nil
}
