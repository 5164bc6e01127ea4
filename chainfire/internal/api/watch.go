package api

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/chainfire/internal/mvcc"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

type watchService struct{ *service }

// Watch serves one bidirectional watch stream carrying many watchers, as etcd does: a create
// is answered with created=true and the watch id first; events follow, whole revisions at a
// time; a start revision below the compaction point gets a canceled response carrying
// compact_revision. Watchers are served from this member's store (no forwarding). The stream
// ends when the client closes it, the client's context ends, or the server drains
// (Unavailable, so the client resumes on another member).
func (s *watchService) Watch(ctx context.Context, stream *connect.BidiStream[pb.WatchRequest, pb.WatchResponse]) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ws := &watchStream{
		service:  s.service,
		ctx:      ctx,
		out:      make(chan *pb.WatchResponse, 256),
		watchers: map[int64]*streamWatcher{},
	}
	defer ws.closeAll()

	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Receive()
			if err != nil {
				recvErr <- err
				return
			}
			if err := ws.handle(req); err != nil {
				recvErr <- err
				return
			}
		}
	}()

	progress := time.NewTicker(s.n.Config().ProgressNotifyInterval)
	defer progress.Stop()
	for {
		select {
		case resp := <-ws.out:
			if err := stream.Send(resp); err != nil {
				return err
			}
		case err := <-recvErr:
			if errors.Is(err, context.Canceled) || connect.CodeOf(err) == connect.CodeCanceled || isEOF(err) {
				return nil
			}
			return err
		case <-progress.C:
			ws.progressAll()
		case <-s.drain:
			return connect.NewError(connect.CodeUnavailable, errors.New("chainfire: member shutting down; resume the watch on another member"))
		case <-ctx.Done():
			return nil
		}
	}
}

// watchStream is the state of one Watch stream. out is drained by the stream's send loop.
type watchStream struct {
	*service
	ctx context.Context
	out chan *pb.WatchResponse

	mu       sync.Mutex
	nextID   int64
	watchers map[int64]*streamWatcher
}

type streamWatcher struct {
	id       int64
	w        *mvcc.Watcher
	noPut    bool
	noDelete bool
	progress bool
	done     chan struct{}
	// lastRev is the revision of the last batch forwarded (progress notifications never
	// claim more than what was delivered).
	mu      sync.Mutex
	lastRev int64
}

func (ws *watchStream) send(resp *pb.WatchResponse) bool {
	select {
	case ws.out <- resp:
		return true
	case <-ws.ctx.Done():
		return false
	}
}

func (ws *watchStream) handle(req *pb.WatchRequest) error {
	switch r := req.RequestUnion.(type) {
	case *pb.WatchRequest_CreateRequest:
		ws.create(r.CreateRequest)
	case *pb.WatchRequest_CancelRequest:
		ws.mu.Lock()
		sw := ws.watchers[r.CancelRequest.WatchId]
		delete(ws.watchers, r.CancelRequest.WatchId)
		ws.mu.Unlock()
		if sw != nil {
			sw.w.Cancel()
			<-sw.done
		}
		ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: r.CancelRequest.WatchId, Canceled: true})
	case *pb.WatchRequest_ProgressRequest:
		// etcd answers a stream-wide progress request with watch id -1.
		ws.send(&pb.WatchResponse{Header: ws.header(ws.progressRevision()), WatchId: -1})
	default:
		return connect.NewError(connect.CodeInvalidArgument, errors.New("watch request has no create_request, cancel_request or progress_request"))
	}
	return nil
}

