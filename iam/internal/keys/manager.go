// Package keys manages IAM's token signing keys: stored in ChainFire under /iam/keys/<kid>
// with the private JWK encrypted under the operator's master key, rotated through the
// lifecycle pending → active → retired → removed, and published as JWKS.
//
// Every IAM replica runs a Manager. Lifecycle transitions are ChainFire txns guarded by the
// revision of the replica's read of the whole prefix (no key under /iam/keys/ may have
// changed since), so replicas running the same loop concurrently never fork: at every
// ChainFire revision at most one key is active, and a transition that lost a race is simply
// re-evaluated on the next tick. The in-memory view (active signer, published keys, JWKS)
// follows a ChainFire watch of the prefix.
package keys

import (
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/mvccpb"
)

// Defaults of Config.
const (
	DefaultPublishDelay     = 2 * time.Minute
	DefaultRotationInterval = 24 * time.Hour
)

// Config configures a Manager. Client, MasterKey and RetireFor are required.
type Config struct {
	Client    *chainfire.Client
	MasterKey *MasterKey
	// Algorithm of new keys: "EdDSA" (default) or "ES256". Existing keys keep theirs.
	Algorithm string
	// PublishDelay is how long a new key is published (pending) before it signs; it must
	// be at least the verifiers' JWKS refresh interval. Default 2 min.
	PublishDelay time.Duration
	// RotationInterval is the age of the active key at which a rotation starts. Default
	// 24 h; negative disables automatic rotation.
	RotationInterval time.Duration
	// RetireFor is how long a retired key stays published: the longest access-token
	// lifetime plus the clock skew verifiers allow.
	RetireFor time.Duration
	// CheckInterval is the period of the lifecycle loop (default PublishDelay/4, between
	// 100 ms and 10 s).
	CheckInterval time.Duration
	Logger        *slog.Logger
	Audit         *audit.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// OnRotate, when set, is called after every lifecycle transition this replica made
	// ("create", "activate", "remove"), for metrics.
	OnRotate func(transition string)
}

// Manager is one replica's view and driver of the signing keys. Its methods are safe for
// concurrent use. Start loads the keys and starts the goroutines (owned by Start's ctx)
// that follow ChainFire and drive the lifecycle.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu      sync.RWMutex
	rev     int64
	keys    map[string]*stored // published keys by kid
	active  *Signer
	actErr  error              // why there is no active signer
	signers map[string]*Signer // decrypted, by kid (active and pending keys)
	jwks    []byte             // cached JWKS JSON
	pubSet  jwk.Set
	changed chan struct{} // closed and replaced on every view change
}

// New validates cfg and returns a Manager that is not started.
func New(cfg Config) (*Manager, error) {
	if cfg.Client == nil || cfg.MasterKey == nil {
		return nil, fmt.Errorf("keys: Client and MasterKey are required")
	}
	if cfg.Algorithm == "" {
		cfg.Algorithm = AlgEdDSA
	}
	if err := ValidAlgorithm(cfg.Algorithm); err != nil {
		return nil, err
	}
	if cfg.PublishDelay <= 0 {
		cfg.PublishDelay = DefaultPublishDelay
	}
	if cfg.RotationInterval == 0 {
		cfg.RotationInterval = DefaultRotationInterval
	}
	if cfg.RetireFor <= 0 {
		return nil, fmt.Errorf("keys: RetireFor (longest access-token lifetime + skew) is required")
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = min(max(cfg.PublishDelay/4, 100*time.Millisecond), 10*time.Second)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.New(nil)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m := &Manager{cfg: cfg, log: cfg.Logger.With("component", "keys"), keys: map[string]*stored{},
		signers: map[string]*Signer{}, changed: make(chan struct{}), actErr: ErrNoActiveKey}
	m.rebuildLocked()
	return m, nil
}

// Start makes sure a key is active (on a fresh ChainFire it creates one and activates it
// at once: nobody can hold older tokens), loads the view, and starts following ChainFire
// and driving the lifecycle until ctx ends. It fails when the active key cannot be
// decrypted with the master key (ErrMasterKey) or ChainFire cannot be reached before ctx
// ends.
func (m *Manager) Start(ctx context.Context) error {
	if err := m.Reconcile(ctx); err != nil {
		return err
	}
	rev, err := m.load(ctx)
	if err != nil {
		return err
	}
	m.mu.RLock()
	actErr := m.actErr
	m.mu.RUnlock()
	if actErr != nil {
		return actErr
	}
	go m.follow(ctx, rev)
	go m.loop(ctx)
	return nil
}

// Active returns the key to sign with now, or ErrNoActiveKey / ErrMasterKey.
func (m *Manager) Active() (*Signer, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.active == nil {
		return nil, m.actErr
	}
	return m.active, nil
}

// Keys returns the published keys (pending, active, retired), oldest first.
func (m *Manager) Keys() []*iamv1.SigningKey {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]*iamv1.SigningKey, 0, len(m.keys))
	for _, s := range m.keys {
		out = append(out, publicOnly(s.key))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kid < out[j].Kid })
	return out
}

// JWKS returns the JSON Web Key Set of the published public keys.
func (m *Manager) JWKS() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.jwks
}

// PublicKeys returns the published public keys as a jwk.Set (shared: do not modify).
func (m *Manager) PublicKeys() jwk.Set {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.pubSet
}

// PublicKey returns the published public key kid as a jwk.Key, or ErrUnknownKey.
func (m *Manager) PublicKey(_ context.Context, kid string) (jwk.Key, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if k, ok := m.pubSet.LookupKeyID(kid); ok {
		return k, nil
	}
	return nil, fmt.Errorf("%w %q", ErrUnknownKey, kid)
}

// RawPublicKey returns the published public key kid as a crypto.PublicKey with its
// algorithm, or ErrUnknownKey.
func (m *Manager) RawPublicKey(ctx context.Context, kid string) (crypto.PublicKey, string, error) {
	k, err := m.PublicKey(ctx, kid)
	if err != nil {
		return nil, "", err
	}
	var raw any
	if err := jwk.Export(k, &raw); err != nil {
		return nil, "", err
	}
	alg, _ := k.Algorithm()
	return raw, alg.String(), nil
}

// Revision returns the ChainFire revision the view reflects.
func (m *Manager) Revision() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.rev
}

// Changed returns a channel closed at the next change of the view.
func (m *Manager) Changed() <-chan struct{} {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.changed
}

// load reads every key and replaces the view; it returns the read's revision.
func (m *Manager) load(ctx context.Context) (int64, error) {
	resp, err := m.cfg.Client.Get(ctx, Prefix, chainfire.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("keys: read %s: %w", Prefix, err)
	}
	keys := map[string]*stored{}
	for _, kv := range resp.Kvs {
		s, err := decode(string(kv.Key), kv.Value, kv.ModRevision)
		if err != nil {
			m.log.Error("ignoring malformed signing key", "key", string(kv.Key), "err", err)
			continue
		}
		keys[s.key.Kid] = s
	}
	m.mu.Lock()
	m.keys = keys
	m.rev = resp.Header.GetRevision()
	m.rebuildLocked()
	m.mu.Unlock()
	return resp.Header.GetRevision(), nil
}

// follow applies the watch of Prefix to the view until ctx ends, relisting after a
// compaction.
func (m *Manager) follow(ctx context.Context, rev int64) {
	for ctx.Err() == nil {
		wch := m.cfg.Client.Watch(ctx, Prefix, chainfire.WithPrefix(), chainfire.WithRev(rev+1))
		for wr := range wch {
			if wr.Relist || wr.Err != nil {
				if wr.Err != nil && !wr.Relist {
					m.log.Warn("key watch ended; relisting", "err", wr.Err)
				}
				break
			}
			if len(wr.Events) == 0 {
				continue
			}
			m.mu.Lock()
			for _, ev := range wr.Events {
				kid := string(ev.Kv.Key)[len(Prefix):]
				if ev.Type == mvccpb.Event_DELETE {
					delete(m.keys, kid)
					continue
				}
				s, err := decode(string(ev.Kv.Key), ev.Kv.Value, ev.Kv.ModRevision)
				if err != nil {
					m.log.Error("ignoring malformed signing key", "key", string(ev.Kv.Key), "err", err)
					continue
				}
				m.keys[kid] = s
			}
			m.rev = wr.Events[len(wr.Events)-1].Kv.ModRevision
			m.rebuildLocked()
			m.mu.Unlock()
		}
		if ctx.Err() != nil {
			return
		}
		for ctx.Err() == nil {
			r, err := m.load(ctx)
			if err == nil {
				rev = r
				break
			}
			m.log.Warn("relisting signing keys", "err", err)
			sleep(ctx, time.Second)
		}
	}
}

// rebuildLocked recomputes the active signer, the JWKS and the public set from m.keys.
func (m *Manager) rebuildLocked() {
	set := jwk.NewSet()
	var active *stored
	for _, s := range m.keys {
		switch s.key.State {
		case iamv1.KeyState_KEY_STATE_PENDING, iamv1.KeyState_KEY_STATE_ACTIVE, iamv1.KeyState_KEY_STATE_RETIRED:
		default:
			continue
		}
		if k, err := jwk.ParseKey([]byte(s.key.PublicJwk)); err == nil {
			_ = set.AddKey(k)
		} else {
			m.log.Error("signing key has a malformed public JWK", "kid", s.key.Kid, "err", err)
		}
		if s.key.State == iamv1.KeyState_KEY_STATE_ACTIVE &&
			(active == nil || s.key.GetActivateTime().AsTime().After(active.key.GetActivateTime().AsTime())) {
			active = s
		}
	}
	// Decrypt active and pending keys once; drop signers of keys no longer usable.
	signers := map[string]*Signer{}
	var activeErr error = ErrNoActiveKey
	var activeSigner *Signer
	for kid, s := range m.keys {
		if s.key.State != iamv1.KeyState_KEY_STATE_ACTIVE && s.key.State != iamv1.KeyState_KEY_STATE_PENDING {
			continue
		}
		sg, ok := m.signers[kid]
		var err error
		if !ok {
			sg, err = s.signer(m.cfg.MasterKey)
		}
		if err != nil {
			if s == active {
				activeErr = err
			}
			m.log.Error("cannot decrypt signing key", "kid", kid, "err", err)
			continue
		}
		signers[kid] = sg
		if s == active {
			activeSigner = sg
		}
	}
	m.signers = signers
	m.active = activeSigner
	if activeSigner != nil {
		m.actErr = nil
	} else {
		m.actErr = activeErr
	}
	m.pubSet = set
	if b, err := json.Marshal(set); err == nil {
		m.jwks = b
	}
	close(m.changed)
	m.changed = make(chan struct{})
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
