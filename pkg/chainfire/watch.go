package chainfire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
)

// watchBuffer is how many responses a watch holds for a slow consumer
// before it stops reading its stream (and the server, through HTTP/2 flow
// control, stops sending).
const watchBuffer = 16

// WatchResponse is one delivery of a [Client.Watch] channel. Exactly one
// of these holds:
//   - Events is non-empty: the events of one or more whole revisions, in
//     revision order, none of them delivered before;
//   - Created is set (only with WithCreatedNotify, once): the watch is in
//     place;
//   - Relist is set: the watch cannot resume because CompactRevision
//     compacted the revisions it needed; the channel closes after it;
//   - Err is set: the watch ended for another reason (the server canceled
//     it, or refused it as invalid); the channel closes after it;
//   - none of the above: a progress notification — every event up to
//     Header.Revision has been delivered ([WatchResponse.IsProgressNotify]).
type WatchResponse struct {
	// Header is the server's header; Header.Revision is the store revision
	// when the response was sent.
	Header *pb.ResponseHeader
	// Events are the changes.
	Events []*mvccpb.Event
	// Created marks the creation notice requested with WithCreatedNotify.
	Created bool
	// Relist tells the consumer to read the current state again and start
	// a new watch from that read's revision + 1: the events between the last
	// delivered revision and CompactRevision are lost to compaction.
	Relist bool
	// CompactRevision is the compaction revision that caused Relist.
	CompactRevision int64
	// Err is the reason the watch ended (wraps [ErrCompacted] with Relist,
	// [ErrWatchCanceled] for a server cancel, or the server's error).
	Err error
}

// IsProgressNotify reports whether the response is a progress
// notification: no events, only the news that the watch has seen every
// revision up to Header.Revision.
func (r WatchResponse) IsProgressNotify() bool {
	return len(r.Events) == 0 && !r.Created && !r.Relist && r.Err == nil
}

// Revision returns Header.Revision (0 without a header).
func (r WatchResponse) Revision() int64 { return r.Header.GetRevision() }

// Watch watches key (or a range, with WithPrefix / WithRange / WithFromKey)
// from revision WithRev (default: from now), with WithPrevKV,
// WithProgressNotify, WithCreatedNotify, WithFilterPut and
// WithFilterDelete. It never fails synchronously: problems arrive on the
// channel.
//
// The watch is owned by ctx: it runs in its own goroutine, on its own
// HTTP/2 stream, until ctx ends or the client is closed, and then closes
// the channel. Stream errors of any kind (a member killed, paused or
// partitioned away, a server restart) are survived: the watch reconnects
// with backoff to the next endpoint and resumes from the revision after the
// last one delivered, dropping anything the server sends again. It ends on
// its own only with a final response carrying Relist (compaction) or Err
// (server cancel, or a request the server rejects as invalid).
//
// A consumer that does not read blocks the watch after a small buffer;
// nothing is dropped, and the server sees backpressure.
func (c *Client) Watch(ctx context.Context, key string, opts ...OpOption) <-chan WatchResponse {
	o := newOp(opGet, key, "", opts)
	out := make(chan WatchResponse, watchBuffer)
	ctx, cancel := c.watchCtx(ctx)
	w := &watcher{
		c:    c,
		op:   o,
		out:  out,
		next: o.rev,
		log:  c.log.With("watch_key", key, "watch_end", string(o.end)),
	}
	go func() {
		defer cancel()
		defer close(out)
		w.run(ctx)
	}()
	return out
}

// RequestProgress asks the server, on every watch stream of this client,
// for a progress notification: each watch then delivers a response without
// events whose revision says how far it has seen. Streams that are
// reconnecting at that moment are skipped. It returns the errors of the
// streams it could not ask.
func (c *Client) RequestProgress(ctx context.Context) error {
	c.watchMu.Lock()
	streams := make([]*watchStream, 0, len(c.streams))
	for s := range c.streams {
		streams = append(streams, s)
	}
	c.watchMu.Unlock()
	var errs []error
	for _, s := range streams {
		if err := ctx.Err(); err != nil {
			return err
		}
		errs = append(errs, s.send(&pb.WatchRequest{
			RequestUnion: &pb.WatchRequest_ProgressRequest{ProgressRequest: &pb.WatchProgressRequest{}},
		}))
	}
	return errors.Join(errs...)
}

// watchStream is one live watch stream, registered with the client so that
// RequestProgress can write to it.
type watchStream struct {
	mu sync.Mutex // serializes Send
	st *connect.BidiStreamForClient[pb.WatchRequest, pb.WatchResponse]
}