func (ws *watchStream) create(cr *pb.WatchCreateRequest) {
	ws.mu.Lock()
	id := cr.WatchId
	if id == 0 {
		for ws.watchers[ws.nextID] != nil {
			ws.nextID++
		}
		id = ws.nextID
		ws.nextID++
	} else if ws.watchers[id] != nil {
		ws.mu.Unlock()
		ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: id, Created: true, Canceled: true, CancelReason: "watch id already in use"})
		return
	}
	ws.mu.Unlock()

	if len(cr.Key) == 0 {
		ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: id, Created: true, Canceled: true, CancelReason: "key is empty"})
		return
	}
	// A watch "from now" starts right after the revision its created response reports, so a
	// client that reconnects resumes from that header's revision + 1 without a gap.
	startRev := cr.StartRevision
	createdRev, _ := ws.n.Store().Revision()
	if startRev <= 0 {
		startRev = createdRev + 1
	}
	w, err := ws.n.Store().Watch(cr.Key, cr.RangeEnd, startRev, cr.PrevKv)
	if err != nil {
		var ce *mvcc.CompactedError
		resp := &pb.WatchResponse{Header: ws.header(0), WatchId: id, Created: true}
		ws.send(resp)
		cancel := &pb.WatchResponse{Header: ws.header(0), WatchId: id, Canceled: true, CancelReason: err.Error()}
		if errors.As(err, &ce) {
			cancel.CompactRevision = ce.CompactRevision
		}
		ws.send(cancel)
		return
	}
	sw := &streamWatcher{id: id, w: w, progress: cr.ProgressNotify, done: make(chan struct{}), lastRev: startRev - 1}
	for _, f := range cr.Filters {
		switch f {
		case pb.WatchCreateRequest_NOPUT:
			sw.noPut = true
		case pb.WatchCreateRequest_NODELETE:
			sw.noDelete = true
		}
	}
	ws.mu.Lock()
	ws.watchers[id] = sw
	ws.mu.Unlock()
	// The created response is queued before the forwarder starts, so it precedes all events.
	ws.send(&pb.WatchResponse{Header: ws.header(createdRev), WatchId: id, Created: true})
	go ws.forward(sw)
}

// forward moves one watcher's batches into the stream, applying its filters.
func (ws *watchStream) forward(sw *streamWatcher) {
	defer close(sw.done)
	for b := range sw.w.C() {
		if b.CompactRevision != 0 {
			ws.send(&pb.WatchResponse{Header: ws.header(0), WatchId: sw.id, Canceled: true, CompactRevision: b.CompactRevision,
				CancelReason: "etcdserver: mvcc: required revision has been compacted"})
			ws.mu.Lock()
			delete(ws.watchers, sw.id)
			ws.mu.Unlock()
			return
		}
		events := b.Events
		if sw.noPut || sw.noDelete {
			events = make([]*mvccpb.Event, 0, len(b.Events))
			for _, ev := range b.Events {
				if (ev.Type == mvccpb.Event_PUT && sw.noPut) || (ev.Type == mvccpb.Event_DELETE && sw.noDelete) {
					continue
				}
				events = append(events, ev)
			}
		}
		sw.mu.Lock()
		sw.lastRev = b.Revision
		sw.mu.Unlock()
		if len(events) == 0 {
			continue
		}
		if !ws.send(&pb.WatchResponse{Header: ws.header(b.Revision), WatchId: sw.id, Events: events}) {
			return
		}
	}
}

// progressRevision is a revision every watcher of the stream has been brought up to.
func (ws *watchStream) progressRevision() int64 {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	rev, _ := ws.n.Store().Revision()
	for _, sw := range ws.watchers {
		sw.mu.Lock()
		if sw.lastRev < rev {
			rev = sw.lastRev
		}
		sw.mu.Unlock()
	}
	return rev
}

// progressAll sends a progress notification to every watcher that asked for them.
func (ws *watchStream) progressAll() {
	ws.mu.Lock()
	var ids []*streamWatcher
	for _, sw := range ws.watchers {
		if sw.progress {
			ids = append(ids, sw)
		}
	}
	ws.mu.Unlock()
	for _, sw := range ids {
		sw.mu.Lock()
		rev := sw.lastRev
		sw.mu.Unlock()
		ws.send(&pb.WatchResponse{Header: ws.header(rev), WatchId: sw.id})
	}
}

func (ws *watchStream) closeAll() {
	ws.mu.Lock()
	ws2 := ws.watchers
	ws.watchers = map[int64]*streamWatcher{}
	ws.mu.Unlock()
	for _, sw := range ws2 {
		sw.w.Cancel()
	}
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }
