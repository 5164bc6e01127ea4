package resilience

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"
)

// ErrBadEndpoint is wrapped by every error about a malformed endpoint URL.
var ErrBadEndpoint = errors.New("resilience: bad endpoint")

// Default values of [TransportOptions] fields left at zero.
const (
	DefaultDialTimeout     = 5 * time.Second
	DefaultPingInterval    = 2 * time.Second
	DefaultPingTimeout     = 3 * time.Second
	DefaultTCPKeepAlive    = 15 * time.Second
	DefaultIdleConnTimeout = 90 * time.Second
)

// TransportOptions configures the HTTP/2 transports built by [NewHTTPClient]
// and [Pool]. The zero value is usable.
type TransportOptions struct {
	// TLS is used for https:// targets; nil means the system roots and no
	// client certificate. It is cloned, never modified.
	TLS *tls.Config
	// DialTimeout bounds establishing a TCP (and TLS) connection
	// (default 5 s).
	DialTimeout time.Duration
	// PingInterval is how long a connection may stay silent before the
	// client sends an HTTP/2 PING to check it (default 2 s).
	PingInterval time.Duration
	// PingTimeout is how long the client waits for the PING's answer
	// before closing the connection and failing its streams (default 3 s).
	// With the defaults a dead or paused peer is noticed within about 5 s,
	// even on an idle watch stream.
	PingTimeout time.Duration
	// IdleConnTimeout closes connections unused for that long (default 90 s).
	IdleConnTimeout time.Duration
}

func (o TransportOptions) withDefaults() TransportOptions {
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	if o.PingInterval <= 0 {
		o.PingInterval = DefaultPingInterval
	}
	if o.PingTimeout <= 0 {
		o.PingTimeout = DefaultPingTimeout
	}
	if o.IdleConnTimeout <= 0 {
		o.IdleConnTimeout = DefaultIdleConnTimeout
	}
	return o
}

// NewHTTPClient returns an HTTP client that speaks only HTTP/2: cleartext
// HTTP/2 with prior knowledge (h2c) to http:// URLs, and HTTP/2 over TLS
// (ALPN h2) with opts.TLS to https:// URLs. Its connections are kept alive and
// probed with PINGs, so a dead peer fails the streams on it within
// PingInterval+PingTimeout instead of hanging them.
//
// The client has no overall timeout (it carries long-lived streams); bound
// calls with their context. It is safe for concurrent use and meant to be
// shared: build one per target (see [Pool]), not one per request.
func NewHTTPClient(opts TransportOptions) *http.Client {
	opts = opts.withDefaults()
	dialer := &net.Dialer{Timeout: opts.DialTimeout, KeepAlive: DefaultTCPKeepAlive}
	protocols := new(http.Protocols)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)
	var tlsConfig *tls.Config
	if opts.TLS != nil {
		tlsConfig = opts.TLS.Clone()
	}
	transport := &http.Transport{
		Proxy:               nil, // cluster traffic never goes through an HTTP proxy
		DialContext:         dialer.DialContext,
		TLSClientConfig:     tlsConfig,
		TLSHandshakeTimeout: opts.DialTimeout,
		ForceAttemptHTTP2:   true,
		IdleConnTimeout:     opts.IdleConnTimeout,
		Protocols:           protocols,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout: opts.PingInterval,
			PingTimeout:     opts.PingTimeout,
			WriteByteTimeout: opts.PingInterval +
				opts.PingTimeout,
		},
	}
	return &http.Client{Transport: transport}
}

// Pool hands out one shared [http.Client] per target base URL, so all the
// callers of a target multiplex their requests over the same HTTP/2
// connections. It is safe for concurrent use. The zero value is not usable;
// build one with [NewPool].
type Pool struct {
	opts TransportOptions

	mu      sync.Mutex
	clients map[string]*http.Client // by normalized base URL
	closed  bool
}

// NewPool returns an empty pool whose clients are built with opts.
func NewPool(opts TransportOptions) *Pool {
	return &Pool{opts: opts, clients: make(map[string]*http.Client)}
}

// Client returns the client for baseURL's target (scheme://host:port),
// creating it on first use. Every call with the same target returns the same
// *http.Client. After Close it still returns a working client, but one that
// is not pooled: Close is meant for shutdown.
func (p *Pool) Client(baseURL string) *http.Client {
	key := targetKey(baseURL)
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.clients[key]; ok {
		return c
	}
	c := NewHTTPClient(p.opts)
	if !p.closed {
		p.clients[key] = c
	}
	return c
}

// Close closes the idle connections of every pooled client and forgets
// them. Streams in flight are not interrupted; cancel their contexts first.
func (p *Pool) Close() {
	p.mu.Lock()
	clients := p.clients
	p.clients = make(map[string]*http.Client)
	p.closed = true
	p.mu.Unlock()
	for _, c := range clients {
		c.CloseIdleConnections()
	}
}

// targetKey reduces a base URL to scheme://host so that two URLs of one
// target share a client.
func targetKey(baseURL string) string {
	u, err := url.Parse(baseURL)
	if err != nil || u.Host == "" {
		return baseURL
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host)
}

// NormalizeURL turns an endpoint as an operator writes it into a base URL:
// "host:port" becomes "http://host:port", a trailing slash is removed, and
// anything but an http or https URL with a host is rejected with an error
// wrapping [ErrBadEndpoint].
func NormalizeURL(raw string) (string, error) {
	s := strings.TrimSpace(raw)
	if s == "" {
		return "", fmt.Errorf("%w: empty", ErrBadEndpoint)
	}
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w %q: %w", ErrBadEndpoint, raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("%w %q: scheme must be http or https", ErrBadEndpoint, raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("%w %q: no host", ErrBadEndpoint, raw)
	}
	return strings.TrimRight(u.String(), "/"), nil
}
