// Package api serves etcd's v3 API (KV, Watch, Lease, Cluster, Maintenance) and ChainFire's
// internal PeerService over Connect, on top of a node.Node. Handlers validate input, call the
// node, and map errors to RPC codes once, here at the edge (errors.go).
package api

import (
	"net/http"

	"connectrpc.com/connect"

	"plasmacloud.dev/chainfire/internal/node"
	"plasmacloud.dev/proto/chainfire/peer/v1/peerv1connect"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/etcdserverpb/etcdserverpbconnect"
)

// EtcdVersion is the etcd API version ChainFire reports in Status; clients gate features on it.
const EtcdVersion = "3.5.0"

// Services are the gRPC service names served, for health and reflection.
var Services = []string{
	etcdserverpbconnect.KVName, etcdserverpbconnect.WatchName, etcdserverpbconnect.LeaseName,
	etcdserverpbconnect.ClusterName, etcdserverpbconnect.MaintenanceName, peerv1connect.PeerServiceName,
}

// Options configure the handlers.
type Options struct {
	// Drain is closed when the server begins shutting down: streams end with Unavailable so
	// their clients resume on another member.
	Drain <-chan struct{}
	// ReadMaxBytes refuses larger request messages with ResourceExhausted.
	ReadMaxBytes int
}

// Register mounts every service on mux.
func Register(mux interface{ Handle(string, http.Handler) }, n *node.Node, opts Options) {
	s := &service{n: n, drain: opts.Drain}
	if s.drain == nil {
		s.drain = make(chan struct{})
	}
	ho := []connect.HandlerOption{
		connect.WithReadMaxBytes(opts.ReadMaxBytes),
		// connect-go would gzip every response a client accepts gzip for, however small;
		// etcd does not, and for small responses it cost ChainFire a fifth of its CPU
		// (docs/chainfire/performance.md). Large ones (snapshots, big ranges) still are.
		connect.WithCompressMinBytes(4096),
	}
	mux.Handle(etcdserverpbconnect.NewKVHandler(&kvService{s}, ho...))
	mux.Handle(etcdserverpbconnect.NewWatchHandler(&watchService{s}, ho...))
	mux.Handle(etcdserverpbconnect.NewLeaseHandler(&leaseService{s}, ho...))
	mux.Handle(etcdserverpbconnect.NewClusterHandler(&clusterService{s}, ho...))
	mux.Handle(etcdserverpbconnect.NewMaintenanceHandler(&maintenanceService{s}, ho...))
	mux.Handle(peerv1connect.NewPeerServiceHandler(&peerService{s}, ho...))
}

// service is what every handler shares.
type service struct {
	n     *node.Node
	drain <-chan struct{}
}

// header builds a response header at the given revision (0: the current one).
func (s *service) header(rev int64) *pb.ResponseHeader {
	if rev == 0 {
		rev, _ = s.n.Store().Revision()
	}
	return &pb.ResponseHeader{ClusterId: s.n.ClusterID(), MemberId: s.n.ID(), Revision: rev, RaftTerm: s.n.Term()}
}

// fill completes a header the store filled with a revision.
func (s *service) fill(h *pb.ResponseHeader) *pb.ResponseHeader {
	if h == nil {
		return s.header(0)
	}
	h.ClusterId, h.MemberId, h.RaftTerm = s.n.ClusterID(), s.n.ID(), s.n.Term()
	return h
}
