package iamclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

var (
	// ErrOutcomeUnknown is wrapped by the error of a non-idempotent call (a create, a
	// refresh_token grant, RotateKey) that may or may not have been applied: it reached a
	// replica and then failed in a way that does not say. The client never repeats such a
	// call blindly.
	ErrOutcomeUnknown = errors.New("iamclient: outcome unknown (the call may or may not have been applied)")

	// ErrClosed is returned by calls made after [Client.Close].
	ErrClosed = errors.New("iamclient: client closed")

	// ErrNoToken is wrapped by the error of a call whose [TokenSource] could not supply a
	// token.
	ErrNoToken = errors.New("iamclient: no access token")
)

// Config holds everything [New] needs. Only Endpoints is required.
type Config struct {
	// Endpoints are the IAM replicas' base URLs ("http://10.0.0.1:7001"; "host:port" means
	// http). The first is used until it fails.
	Endpoints []string
	// TLS configures https:// endpoints; nil means the system roots.
	TLS *tls.Config
	// Token supplies the bearer token of every call but the token grants; nil sends none
	// (only the token grants and public procedures work then).
	Token TokenSource
	// Policy tunes the backoff between attempts; its Retryable and AttemptTimeout fields
	// are ignored (the client decides per call what is retryable, see the package
	// documentation). Zero means resilience's defaults: 50 ms doubling to 2 s, until the
	// caller's context ends.
	Policy resilience.Policy
	// RequestTimeout, when positive, bounds each attempt; a hung replica is then left for
	// the next one after that long. The call as a whole is bounded by its context.
	RequestTimeout time.Duration
	// DialTimeout bounds establishing one connection (default 5 s).
	DialTimeout time.Duration
	// Logger receives failover events at debug level; nil discards them.
	Logger *slog.Logger
	// Pool, when set, supplies the HTTP clients so several clients share connections;
	// Close then leaves it open and TLS and DialTimeout are the pool's. nil means the
	// Client owns a pool of its own.
	Pool *resilience.Pool
}

// Client is an IAM client over one or more replicas. It is safe for concurrent use by any
// number of goroutines. Clients made with [Client.WithToken] share its connections.
type Client struct {
	*shared
	token TokenSource
}

// shared is the part of a Client its WithToken copies share: endpoints, pool,
// per-endpoint Connect clients.
type shared struct {
	cfg     Config
	log     *slog.Logger
	eps     *resilience.Endpoints
	pool    *resilience.Pool
	ownPool bool
	policy  resilience.Policy
	closed  atomic.Bool

	mu    sync.Mutex
	conns map[string]*conn // by endpoint URL
}

// conn holds the generated Connect clients of one endpoint; they share its pooled
// *http.Client.
type conn struct {
	users    iamv1connect.UserServiceClient
	sas      iamv1connect.ServiceAccountServiceClient
	projects iamv1connect.ProjectServiceClient
	roles    iamv1connect.RoleServiceClient
	bindings iamv1connect.BindingServiceClient
	tokens   iamv1connect.TokenServiceClient
	keys     iamv1connect.KeyServiceClient
}

