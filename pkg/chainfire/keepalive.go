package chainfire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

// minKeepAliveInterval bounds how often KeepAlive renews a lease.
const minKeepAliveInterval = 100 * time.Millisecond

// KeepAlive keeps lease id alive until ctx ends, renewing it every third of
// its TTL over a keepalive stream.
//
// It first renews the lease once, synchronously, like KeepAliveOnce, and
// fails if that fails: with [ErrLeaseNotFound], or — since that renewal is
// retried within ctx — with the context's error when ctx ends before any
// endpoint answers (call KeepAliveOnce with a shorter context first to bound
// that wait). Then a goroutine owned by the call renews in the
// background: when the stream fails (or an answer is late by a whole
// renewal interval) it reconnects, with backoff, to the next endpoint. Each
// answer is offered on the returned channel, which has room for one: a
// consumer that falls behind misses intermediate answers, never delays the
// renewals. The channel closes when ctx ends, the client is closed, or the
// lease is gone (the server answers TTL <= 0, for example after a revoke or
// after the lease expired while no member could be reached).
func (c *Client) KeepAlive(ctx context.Context, id int64) (<-chan *pb.LeaseKeepAliveResponse, error) {
	first, err := c.KeepAliveOnce(ctx, id)
	if err != nil {
		return nil, err
	}
	ch := make(chan *pb.LeaseKeepAliveResponse, 1)
	ch <- first
	ctx, cancel := c.watchCtx(ctx)
	go func() {
		defer cancel()
		defer close(ch)
		c.keepAliveLoop(ctx, id, first.TTL, ch)
	}()
	return ch, nil
}

// keepAliveLoop renews lease id until ctx ends or the lease is gone.
func (c *Client) keepAliveLoop(ctx context.Context, id, ttl int64, ch chan *pb.LeaseKeepAliveResponse) {
	log := c.log.With("lease_id", fmt.Sprintf("%x", id))
	bo := c.policy.NewBackOff()
	for {
		ep := c.eps.Pick()
		err := c.keepAliveStream(ctx, c.conn(ep), id, &ttl, ch, bo.Reset)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrLeaseNotFound) ||
			(connect.IsWireError(err) && connect.CodeOf(err) == connect.CodeNotFound) {
			log.Info("chainfire: lease gone, keepalive stops", "endpoint", ep)
			return
		}
		next := c.eps.Failed(ep)
		wait := bo.NextBackOff()
		log.Warn("chainfire: keepalive stream failed, reconnecting",
			"endpoint", ep, "next_endpoint", next, "retry_in", wait, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// keepAliveStream renews the lease over one stream until it fails. It
// calls healthy after each answer so the caller's backoff restarts.
func (c *Client) keepAliveStream(ctx context.Context, cn *conn, id int64, ttl *int64,
	ch chan *pb.LeaseKeepAliveResponse, healthy func()) error {
	ctx, cancel := context.WithCancel(ctx)
	st := cn.lease.LeaseKeepAlive(ctx)
	defer abortOnDone(ctx, cancel, st)()

	type result struct {
		resp *pb.LeaseKeepAliveResponse
		err  error
	}
	answers := make(chan result, 1)
	go func() {
		for {
			r, err := st.Receive()
			select {
			case answers <- result{r, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()

	interval := func() time.Duration {
		return max(time.Duration(*ttl)*time.Second/3, minKeepAliveInterval)
	}
	send := func() error {
		if err := st.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		// On io.EOF the stream is broken; Receive reports why.
		return nil
	}
	if err := send(); err != nil {
		return err
	}
	late := time.NewTimer(interval())
	defer late.Stop()
	var nextSend <-chan time.Time
	waiting := true
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-late.C:
			if waiting {
				return connect.NewError(connect.CodeDeadlineExceeded,
					fmt.Errorf("no keepalive answer within %s", interval()))
			}
		case r := <-answers:
			if r.err != nil {
				return streamErr(r.err)
			}
			if r.resp.TTL <= 0 {
				return fmt.Errorf("%w: %x", ErrLeaseNotFound, id)
			}
			healthy()
			*ttl = r.resp.TTL
			offer(ch, r.resp)
			waiting = false
			nextSend = time.After(interval())
		case <-nextSend:
			nextSend = nil
			if err := send(); err != nil {
				return err
			}
			waiting = true
			late.Reset(interval())
		}
	}
}

// offer puts r on ch (capacity one, single sender), replacing an answer the
// consumer has not taken yet.
func offer(ch chan *pb.LeaseKeepAliveResponse, r *pb.LeaseKeepAliveResponse) {
	select {
	case ch <- r:
		return
	default:
	}
	select {
	case <-ch:
	default:
	}
	ch <- r
}
