package chainfire_test

// An in-memory, etcd-shaped fake server for the client's tests: several
// fakeNodes (each an h2c httptest server serving the five etcd services
// through the generated Connect handlers) share one fakeStore, like the
// members of a cluster share one replicated state. Nodes take injected
// faults: errors on the next unary calls, dropped watch and keepalive
// streams, replayed watch events, killed listeners.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/etcdserverpb/etcdserverpbconnect"
	"plasmacloud.dev/proto/mvccpb"
)

// fakeStore is the replicated state of a fake cluster.
type fakeStore struct {
	mu        sync.Mutex
	changed   chan struct{} // closed and replaced on every change
	rev       int64
	compacted int64
	kvs       map[string]*mvccpb.KeyValue
	history   []*mvccpb.Event // every event, in revision order
	leases    map[int64]*fakeLease
	nextLease int64
	members   []*pb.Member
	nextID    uint64
	leader    uint64
	snapshot  []byte
}

type fakeLease struct {
	ttl  int64
	keys map[string]bool
}

func newFakeStore() *fakeStore {
	snap := make([]byte, 10_000)
	for i := range snap {
		snap[i] = byte(i * 7)
	}
	return &fakeStore{
		changed:  make(chan struct{}),
		rev:      1,
		kvs:      make(map[string]*mvccpb.KeyValue),
		leases:   make(map[int64]*fakeLease),
		nextID:   0x1000,
		snapshot: snap,
	}
}

func (s *fakeStore) header(memberID uint64) *pb.ResponseHeader {
	return &pb.ResponseHeader{ClusterId: 0xc1, MemberId: memberID, Revision: s.rev, RaftTerm: 2}
}

// notify wakes up the watchers; s.mu must be held.
func (s *fakeStore) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func inRange(key, start, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(key, start)
	case bytes.Equal(end, []byte{0}):
		return bytes.Compare(key, start) >= 0
	}
	return bytes.Compare(key, start) >= 0 && bytes.Compare(key, end) < 0
}

// rangeKeys returns the live kvs in [key, end), sorted; s.mu held.
func (s *fakeStore) rangeKeys(key, end []byte) []*mvccpb.KeyValue {
	var out []*mvccpb.KeyValue
	for k, kv := range s.kvs {
		if inRange([]byte(k), key, end) {
			out = append(out, kv)
		}
	}
	sort.Slice(out, func(i, j int) bool { return bytes.Compare(out[i].Key, out[j].Key) < 0 })
	return out
}

func (s *fakeStore) doRange(r *pb.RangeRequest, member uint64) (*pb.RangeResponse, error) {
	if r.Revision > 0 && r.Revision <= s.compacted {
		return nil, connect.NewError(connect.CodeOutOfRange, errors.New("mvcc: required revision has been compacted"))
	}
	kvs := s.rangeKeys(r.Key, r.RangeEnd)
	resp := &pb.RangeResponse{Header: s.header(member), Count: int64(len(kvs))}
	if r.CountOnly {
		return resp, nil
	}
	if r.Limit > 0 && int64(len(kvs)) > r.Limit {
		kvs, resp.More = kvs[:r.Limit], true
	}
	for _, kv := range kvs {
		c := proto.Clone(kv).(*mvccpb.KeyValue)
		if r.KeysOnly {
			c.Value = nil
		}
		resp.Kvs = append(resp.Kvs, c)
	}
	return resp, nil
}

// doPut applies a put at revision rev (already incremented); s.mu held.
func (s *fakeStore) doPut(r *pb.PutRequest, rev int64, member uint64) *pb.PutResponse {
	resp := &pb.PutResponse{}
	old := s.kvs[string(r.Key)]
	kv := &mvccpb.KeyValue{Key: r.Key, Value: r.Value, ModRevision: rev, CreateRevision: rev, Version: 1, Lease: r.Lease}
	if old != nil {
		kv.CreateRevision, kv.Version = old.CreateRevision, old.Version+1
		if r.PrevKv {
			resp.PrevKv = old
		}
		if r.IgnoreValue {
			kv.Value = old.Value
		}
		if r.IgnoreLease {
			kv.Lease = old.Lease
		}
	}
	if l := s.leases[kv.Lease]; l != nil {
		l.keys[string(kv.Key)] = true
	}
	s.kvs[string(r.Key)] = kv
	s.history = append(s.history, &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: kv, PrevKv: old})
	resp.Header = s.header(member)
	return resp
}

func (s *fakeStore) doDelete(r *pb.DeleteRangeRequest, rev int64, member uint64) *pb.DeleteRangeResponse {
	resp := &pb.DeleteRangeResponse{}
	for _, kv := range s.rangeKeys(r.Key, r.RangeEnd) {
		delete(s.kvs, string(kv.Key))
		resp.Deleted++
		if r.PrevKv {
			resp.PrevKvs = append(resp.PrevKvs, kv)
		}
		s.history = append(s.history, &mvccpb.Event{Type: mvccpb.Event_DELETE,
			Kv: &mvccpb.KeyValue{Key: kv.Key, ModRevision: rev}, PrevKv: kv})
	}
	resp.Header = s.header(member)
	return resp
}

func (s *fakeStore) compare(c *pb.Compare) bool {
	kv := s.kvs[string(c.Key)]
	if kv == nil {
		kv = &mvccpb.KeyValue{}
	}
	var cmp int
	switch t := c.TargetUnion.(type) {
	case *pb.Compare_Value:
		cmp = bytes.Compare(kv.Value, t.Value)
	case *pb.Compare_Version:
		cmp = cmpInt(kv.Version, t.Version)
	case *pb.Compare_CreateRevision:
		cmp = cmpInt(kv.CreateRevision, t.CreateRevision)
	case *pb.Compare_ModRevision:
		cmp = cmpInt(kv.ModRevision, t.ModRevision)
	case *pb.Compare_Lease:
		cmp = cmpInt(kv.Lease, t.Lease)
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return cmp == 0
	case pb.Compare_NOT_EQUAL:
		return cmp != 0
	case pb.Compare_LESS:
		return cmp < 0
	case pb.Compare_GREATER:
		return cmp > 0
	}
	return false
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func isWrite(ops []*pb.RequestOp) bool {
	for _, op := range ops {
		switch r := op.Request.(type) {
		case *pb.RequestOp_RequestPut, *pb.RequestOp_RequestDeleteRange:
			return true
		case *pb.RequestOp_RequestTxn:
			if isWrite(r.RequestTxn.Success) || isWrite(r.RequestTxn.Failure) {
				return true
			}
		}
	}
	return false
}

// doTxn runs a txn; all its writes share one revision. s.mu held.
func (s *fakeStore) doTxn(r *pb.TxnRequest, rev int64, member uint64) (*pb.TxnResponse, error) {
	ok := true
	for _, c := range r.Compare {
		ok = ok && s.compare(c)
	}
	ops := r.Success
	if !ok {
		ops = r.Failure
	}
	resp := &pb.TxnResponse{Succeeded: ok}
	for _, op := range ops {
		switch o := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr, err := s.doRange(o.RequestRange, member)
			if err != nil {
				return nil, err
			}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}})
		case *pb.RequestOp_RequestPut:
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: s.doPut(o.RequestPut, rev, member)}})
		case *pb.RequestOp_RequestDeleteRange:
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: s.doDelete(o.RequestDeleteRange, rev, member)}})
		case *pb.RequestOp_RequestTxn:
			tr, err := s.doTxn(o.RequestTxn, rev, member)
			if err != nil {
				return nil, err
			}
			resp.Responses = append(resp.Responses, &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: tr}})
		}
	}
	resp.Header = s.header(member)
	return resp, nil
}

// fault is an injected failure of one unary call.
type fault struct {
	code  connect.Code
	apply bool          // apply the call, then fail (outcome unknown to the client)
	delay time.Duration // hang this long (or until the call's ctx ends) first
}