// New validates cfg and returns a client. It does not contact IAM: an unreachable IAM
// shows up as errors of the first calls.
func New(cfg Config) (*Client, error) {
	eps, err := resilience.NewEndpoints(cfg.Endpoints)
	if err != nil {
		return nil, fmt.Errorf("iamclient: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool, ownPool := cfg.Pool, false
	if pool == nil {
		pool, ownPool = resilience.NewPool(resilience.TransportOptions{
			TLS:         cfg.TLS,
			DialTimeout: cfg.DialTimeout,
		}), true
	}
	policy := cfg.Policy
	policy.Retryable, policy.AttemptTimeout = nil, 0
	return &Client{
		shared: &shared{
			cfg:     cfg,
			log:     log,
			eps:     eps,
			pool:    pool,
			ownPool: ownPool,
			policy:  policy,
			conns:   make(map[string]*conn),
		},
		token: cfg.Token,
	}, nil
}

// WithToken returns a client that sends ts's tokens and shares c's endpoints and
// connections. Closing either closes both. It is how a [TokenSource] built on a client
// is plugged into it:
//
//	base, _ := iamclient.New(iamclient.Config{Endpoints: eps})
//	ts, _ := base.NewTokenSource(iamclient.TokenSourceConfig{ClientID: id, ClientSecret: s})
//	c := base.WithToken(ts)
func (c *Client) WithToken(ts TokenSource) *Client {
	return &Client{shared: c.shared, token: ts}
}

// Close releases the client's idle connections (unless the pool was supplied in
// Config). Calls in flight are not interrupted; calls made afterwards fail with
// [ErrClosed].
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.ownPool {
		c.pool.Close()
	}
	return nil
}

// Endpoints returns the client's endpoints, normalized, in order.
func (c *Client) Endpoints() []string { return c.eps.All() }

// HTTPClient returns the pooled HTTP client of endpoint url, for plain HTTP requests to a
// replica (/.well-known/jwks.json, /oauth2/token).
func (c *Client) HTTPClient(url string) connect.HTTPClient { return c.pool.Client(url) }

// conn returns the Connect clients of endpoint url, creating them on first use.
func (s *shared) conn(url string) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cn, ok := s.conns[url]; ok {
		return cn
	}
	hc := s.pool.Client(url)
	cn := &conn{
		users:    iamv1connect.NewUserServiceClient(hc, url),
		sas:      iamv1connect.NewServiceAccountServiceClient(hc, url),
		projects: iamv1connect.NewProjectServiceClient(hc, url),
		roles:    iamv1connect.NewRoleServiceClient(hc, url),
		bindings: iamv1connect.NewBindingServiceClient(hc, url),
		tokens:   iamv1connect.NewTokenServiceClient(hc, url),
		keys:     iamv1connect.NewKeyServiceClient(hc, url),
	}
	s.conns[url] = cn
	return cn
}

// kind says whether, and when, repeating a call is safe (see the package documentation).
type kind int

const (
	kindRead kind = iota
	kindIdempotent
	kindCreate
	kindOnce
)

// retryable is the retry predicate of calls of kind k.
func (k kind) retryable(err error) bool {
	if k == kindOnce {
		return resilience.IsNotSent(err)
	}
	return transient(err)
}

// transient reports whether err is a failure of the replica or the connection rather than
// an answer: what resilience.IsRetryable accepts, plus the shapes a dying HTTP/2 peer
// produces that it does not: a client-side Canceled whose cause is a broken connection
// (Retry consults predicates only while the caller's context is live, so a Canceled then
// is not the caller's), and a client-side Unknown or Internal (a stream reset by the
// peer, a connection closed under a response being read).
func transient(err error) bool {
	if resilience.IsRetryable(err) {
		return true
	}
	if err == nil || connect.IsWireError(err) {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeCanceled, connect.CodeUnknown, connect.CodeInternal:
		return true
	}
	return false
}

// notApplied reports whether err proves the call had no effect: it never left the client,
// or the server refused it with a code that says it changed nothing.
func notApplied(err error) bool {
	if !connect.IsWireError(err) {
		return resilience.IsNotSent(err)
	}
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodeAlreadyExists,
		connect.CodePermissionDenied, connect.CodeUnauthenticated, connect.CodeFailedPrecondition,
		connect.CodeResourceExhausted, connect.CodeUnimplemented, connect.CodeOutOfRange:
		return true
	}
	// Unavailable, Internal, Unknown, DeadlineExceeded, Aborted: IAM may have written to
	// ChainFire before failing.
	return false
}

// callOptions describe one call for run.
type callOptions struct {
	name string
	kind kind
	// noAuth: send no bearer token (the token grants).
	noAuth bool
	// resolve, when set, is consulted when an attempt fails after an earlier attempt's
	// outcome was unknown: it returns nil if err shows the earlier attempt succeeded
	// (Delete → NotFound), a replacement error, or err itself.
	resolve func(ctx context.Context, err error) error
}

