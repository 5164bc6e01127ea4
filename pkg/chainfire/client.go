package chainfire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/proto/etcdserverpb/etcdserverpbconnect"
)

// Protocol selects the RPC protocol the client speaks. All three are served
// by a ChainFire server on one port; only gRPC is understood by etcd.
type Protocol int

const (
	// ProtocolGRPC is gRPC over HTTP/2, the default: it works against
	// ChainFire and against etcd.
	ProtocolGRPC Protocol = iota
	// ProtocolGRPCWeb is the gRPC-Web protocol.
	ProtocolGRPCWeb
	// ProtocolConnect is the Connect protocol.
	ProtocolConnect
)

// String returns the protocol's name as used on command lines.
func (p Protocol) String() string {
	switch p {
	case ProtocolGRPC:
		return "grpc"
	case ProtocolGRPCWeb:
		return "grpcweb"
	case ProtocolConnect:
		return "connect"
	}
	return fmt.Sprintf("Protocol(%d)", int(p))
}

// Config holds everything [New] needs. Only Endpoints is required.
type Config struct {
	// Endpoints are the members' client URLs ("http://10.0.0.1:2379";
	// "host:port" means http). The first is used until it fails.
	Endpoints []string
	// TLS configures https:// endpoints (CA, client certificate for mutual
	// TLS). nil means system roots and no client certificate.
	TLS *tls.Config
	// DialTimeout bounds establishing one connection (default 5 s). New does
	// not dial; connections are made on first use.
	DialTimeout time.Duration
	// KeepAliveTime is how long a connection may be silent before the
	// client probes it with an HTTP/2 PING; KeepAliveTimeout is how long it
	// then waits for the answer before failing the connection and every
	// stream on it (defaults 2 s and 3 s: a paused or cut-off member is
	// noticed within about 5 s). A real etcd (gRPC's server) closes
	// connections that ping more often than every 5 s while idle
	// ("too_many_pings"); use 10 s or more against etcd.
	KeepAliveTime    time.Duration
	KeepAliveTimeout time.Duration
	// RequestTimeout, when positive, bounds each attempt of a unary call;
	// the call as a whole is bounded by its context. Streams (Watch,
	// KeepAlive, Snapshot) are not subject to it.
	RequestTimeout time.Duration
	// Logger receives failover and reconnect events; nil discards them.
	Logger *slog.Logger
	// Protocol is the RPC protocol (default gRPC).
	Protocol Protocol
	// Retry tunes the backoff between attempts; its Retryable and
	// AttemptTimeout fields are ignored (the client decides what is
	// retryable per call, see the package documentation). Zero means
	// resilience's defaults: 50 ms doubling to 2 s, until ctx ends.
	Retry resilience.Policy
	// Pool, when set, supplies the HTTP clients, so several Clients can
	// share connections; Close then leaves it open, and TLS, DialTimeout
	// and the keepalive settings are the pool's. nil means the Client owns
	// a pool of its own.
	Pool *resilience.Pool
}

// Client is a ChainFire (or etcd v3) client. It is safe for concurrent use
// by any number of goroutines; create one per process and share it.
type Client struct {
	cfg       Config
	log       *slog.Logger
	eps       *resilience.Endpoints
	pool      *resilience.Pool
	ownPool   bool
	clientOpt []connect.ClientOption
	policy    resilience.Policy

	// ctx ends when the client is closed; every background goroutine
	// (watch, keepalive) stops then.
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	conns map[string]*conn // by endpoint URL

	watchMu sync.Mutex
	streams map[*watchStream]struct{} // live watch streams, for RequestProgress
}

// conn holds the generated Connect clients of one endpoint. They share the
// endpoint's pooled *http.Client.
type conn struct {
	url         string
	kv          etcdserverpbconnect.KVClient
	watch       etcdserverpbconnect.WatchClient
	lease       etcdserverpbconnect.LeaseClient
	cluster     etcdserverpbconnect.ClusterClient
	maintenance etcdserverpbconnect.MaintenanceClient
}

