package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/resilience"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// JWKSPath is where IAM publishes its public signing keys.
const JWKSPath = "/.well-known/jwks.json"

// Defaults of [JWKSConfig] fields left at zero.
const (
	DefaultJWKSRefreshInterval    = time.Minute
	DefaultJWKSMinRefreshInterval = 5 * time.Second
	DefaultJWKSFetchTimeout       = 5 * time.Second
	// maxJWKSSize bounds a JWKS response body.
	maxJWKSSize = 1 << 20
)

// JWKSConfig configures a [JWKS] cache.
type JWKSConfig struct {
	// Endpoints are IAM base URLs ("http://iam-1:8443"); the cache fetches
	// <endpoint>/.well-known/jwks.json from the current one and rotates to
	// the next on failure. Required.
	Endpoints []string
	// HTTPClient fetches the key set; nil builds one with
	// resilience.NewHTTPClient (HTTP/2, h2c for http:// URLs, pooled,
	// keepalive pings). Share one client with the policy follower.
	HTTPClient *http.Client
	// RefreshInterval is the period of background refreshes by Run
	// (default 1 min).
	RefreshInterval time.Duration
	// MinRefreshInterval rate-limits refreshes caused by an unknown kid or a
	// key-change notice: at most one fetch starts per interval (default 5 s).
	MinRefreshInterval time.Duration
	// FetchTimeout bounds one HTTP attempt (default 5 s).
	FetchTimeout time.Duration
	// Backoff is the retry policy of a fetch (its MaxAttempts defaults to
	// twice the number of endpoints; Retryable is ignored: every failure
	// but the caller's context ending is retried on the next endpoint).
	Backoff resilience.Policy
	// Logger receives refresh failures and key-set changes (default: discard).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// JWKS is a [KeySource] that caches IAM's published key set. Lookups are a
// lock-free map read. The set is replaced, never merged, by each successful
// fetch: a key IAM stops publishing stops verifying after the next refresh.
// A failed fetch keeps the old set, so tokens keep verifying through an IAM
// outage for as long as the set holds their keys.
//
// Fetches happen (1) in [JWKS.Run], at start and every RefreshInterval, (2)
// when Key meets an unknown kid, at most once per MinRefreshInterval, the
// concurrent callers sharing one fetch, and (3) after [JWKS.KeyChanged] (the
// policy stream announcing a key), through Run. Keys are never fetched from
// anywhere a token names (jku, x5u, jwk headers are refused by the
// [Verifier]), only from the configured endpoints.
//
// JWKS is safe for concurrent use.
type JWKS struct {
	cfg    JWKSConfig
	eps    *resilience.Endpoints
	client *http.Client
	log    *slog.Logger

	keys   atomic.Pointer[map[string]PublicKey] // nil until the first successful fetch
	kick   chan struct{}                        // wakes Run for a refresh (KeyChanged)
	loaded chan struct{}                        // closed at the first successful fetch
	once   sync.Once

	mu        sync.Mutex
	lastStart time.Time     // start of the last fetch of any kind
	inflight  chan struct{} // closed when the running fetch ends; nil when none
	lastErr   error
}

var _ KeySource = (*JWKS)(nil)

// NewJWKS returns an empty cache; call Run to load and refresh it (Key also
// loads it on demand). It fails on an empty or malformed endpoint list.
func NewJWKS(cfg JWKSConfig) (*JWKS, error) {
	eps, err := resilience.NewEndpoints(cfg.Endpoints)
	if err != nil {
		return nil, fmt.Errorf("auth: jwks: %w", err)
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = DefaultJWKSRefreshInterval
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = DefaultJWKSMinRefreshInterval
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = DefaultJWKSFetchTimeout
	}
	if cfg.Backoff.MaxAttempts <= 0 {
		cfg.Backoff.MaxAttempts = 2 * eps.Len()
	}
	cfg.Backoff.AttemptTimeout = cfg.FetchTimeout
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	j := &JWKS{
		cfg:    cfg,
		eps:    eps,
		client: cfg.HTTPClient,
		log:    cfg.Logger,
		kick:   make(chan struct{}, 1),
		loaded: make(chan struct{}),
	}
	if j.client == nil {
		j.client = resilience.NewHTTPClient(resilience.TransportOptions{})
	}
	if j.log == nil {
		j.log = slog.New(slog.DiscardHandler)
	}
	return j, nil
}

// Key implements [KeySource]. A known kid is answered from the cache. For an
// unknown kid, Key refreshes the set (unless a fetch started less than
// MinRefreshInterval ago; a fetch already running is joined), waiting for
// it at most FetchTimeout, and looks again. It returns [ErrUnknownKey] if the kid is still unknown, or
// [ErrKeysUnavailable] if no set was ever loaded.
func (j *JWKS) Key(ctx context.Context, kid string) (PublicKey, error) {
	if k, ok := j.lookup(kid); ok {
		return k, nil
	}
	// A request waits for the refresh at most FetchTimeout; the fetch itself
	// goes on for the callers after it.
	wctx, cancel := context.WithTimeout(ctx, j.cfg.FetchTimeout)
	err := j.refreshLimited(wctx)
	cancel()
	if err != nil && ctx.Err() != nil {
		return PublicKey{}, fmt.Errorf("%w: kid %q: %w", ErrUnknownKey, kid, ctx.Err())
	}
	if k, ok := j.lookup(kid); ok {
		return k, nil
	}
	if j.keys.Load() == nil {
		j.mu.Lock()
		last := j.lastErr
		j.mu.Unlock()
		return PublicKey{}, fmt.Errorf("%w: %v", ErrKeysUnavailable, last)
	}
	return PublicKey{}, fmt.Errorf("%w: kid %q", ErrUnknownKey, kid)
}

func (j *JWKS) lookup(kid string) (PublicKey, bool) {
	m := j.keys.Load()
	if m == nil {
		return PublicKey{}, false
	}
	k, ok := (*m)[kid]
	return k, ok
}

// Known reports whether kid is in the cached set (no fetch).
func (j *JWKS) Known(kid string) bool {
	_, ok := j.lookup(kid)
	return ok
}

// Ready returns nil once a key set has been loaded, and an error wrapping
// [ErrKeysUnavailable] before. Fit for /readyz.
func (j *JWKS) Ready() error {
	if j.keys.Load() != nil {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.lastErr != nil {
		return fmt.Errorf("%w: %w", ErrKeysUnavailable, j.lastErr)
	}
	return ErrKeysUnavailable
}

// Loaded returns a channel closed once the first key set is loaded.
func (j *JWKS) Loaded() <-chan struct{} { return j.loaded }

// KeyChanged tells the cache that IAM announced a change of the signing key
// kid (the policy stream does): if the key is not cached (new) or is
// leaving (removed), Run refreshes the set as soon as the rate limit allows.
// It never blocks.
func (j *JWKS) KeyChanged(k *iamv1.SigningKey, deleted bool) {
	removed := deleted || k.GetState() == iamv1.KeyState_KEY_STATE_REMOVED
	if j.Known(k.GetKid()) == !removed {
		return
	}
	select {
	case j.kick <- struct{}{}:
	default:
	}
}

// Refresh fetches the key set now, or joins a fetch already running, and
// returns its error. It ignores the rate limit.
func (j *JWKS) Refresh(ctx context.Context) error {
	return j.refresh(ctx, false)
}

// refreshLimited is Refresh under the MinRefreshInterval rate limit: when a
// fetch started too recently and none is running, it returns nil at once.
func (j *JWKS) refreshLimited(ctx context.Context) error {
	return j.refresh(ctx, true)
}

func (j *JWKS) refresh(ctx context.Context, limited bool) error {
	j.mu.Lock()
	done := j.inflight
	if done == nil {
		if limited && !j.lastStart.IsZero() && j.cfg.Now().Sub(j.lastStart) < j.cfg.MinRefreshInterval {
			j.mu.Unlock()
			return nil
		}
		done = make(chan struct{})
		j.inflight = done
		j.lastStart = j.cfg.Now()
		// The fetch is not bound to this caller's ctx: others may join it.
		go j.runFetch(done)
	}
	j.mu.Unlock()
	select {
	case <-done:
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.lastErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runFetch performs one fetch (with retries across endpoints) and publishes
// its result.
func (j *JWKS) runFetch(done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(),
		time.Duration(j.cfg.Backoff.MaxAttempts)*(j.cfg.FetchTimeout+time.Second))
	defer cancel()
	keys, err := j.fetch(ctx)
	if err == nil {
		j.install(keys)
	} else {
		j.log.Warn("auth: jwks refresh failed, serving cached keys", "error", err, "cached", j.count())
	}
	j.mu.Lock()
	j.lastErr = err
	j.inflight = nil
	j.mu.Unlock()
	close(done)
}

func (j *JWKS) count() int {
	if m := j.keys.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// install replaces the cached set.
func (j *JWKS) install(keys []PublicKey) {
	m := make(map[string]PublicKey, len(keys))
	for _, k := range keys {
		m[k.KID] = k
	}
	if old := j.keys.Load(); old != nil {
		for kid := range *old {
			if _, ok := m[kid]; !ok {
				j.log.Info("auth: signing key no longer published", "kid", kid)
			}
		}
		for kid := range m {
			if _, ok := (*old)[kid]; !ok {
				j.log.Info("auth: new signing key published", "kid", kid)
			}
		}
	}
	j.keys.Store(&m)
	j.once.Do(func() { close(j.loaded) })
}

// errJWKS marks a failed JWKS attempt as retryable on another endpoint.
func errJWKS(ep string, err error) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("jwks from %s: %w", ep, err))
}

// fetch reads the key set from the current endpoint, rotating and retrying
// under the backoff policy.
func (j *JWKS) fetch(ctx context.Context) ([]PublicKey, error) {
	var keys []PublicKey
	policy := j.cfg.Backoff
	policy.Retryable = func(err error) bool { return connect.CodeOf(err) == connect.CodeUnavailable }
	err := resilience.Retry(ctx, policy, func(ctx context.Context) error {
		ep := j.eps.Pick()
		ks, err := j.fetchOnce(ctx, ep)
		if err != nil {
			j.eps.Failed(ep)
			return errJWKS(ep, err)
		}
		keys = ks
		return nil
	})
	return keys, err
}

func (j *JWKS) fetchOnce(ctx context.Context, ep string) ([]PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep+JWKSPath, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSSize+1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("status %s: %s", resp.Status, strings.TrimSpace(string(body[:min(len(body), 200)])))
	}
	if len(body) > maxJWKSSize {
		return nil, fmt.Errorf("key set larger than %d bytes", maxJWKSSize)
	}
	keys, skipped := ParseJWKS(body)
	if len(keys) == 0 {
		if skipped == nil {
			skipped = errors.New("no keys")
		}
		return nil, fmt.Errorf("no usable key in set: %w", skipped)
	}
	if skipped != nil {
		j.log.Warn("auth: jwks keys skipped", "endpoint", ep, "error", skipped)
	}
	return keys, nil
}

// Run loads the key set and keeps it fresh until ctx ends: it fetches at
// start (retrying with backoff until it succeeds), then every
// RefreshInterval, and soon after a [JWKS.KeyChanged] notice (rate-limited
// by MinRefreshInterval). A failed periodic refresh is retried with backoff
// while the old set keeps serving. Run returns nil when ctx ends; it owns no
// other goroutine beyond the fetch it may leave running (bounded by its own
// timeout).
func (j *JWKS) Run(ctx context.Context) error {
	bo := j.cfg.Backoff.NewBackOff()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-j.kick:
			// Rate-limit notices: wait out MinRefreshInterval since the
			// last fetch start.
			j.mu.Lock()
			wait := j.cfg.MinRefreshInterval - j.cfg.Now().Sub(j.lastStart)
			j.mu.Unlock()
			if wait > 0 {
				t := time.NewTimer(wait)
				select {
				case <-ctx.Done():
					t.Stop()
					return nil
				case <-t.C:
				}
			}
		}
		next := j.cfg.RefreshInterval
		if err := j.Refresh(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			next = min(bo.NextBackOff(), j.cfg.RefreshInterval)
		} else {
			bo.Reset()
		}
		timer.Reset(next)
	}
}