// run executes fn per o's kind: on the current endpoint, rotating on failure, retrying
// within ctx. fn receives the bearer token to attach ("" for none).
func (c *Client) run(ctx context.Context, o callOptions, fn func(ctx context.Context, cn *conn, token string) error) error {
	if c.closed.Load() {
		return fmt.Errorf("iamclient: %s: %w", o.name, ErrClosed)
	}
	var (
		last      string // endpoint of the latest attempt (attempts run serially)
		uncertain bool   // an earlier attempt may have been applied
	)
	for reauth := 0; ; reauth++ {
		token, err := c.bearer(ctx, o)
		if err != nil {
			return fmt.Errorf("iamclient: %s: %w: %w", o.name, ErrNoToken, err)
		}
		p := c.policy
		p.Retryable = o.kind.retryable
		p.AttemptTimeout = c.cfg.RequestTimeout
		err = resilience.Retry(ctx, p, func(actx context.Context) error {
			ep := c.eps.Pick()
			last = ep
			callCtx, sent := resilience.TrackSend(actx)
			err := fn(callCtx, c.conn(ep), token)
			if err == nil {
				return nil
			}
			if !sent() {
				err = resilience.MarkNotSent(err)
			}
			if uncertain && o.resolve != nil {
				err = o.resolve(ctx, err)
				if err == nil {
					return nil
				}
			}
			timedOut := ctx.Err() == nil && (actx.Err() != nil || connect.CodeOf(err) == connect.CodeDeadlineExceeded)
			if transient(err) || timedOut {
				next := c.eps.Failed(ep)
				c.log.Debug("iamclient: call failed, switching endpoint",
					"call", o.name, "endpoint", ep, "next_endpoint", next, "error", err)
			}
			if !notApplied(err) {
				uncertain = true
			}
			return err
		})
		if err == nil {
			return nil
		}
		// A token the replica refused (expired, revoked, from a key it cannot see yet):
		// mint a fresh one and try once more. Unauthenticated means nothing was applied.
		if reauth == 0 && !o.noAuth && token != "" && connect.CodeOf(err) == connect.CodeUnauthenticated && connect.IsWireError(err) {
			if inv, ok := c.token.(interface{ Invalidate(string) }); ok {
				inv.Invalidate(token)
				continue
			}
		}
		if (o.kind == kindOnce || o.kind == kindCreate) && uncertain && !notApplied(err) {
			return fmt.Errorf("iamclient: %s on %s: %w: %w", o.name, last, ErrOutcomeUnknown, err)
		}
		return fmt.Errorf("iamclient: %s on %s: %w", o.name, last, err)
	}
}

// bearer returns the token to attach to a call described by o.
func (c *Client) bearer(ctx context.Context, o callOptions) (string, error) {
	if o.noAuth || c.token == nil {
		return "", nil
	}
	return c.token.Token(ctx)
}

// unary runs one unary call of the generated clients through c.run and returns its
// response message.
func unary[Req, Res any](ctx context.Context, c *Client, o callOptions, msg *Req,
	method func(cn *conn) func(context.Context, *connect.Request[Req]) (*connect.Response[Res], error),
) (*Res, error) {
	var out *Res
	err := c.run(ctx, o, func(ctx context.Context, cn *conn, token string) error {
		req := connect.NewRequest(msg)
		if token != "" {
			req.Header().Set("Authorization", "Bearer "+token)
		}
		resp, err := method(cn)(ctx, req)
		if err != nil {
			return err
		}
		out = resp.Msg
		return nil
	})
	return out, err
}

// deleted is the resolve function of deletes: NotFound after an uncertain attempt means
// that attempt deleted the object.
func deleted(_ context.Context, err error) error {
	if connect.IsWireError(err) && connect.CodeOf(err) == connect.CodeNotFound {
		return nil
	}
	return err
}

// isAlreadyExists reports whether err is the server's AlreadyExists.
func isAlreadyExists(err error) bool {
	return connect.IsWireError(err) && connect.CodeOf(err) == connect.CodeAlreadyExists
}

// isUnauthenticated reports whether err is the server's Unauthenticated.
func isUnauthenticated(err error) bool {
	return connect.IsWireError(err) && connect.CodeOf(err) == connect.CodeUnauthenticated
}