// New validates cfg and returns a client. It does not contact the cluster:
// an unreachable cluster shows up as errors of the first calls.
func New(cfg Config) (*Client, error) {
	eps, err := resilience.NewEndpoints(cfg.Endpoints)
	if err != nil {
		return nil, fmt.Errorf("chainfire: %w", err)
	}
	var opts []connect.ClientOption
	switch cfg.Protocol {
	case ProtocolGRPC:
		opts = append(opts, connect.WithGRPC())
	case ProtocolGRPCWeb:
		opts = append(opts, connect.WithGRPCWeb())
	case ProtocolConnect:
	default:
		return nil, fmt.Errorf("chainfire: unknown protocol %v", cfg.Protocol)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = resilience.DefaultDialTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pool, ownPool := cfg.Pool, false
	if pool == nil {
		pool, ownPool = resilience.NewPool(resilience.TransportOptions{
			TLS:          cfg.TLS,
			DialTimeout:  cfg.DialTimeout,
			PingInterval: cfg.KeepAliveTime,
			PingTimeout:  cfg.KeepAliveTimeout,
		}), true
	}
	policy := cfg.Retry
	policy.Retryable, policy.AttemptTimeout = nil, 0
	ctx, cancel := context.WithCancel(context.Background())
	return &Client{
		cfg:       cfg,
		log:       log,
		eps:       eps,
		pool:      pool,
		ownPool:   ownPool,
		clientOpt: opts,
		policy:    policy,
		ctx:       ctx,
		cancel:    cancel,
		conns:     make(map[string]*conn),
		streams:   make(map[*watchStream]struct{}),
	}, nil
}

// Close stops every watch and keepalive started by the client (their
// channels close) and releases its idle connections. Calls in flight are
// not interrupted; calls made after Close fail with [ErrClosed].
func (c *Client) Close() error {
	c.cancel()
	if c.ownPool {
		c.pool.Close()
	}
	return nil
}

// Endpoints returns the client's endpoints, normalized, in order.
func (c *Client) Endpoints() []string { return c.eps.All() }

// conn returns the Connect clients for endpoint url, creating them on first
// use. url need not be one of the configured endpoints.
func (c *Client) conn(url string) *conn {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cn, ok := c.conns[url]; ok {
		return cn
	}
	hc := c.pool.Client(url)
	cn := &conn{
		url:         url,
		kv:          etcdserverpbconnect.NewKVClient(hc, url, c.clientOpt...),
		watch:       etcdserverpbconnect.NewWatchClient(hc, url, c.clientOpt...),
		lease:       etcdserverpbconnect.NewLeaseClient(hc, url, c.clientOpt...),
		cluster:     etcdserverpbconnect.NewClusterClient(hc, url, c.clientOpt...),
		maintenance: etcdserverpbconnect.NewMaintenanceClient(hc, url, c.clientOpt...),
	}
	c.conns[url] = cn
	return cn
}

// kind says whether repeating a call is safe.
type kind int

const (
	// read calls change nothing and may be repeated freely.
	read kind = iota
	// write calls must not be repeated unless they provably were not applied.
	write
)

// retryable is the retry predicate of calls of kind k.
func (k kind) retryable(err error) bool {
	if k == read {
		return resilience.IsRetryable(err)
	}
	return isNotApplied(err)
}

// isNotApplied reports whether err proves a write was not applied: the
// server said Unavailable, or the request never left the client (see
// resilience.TrackSend and resilience.IsNotSent).
func isNotApplied(err error) bool {
	if connect.IsWireError(err) {
		return connect.CodeOf(err) == connect.CodeUnavailable
	}
	return resilience.IsNotSent(err)
}

// isOutcomeUnknown reports whether a failed write may or may not have been
// applied.
func isOutcomeUnknown(err error) bool {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		// A bare context error: ctx ended before an attempt was made.
		return false
	}
	if connect.IsWireError(err) {
		switch ce.Code() {
		case connect.CodeUnknown, connect.CodeDeadlineExceeded, connect.CodeCanceled, connect.CodeInternal:
			// Unknown is the server's word for it; a server-side deadline,
			// cancellation or internal error may have struck after proposing.
			return true
		}
		return false
	}
	return !resilience.IsNotSent(err)
}

// do runs fn against the current endpoint, rotating endpoints and retrying
// per the rules of kind k within ctx. name labels errors ("put", "range").
func (c *Client) do(ctx context.Context, k kind, name string, fn func(ctx context.Context, cn *conn) error) error {
	return c.run(ctx, k, name, "", fn)
}

// doOn is do pinned to one endpoint: errors are retried on that endpoint
// only. An empty endpoint means "any", as in do.
func (c *Client) doOn(ctx context.Context, k kind, name, endpoint string, fn func(ctx context.Context, cn *conn) error) error {
	if endpoint != "" {
		u, err := resilience.NormalizeURL(endpoint)
		if err != nil {
			return fmt.Errorf("chainfire: %s: %w", name, err)
		}
		endpoint = u
	}
	return c.run(ctx, k, name, endpoint, fn)
}

func (c *Client) run(ctx context.Context, k kind, name, pinned string, fn func(ctx context.Context, cn *conn) error) error {
	if c.ctx.Err() != nil {
		return fmt.Errorf("chainfire: %s: %w", name, ErrClosed)
	}
	p := c.policy
	p.Retryable = k.retryable
	p.AttemptTimeout = c.cfg.RequestTimeout
	last := pinned // the endpoint of the latest attempt (Retry runs attempts serially)
	err := resilience.Retry(ctx, p, func(actx context.Context) error {
		ep := pinned
		if ep == "" {
			ep = c.eps.Pick()
		}
		last = ep
		callCtx, sent := actx, func() bool { return true }
		if k == write {
			// A write that failed before a byte left the client was not
			// applied, whatever the error says; it may be retried.
			callCtx, sent = resilience.TrackSend(actx)
		}
		err := fn(callCtx, c.conn(ep))
		if err != nil && !sent() {
			err = resilience.MarkNotSent(err)
		}
		// Whether or not the call may be retried, the next one should go
		// elsewhere if this endpoint failed it or let its attempt time out.
		// (With ctx live, a deadline error is the attempt's own deadline,
		// possibly reported by the server a moment before it expired here.)
		timedOut := ctx.Err() == nil && (actx.Err() != nil || connect.CodeOf(err) == connect.CodeDeadlineExceeded)
		blame := err != nil && (resilience.IsRetryable(err) || timedOut)
		if blame {
			if pinned == "" {
				next := c.eps.Failed(ep)
				c.log.Debug("chainfire: call failed, switching endpoint",
					"call", name, "endpoint", ep, "next_endpoint", next, "error", err)
			} else {
				c.log.Debug("chainfire: call failed", "call", name, "endpoint", ep, "error", err)
			}
		}
		return err
	})
	if err == nil {
		return nil
	}
	ep := last
	if k == write && isOutcomeUnknown(err) {
		return fmt.Errorf("chainfire: %s on %s: %w: %w", name, ep, ErrOutcomeUnknown, err)
	}
	return fmt.Errorf("chainfire: %s on %s: %w", name, ep, err)
}

// watchCtx returns a context that ends with ctx or when the client closes.
func (c *Client) watchCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}