func (s *watchStream) send(req *pb.WatchRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.st.Send(req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// watcher is the state of one Watch call, owned by its goroutine.
type watcher struct {
	c   *Client
	op  Op
	out chan<- WatchResponse
	log *slog.Logger

	// next is the lowest revision not yet delivered (0 before the first
	// creation when watching "from now"): the revision to resume from, and
	// the threshold below which events are dropped as duplicates.
	next        int64
	createdSent bool
}

// errWatchDone ends run after a final response was delivered.
var errWatchDone = errors.New("watch done")

// run is the reconnect loop.
func (w *watcher) run(ctx context.Context) {
	bo := w.c.policy.NewBackOff()
	for {
		ep := w.c.eps.Pick()
		err := w.stream(ctx, w.c.conn(ep), bo.Reset)
		if ctx.Err() != nil || errors.Is(err, errWatchDone) {
			return
		}
		if isFinalWatchError(err) {
			w.deliver(ctx, WatchResponse{Err: fmt.Errorf("chainfire: watch on %s: %w", ep, err)})
			return
		}
		next := w.c.eps.Failed(ep)
		wait := bo.NextBackOff()
		w.log.Warn("chainfire: watch stream failed, resuming",
			"endpoint", ep, "next_endpoint", next, "resume_revision", w.next, "retry_in", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// isFinalWatchError reports whether a stream error is the server refusing
// the watch itself, which reconnecting cannot fix.
func isFinalWatchError(err error) bool {
	if !connect.IsWireError(err) {
		return false
	}
	switch connect.CodeOf(err) {
	case connect.CodeInvalidArgument, connect.CodeNotFound, connect.CodePermissionDenied,
		connect.CodeUnauthenticated, connect.CodeUnimplemented, connect.CodeFailedPrecondition,
		connect.CodeOutOfRange:
		return true
	}
	return false
}

// stream runs one watch stream until it fails, the context ends or a
// final response is delivered (errWatchDone).
func (w *watcher) stream(ctx context.Context, cn *conn, healthy func()) error {
	ctx, cancel := context.WithCancel(ctx)
	ws := &watchStream{st: cn.watch.Watch(ctx)}
	defer abortOnDone(ctx, cancel, ws.st)()
	create := &pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{
		CreateRequest: w.op.watchCreateRequest(w.next),
	}}
	if err := ws.send(create); err != nil {
		return err
	}
	w.c.watchMu.Lock()
	w.c.streams[ws] = struct{}{}
	w.c.watchMu.Unlock()
	defer func() {
		w.c.watchMu.Lock()
		delete(w.c.streams, ws)
		w.c.watchMu.Unlock()
	}()

	var watchID int64
	for {
		resp, err := ws.st.Receive()
		if err != nil {
			return streamErr(err)
		}
		switch {
		case resp.Canceled:
			return w.canceled(ctx, resp)
		case resp.Created:
			watchID = resp.WatchId
			if w.next == 0 {
				w.next = resp.GetHeader().GetRevision() + 1
			}
			healthy()
			if w.op.createdNotify && !w.createdSent {
				w.createdSent = true
				if !w.deliver(ctx, WatchResponse{Header: resp.Header, Created: true}) {
					return ctx.Err()
				}
			}
		case len(resp.Events) == 0:
			// Progress. Only the watch's own notifications move the resume
			// point: etcd before 3.5.8 could answer a RequestProgress
			// (watch id -1) ahead of events still queued for the watcher.
			if resp.WatchId == watchID && resp.GetHeader().GetRevision() >= w.next {
				w.next = resp.GetHeader().GetRevision() + 1
			}
			if !w.deliver(ctx, WatchResponse{Header: resp.Header}) {
				return ctx.Err()
			}
		default:
			events := make([]*mvccpb.Event, 0, len(resp.Events))
			for _, ev := range resp.Events {
				if ev.GetKv().GetModRevision() >= w.next {
					events = append(events, ev)
				}
			}
			if len(events) == 0 {
				continue // all already delivered before a reconnect
			}
			if !w.deliver(ctx, WatchResponse{Header: resp.Header, Events: events}) {
				return ctx.Err()
			}
			w.next = events[len(events)-1].GetKv().GetModRevision() + 1
		}
	}
}

// canceled handles a response that ends the watch on the server's side.
func (w *watcher) canceled(ctx context.Context, resp *pb.WatchResponse) error {
	if resp.CompactRevision != 0 {
		w.log.Info("chainfire: watch compacted, consumer must relist",
			"resume_revision", w.next, "compact_revision", resp.CompactRevision)
		w.deliver(ctx, WatchResponse{
			Header:          resp.Header,
			Relist:          true,
			CompactRevision: resp.CompactRevision,
			Err: fmt.Errorf("%w: resume revision %d, compacted at %d; relist and watch again",
				ErrCompacted, w.next, resp.CompactRevision),
		})
		return errWatchDone
	}
	reason := resp.CancelReason
	if reason == "" {
		reason = "no reason given"
	}
	w.deliver(ctx, WatchResponse{Header: resp.Header, Err: fmt.Errorf("%w: %s", ErrWatchCanceled, reason)})
	return errWatchDone
}

// deliver hands r to the consumer; false if ctx ended first.
func (w *watcher) deliver(ctx context.Context, r WatchResponse) bool {
	select {
	case w.out <- r:
		return true
	case <-ctx.Done():
		return false
	}
}