// fakeNode is one member of the fake cluster.
type fakeNode struct {
	id    uint64
	store *fakeStore
	srv   *httptest.Server
	url   string

	mu     sync.Mutex
	faults []fault // consumed one per unary call

	unaryCalls      atomic.Int64
	watchStreams    atomic.Int64
	keepAliveCalls  atomic.Int64
	watchDropAfter  atomic.Int64 // responses sent on a watch stream before it is failed; 0 = never
	watchReplay     atomic.Int64 // on a resumed watch, resend this many revisions before start
	keepAliveDrop   atomic.Int64 // answers on a keepalive stream before it is failed; 0 = never
	truncateSnap    atomic.Bool
	refuseWatchCode atomic.Int64 // nonzero: fail watch streams with this code

	etcdserverpbconnect.UnimplementedMaintenanceHandler
}

// newFakeCluster starts n nodes sharing one store; the first is the leader.
func newFakeCluster(t *testing.T, n int) (*fakeStore, []*fakeNode) {
	t.Helper()
	s := newFakeStore()
	var nodes []*fakeNode
	for range n {
		nodes = append(nodes, newFakeNode(t, s))
	}
	s.mu.Lock()
	s.leader = nodes[0].id
	s.mu.Unlock()
	return s, nodes
}

func newFakeNode(t *testing.T, s *fakeStore) *fakeNode {
	t.Helper()
	s.mu.Lock()
	s.nextID++
	n := &fakeNode{id: s.nextID, store: s}
	s.mu.Unlock()
	interceptor := connect.WithInterceptors(connect.UnaryInterceptorFunc(n.intercept))
	mux := http.NewServeMux()
	mux.Handle(etcdserverpbconnect.NewKVHandler(n, interceptor))
	mux.Handle(etcdserverpbconnect.NewWatchHandler(n))
	mux.Handle(etcdserverpbconnect.NewLeaseHandler(n, interceptor))
	mux.Handle(etcdserverpbconnect.NewClusterHandler(n, interceptor))
	mux.Handle(etcdserverpbconnect.NewMaintenanceHandler(n, interceptor))
	n.srv = httptest.NewUnstartedServer(mux)
	n.srv.Config.Protocols = new(http.Protocols)
	n.srv.Config.Protocols.SetHTTP1(true)
	n.srv.Config.Protocols.SetUnencryptedHTTP2(true)
	n.srv.Start()
	n.url = n.srv.URL
	s.mu.Lock()
	s.members = append(s.members, &pb.Member{ID: n.id, Name: fmt.Sprintf("node-%x", n.id),
		PeerURLs: []string{"http://peer-" + n.url[len("http://"):]}, ClientURLs: []string{n.url}})
	s.mu.Unlock()
	t.Cleanup(n.kill)
	return n
}

// kill makes the node unreachable: listener closed (connection refused),
// every open connection cut.
func (n *fakeNode) kill() {
	n.srv.Listener.Close()
	n.srv.CloseClientConnections()
}

// inject queues faults for the next unary calls.
func (n *fakeNode) inject(fs ...fault) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = append(n.faults, fs...)
}

func (n *fakeNode) intercept(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		n.unaryCalls.Add(1)
		n.mu.Lock()
		var f *fault
		if len(n.faults) > 0 {
			f = &n.faults[0]
			n.faults = n.faults[1:]
		}
		n.mu.Unlock()
		if f == nil {
			return next(ctx, req)
		}
		if f.delay > 0 {
			select {
			case <-time.After(f.delay):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if f.apply {
			if _, err := next(ctx, req); err != nil {
				return nil, err
			}
		}
		if f.code == 0 {
			return next(ctx, req)
		}
		return nil, connect.NewError(f.code, fmt.Errorf("injected %v (applied: %v)", f.code, f.apply))
	}
}

// --- KV

func (n *fakeNode) Range(_ context.Context, req *connect.Request[pb.RangeRequest]) (*connect.Response[pb.RangeResponse], error) {
	n.store.mu.Lock()
	defer n.store.mu.Unlock()
	r, err := n.store.doRange(req.Msg, n.id)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(r), nil
}

func (n *fakeNode) Put(_ context.Context, req *connect.Request[pb.PutRequest]) (*connect.Response[pb.PutResponse], error) {
	if len(req.Msg.Key) == 0 {
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("key is required"))
	}
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev++
	r := s.doPut(req.Msg, s.rev, n.id)
	s.notify()
	return connect.NewResponse(r), nil
}

