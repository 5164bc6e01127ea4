package node

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/resilience"

	"plasmacloud.dev/proto/chainfire/peer/v1/peerv1connect"
	"plasmacloud.dev/proto/etcdserverpb/etcdserverpbconnect"
)

// ForwardedHeader marks a request one member forwarded to another, so the receiver never
// forwards it again (no loops while leadership moves).
const ForwardedHeader = "X-Chainfire-Forwarded"

// ForwardDeadlineHeader carries the absolute deadline (Unix nanoseconds) of a forwarded
// proposal. gRPC's own timeout is relative, so a request held up in a partitioned network
// would arrive with a fresh budget long after the forwarding member gave up; the leader
// refuses a proposal whose deadline has passed instead of applying it late (up to the
// members' clock skew).
const ForwardDeadlineHeader = "X-Chainfire-Forward-Deadline"

// ForwardExpired reports whether a forwarded request's absolute deadline has passed.
func ForwardExpired(h http.Header, now time.Time) bool {
	v := h.Get(ForwardDeadlineHeader)
	if v == "" {
		return false
	}
	ns, err := strconv.ParseInt(v, 10, 64)
	return err == nil && now.UnixNano() > ns
}

// peerClients holds the Connect clients to other members, on one pooled HTTP/2 client per
// member client URL. Safe for concurrent use.
type peerClients struct {
	pool  *resilience.Pool
	mu    sync.Mutex
	byURL map[string]*peerConn
}

type peerConn struct {
	peer    peerv1connect.PeerServiceClient
	lease   etcdserverpbconnect.LeaseClient
	cluster etcdserverpbconnect.ClusterClient
	maint   etcdserverpbconnect.MaintenanceClient
}

func newPeerClients(tlsCfg *tls.Config) *peerClients {
	return &peerClients{
		pool:  resilience.NewPool(resilience.TransportOptions{DialTimeout: 2 * time.Second, TLS: tlsCfg}),
		byURL: map[string]*peerConn{},
	}
}

func (p *peerClients) get(baseURL string) *peerConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.byURL[baseURL]; ok {
		return c
	}
	hc := p.pool.Client(baseURL)
	opts := []connect.ClientOption{connect.WithGRPC()}
	c := &peerConn{
		peer:    peerv1connect.NewPeerServiceClient(hc, baseURL, opts...),
		lease:   etcdserverpbconnect.NewLeaseClient(hc, baseURL, opts...),
		cluster: etcdserverpbconnect.NewClusterClient(hc, baseURL, opts...),
		maint:   etcdserverpbconnect.NewMaintenanceClient(hc, baseURL, opts...),
	}
	p.byURL[baseURL] = c
	return c
}

func (p *peerClients) close() { p.pool.Close() }

// notSent reports whether a forwarding error guarantees the request never reached the peer
// (the connection could not be made), so retrying it cannot apply it twice.
func notSent(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	return false
}

// retryableForward reports whether a forwarded call failed without being applied, so the
// caller may look for the leader again: either the peer itself answered FailedPrecondition
// (not the leader) or Unavailable (no leader, not applied), or the connection was never made.
// Any other transport failure after the request left is indeterminate.
func retryableForward(err error) bool {
	if connect.IsWireError(err) {
		c := connect.CodeOf(err)
		return c == connect.CodeFailedPrecondition || c == connect.CodeUnavailable
	}
	return notSent(err)
}

// forwardHeader marks an outgoing forwarded request.
func forwardHeader[T any](req *connect.Request[T]) *connect.Request[T] {
	req.Header().Set(ForwardedHeader, "1")
	return req
}