func (n *fakeNode) DeleteRange(_ context.Context, req *connect.Request[pb.DeleteRangeRequest]) (*connect.Response[pb.DeleteRangeResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.rangeKeys(req.Msg.Key, req.Msg.RangeEnd)) == 0 {
		return connect.NewResponse(&pb.DeleteRangeResponse{Header: s.header(n.id)}), nil
	}
	s.rev++
	r := s.doDelete(req.Msg, s.rev, n.id)
	s.notify()
	return connect.NewResponse(r), nil
}

func (n *fakeNode) Txn(_ context.Context, req *connect.Request[pb.TxnRequest]) (*connect.Response[pb.TxnResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	rev := s.rev
	write := isWrite(req.Msg.Success) || isWrite(req.Msg.Failure)
	if write {
		rev++
	}
	r, err := s.doTxn(req.Msg, rev, n.id)
	if err != nil {
		return nil, err
	}
	if write {
		s.rev = rev
		r.Header.Revision = rev
		s.notify()
	}
	return connect.NewResponse(r), nil
}

func (n *fakeNode) Compact(_ context.Context, req *connect.Request[pb.CompactionRequest]) (*connect.Response[pb.CompactionResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Msg.Revision > s.rev {
		return nil, connect.NewError(connect.CodeOutOfRange, errors.New("mvcc: required revision is a future revision"))
	}
	if req.Msg.Revision <= s.compacted {
		return nil, connect.NewError(connect.CodeOutOfRange, errors.New("mvcc: required revision has been compacted"))
	}
	s.compacted = req.Msg.Revision
	return connect.NewResponse(&pb.CompactionResponse{Header: s.header(n.id)}), nil
}

// --- Watch

// Watch serves one watch per stream, etcd style: a created response, then
// the history from the start revision, then live events, one response per
// revision.
func (n *fakeNode) Watch(ctx context.Context, stream *connect.BidiStream[pb.WatchRequest, pb.WatchResponse]) error {
	n.watchStreams.Add(1)
	if code := n.refuseWatchCode.Load(); code != 0 {
		return connect.NewError(connect.Code(code), errors.New("watch refused"))
	}
	req, err := stream.Receive()
	if err != nil {
		return err
	}
	cr := req.GetCreateRequest()
	if cr == nil {
		return connect.NewError(connect.CodeInvalidArgument, errors.New("first request must create"))
	}
	progress := make(chan struct{}, 1)
	go func() {
		for {
			r, err := stream.Receive()
			if err != nil {
				return
			}
			if r.GetProgressRequest() != nil {
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		}
	}()
	s := n.store
	s.mu.Lock()
	start := cr.StartRevision
	if start > 0 && start <= s.compacted {
		hdr := s.header(n.id)
		compacted := s.compacted
		s.mu.Unlock()
		if err := stream.Send(&pb.WatchResponse{Header: hdr, Created: true}); err != nil {
			return err
		}
		return stream.Send(&pb.WatchResponse{Header: hdr, Canceled: true, CompactRevision: compacted})
	}
	if start == 0 {
		start = s.rev + 1
	} else if replay := n.watchReplay.Load(); replay > 0 {
		start = max(1, start-replay) // misbehave: send some revisions again
	}
	hdr := s.header(n.id)
	s.mu.Unlock()
	if err := stream.Send(&pb.WatchResponse{Header: hdr, Created: true}); err != nil {
		return err
	}
	filtered := func(ev *mvccpb.Event) bool {
		for _, f := range cr.Filters {
			if (f == pb.WatchCreateRequest_NOPUT && ev.Type == mvccpb.Event_PUT) ||
				(f == pb.WatchCreateRequest_NODELETE && ev.Type == mvccpb.Event_DELETE) {
				return true
			}
		}
		return false
	}
	sent := int64(0)
	idx := 0 // position in s.history
	for {
		s.mu.Lock()
		var batch []*pb.WatchResponse
		for ; idx < len(s.history); idx++ {
			ev := s.history[idx]
			if ev.Kv.ModRevision < start || !inRange(ev.Kv.Key, cr.Key, cr.RangeEnd) || filtered(ev) {
				continue
			}
			if !cr.PrevKv {
				ev = &mvccpb.Event{Type: ev.Type, Kv: ev.Kv}
			}
			if l := len(batch); l > 0 && batch[l-1].Events[0].Kv.ModRevision == ev.Kv.ModRevision {
				batch[l-1].Events = append(batch[l-1].Events, ev)
				continue
			}
			batch = append(batch, &pb.WatchResponse{Header: s.header(n.id), Events: []*mvccpb.Event{ev}})
		}
		changed := s.changed
		hdr := s.header(n.id)
		s.mu.Unlock()
		for _, r := range batch {
			if d := n.watchDropAfter.Load(); d > 0 && sent >= d {
				return connect.NewError(connect.CodeUnavailable, errors.New("injected watch stream drop"))
			}
			if err := stream.Send(r); err != nil {
				return err
			}
			sent++
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-progress:
			if err := stream.Send(&pb.WatchResponse{Header: hdr, WatchId: -1}); err != nil {
				return err
			}
		}
	}
}

// --- Lease

func (n *fakeNode) LeaseGrant(_ context.Context, req *connect.Request[pb.LeaseGrantRequest]) (*connect.Response[pb.LeaseGrantResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextLease++
	id := s.nextLease + 0x7000
	s.leases[id] = &fakeLease{ttl: req.Msg.TTL, keys: map[string]bool{}}
	return connect.NewResponse(&pb.LeaseGrantResponse{Header: s.header(n.id), ID: id, TTL: req.Msg.TTL}), nil
}

func (n *fakeNode) LeaseRevoke(_ context.Context, req *connect.Request[pb.LeaseRevokeRequest]) (*connect.Response[pb.LeaseRevokeResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	l := s.leases[req.Msg.ID]
	if l == nil {
		return nil, connect.NewError(connect.CodeNotFound, errors.New("etcdserver: requested lease not found"))
	}
	delete(s.leases, req.Msg.ID)
	if len(l.keys) > 0 {
		s.rev++
		for k := range l.keys {
			s.doDelete(&pb.DeleteRangeRequest{Key: []byte(k)}, s.rev, n.id)
		}
		s.notify()
	}
	return connect.NewResponse(&pb.LeaseRevokeResponse{Header: s.header(n.id)}), nil
}

func (n *fakeNode) LeaseKeepAlive(ctx context.Context, stream *connect.BidiStream[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	answered := int64(0)
	for {
		req, err := stream.Receive()
		if err != nil {
			return nil
		}
		n.keepAliveCalls.Add(1)
		if d := n.keepAliveDrop.Load(); d > 0 && answered >= d {
			return connect.NewError(connect.CodeUnavailable, errors.New("injected keepalive stream drop"))
		}
		n.store.mu.Lock()
		resp := &pb.LeaseKeepAliveResponse{Header: n.store.header(n.id), ID: req.ID}
		if l := n.store.leases[req.ID]; l != nil {
			resp.TTL = l.ttl
		}
		n.store.mu.Unlock()
		if err := stream.Send(resp); err != nil {
			return err
		}
		answered++
	}
}

func (n *fakeNode) LeaseTimeToLive(_ context.Context, req *connect.Request[pb.LeaseTimeToLiveRequest]) (*connect.Response[pb.LeaseTimeToLiveResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &pb.LeaseTimeToLiveResponse{Header: s.header(n.id), ID: req.Msg.ID, TTL: -1}
	if l := s.leases[req.Msg.ID]; l != nil {
		resp.TTL, resp.GrantedTTL = l.ttl, l.ttl
		if req.Msg.Keys {
			for k := range l.keys {
				resp.Keys = append(resp.Keys, []byte(k))
			}
		}
	}
	return connect.NewResponse(resp), nil
}

func (n *fakeNode) LeaseLeases(context.Context, *connect.Request[pb.LeaseLeasesRequest]) (*connect.Response[pb.LeaseLeasesResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &pb.LeaseLeasesResponse{Header: s.header(n.id)}
	for id := range s.leases {
		resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: id})
	}
	return connect.NewResponse(resp), nil
}

// --- Cluster

func (n *fakeNode) MemberAdd(_ context.Context, req *connect.Request[pb.MemberAddRequest]) (*connect.Response[pb.MemberAddResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	s.nextID++
	m := &pb.Member{ID: s.nextID, PeerURLs: req.Msg.PeerURLs, IsLearner: req.Msg.IsLearner}
	s.members = append(s.members, m)
	return connect.NewResponse(&pb.MemberAddResponse{Header: s.header(n.id), Member: m, Members: s.members}), nil
}

func (n *fakeNode) MemberRemove(_ context.Context, req *connect.Request[pb.MemberRemoveRequest]) (*connect.Response[pb.MemberRemoveResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, m := range s.members {
		if m.ID == req.Msg.ID {
			s.members = append(s.members[:i:i], s.members[i+1:]...)
			return connect.NewResponse(&pb.MemberRemoveResponse{Header: s.header(n.id), Members: s.members}), nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("etcdserver: member not found"))
}

func (n *fakeNode) MemberUpdate(_ context.Context, req *connect.Request[pb.MemberUpdateRequest]) (*connect.Response[pb.MemberUpdateResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.members {
		if m.ID == req.Msg.ID {
			m.PeerURLs = req.Msg.PeerURLs
			return connect.NewResponse(&pb.MemberUpdateResponse{Header: s.header(n.id), Members: s.members}), nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("etcdserver: member not found"))
}

func (n *fakeNode) MemberList(context.Context, *connect.Request[pb.MemberListRequest]) (*connect.Response[pb.MemberListResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	return connect.NewResponse(&pb.MemberListResponse{Header: s.header(n.id), Members: s.members}), nil
}

func (n *fakeNode) MemberPromote(_ context.Context, req *connect.Request[pb.MemberPromoteRequest]) (*connect.Response[pb.MemberPromoteResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.members {
		if m.ID == req.Msg.ID {
			m.IsLearner = false
			return connect.NewResponse(&pb.MemberPromoteResponse{Header: s.header(n.id), Members: s.members}), nil
		}
	}
	return nil, connect.NewError(connect.CodeNotFound, errors.New("etcdserver: member not found"))
}

// --- Maintenance

func (n *fakeNode) Status(context.Context, *connect.Request[pb.StatusRequest]) (*connect.Response[pb.StatusResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	return connect.NewResponse(&pb.StatusResponse{Header: s.header(n.id), Version: "fake-3.4",
		DbSize: int64(len(s.snapshot)), Leader: s.leader, RaftIndex: uint64(s.rev), RaftTerm: 2}), nil
}

func (n *fakeNode) HashKV(_ context.Context, req *connect.Request[pb.HashKVRequest]) (*connect.Response[pb.HashKVResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	return connect.NewResponse(&pb.HashKVResponse{Header: s.header(n.id), Hash: uint32(s.rev), CompactRevision: s.compacted}), nil
}

func (n *fakeNode) Defragment(context.Context, *connect.Request[pb.DefragmentRequest]) (*connect.Response[pb.DefragmentResponse], error) {
	return connect.NewResponse(&pb.DefragmentResponse{}), nil
}

func (n *fakeNode) MoveLeader(_ context.Context, req *connect.Request[pb.MoveLeaderRequest]) (*connect.Response[pb.MoveLeaderResponse], error) {
	s := n.store
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leader != n.id {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("etcdserver: not leader"))
	}
	s.leader = req.Msg.TargetID
	return connect.NewResponse(&pb.MoveLeaderResponse{Header: s.header(n.id)}), nil
}

func (n *fakeNode) Snapshot(_ context.Context, _ *connect.Request[pb.SnapshotRequest], stream *connect.ServerStream[pb.SnapshotResponse]) error {
	n.store.mu.Lock()
	data := append([]byte(nil), n.store.snapshot...)
	n.store.mu.Unlock()
	const chunk = 1000
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		if err := stream.Send(&pb.SnapshotResponse{RemainingBytes: uint64(len(data) - end), Blob: data[off:end]}); err != nil {
			return err
		}
		if n.truncateSnap.Load() && off >= 3*chunk {
			return nil // ends cleanly, too early
		}
	}
	return nil
}
