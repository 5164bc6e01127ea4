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

// Status returns the status of the member at endpoint (leader, raft term
// and index, database size, version). endpoint need not be one of the
// client's endpoints; "" means any of them, with failover. Transient
// failures are retried on that same endpoint within ctx.
func (c *Client) Status(ctx context.Context, endpoint string) (*pb.StatusResponse, error) {
	var resp *pb.StatusResponse
	err := c.doOn(ctx, read, "status", endpoint, func(ctx context.Context, cn *conn) error {
		r, err := cn.maintenance.Status(ctx, connect.NewRequest(&pb.StatusRequest{}))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// HashKV returns the hash of the key-value store of the member at endpoint
// up to revision rev (0 = latest), for comparing members. It is a read.
func (c *Client) HashKV(ctx context.Context, endpoint string, rev int64) (*pb.HashKVResponse, error) {
	var resp *pb.HashKVResponse
	err := c.doOn(ctx, read, "hashkv", endpoint, func(ctx context.Context, cn *conn) error {
		r, err := cn.maintenance.HashKV(ctx, connect.NewRequest(&pb.HashKVRequest{Revision: rev}))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// Defragment asks the member at endpoint to compact its storage files.
// Repeating it is harmless, so it is retried like a read.
func (c *Client) Defragment(ctx context.Context, endpoint string) (*pb.DefragmentResponse, error) {
	var resp *pb.DefragmentResponse
	err := c.doOn(ctx, read, "defragment", endpoint, func(ctx context.Context, cn *conn) error {
		r, err := cn.maintenance.Defragment(ctx, connect.NewRequest(&pb.DefragmentRequest{}))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// MoveLeader transfers leadership to member targetID. The request goes to
// the current leader, found by asking every endpoint's Status (etcd
// accepts it only there); when no endpoint names a leader it fails with
// [ErrNoLeader]. It is a write.
func (c *Client) MoveLeader(ctx context.Context, targetID uint64) (*pb.MoveLeaderResponse, error) {
	leader, err := c.leaderEndpoint(ctx)
	if err != nil {
		return nil, err
	}
	var resp *pb.MoveLeaderResponse
	err = c.doOn(ctx, write, "move leader", leader, func(ctx context.Context, cn *conn) error {
		r, err := cn.maintenance.MoveLeader(ctx, connect.NewRequest(&pb.MoveLeaderRequest{TargetID: targetID}))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// leaderEndpoint asks every endpoint's status in parallel and returns the
// first one that reports being the leader, without waiting for the others.
func (c *Client) leaderEndpoint(ctx context.Context) (string, error) {
	eps := c.eps.All()
	type answer struct {
		ep     string
		leader bool
		err    error
	}
	ctx, cancel := context.WithTimeout(ctx, c.statusTimeout())
	defer cancel()
	answers := make(chan answer, len(eps)) // buffered: late answers never block
	for _, ep := range eps {
		go func() {
			st, err := c.Status(ctx, ep)
			a := answer{ep: ep, err: err}
			if err == nil {
				a.leader = st.Leader != 0 && st.Leader == st.GetHeader().GetMemberId()
			}
			answers <- a
		}()
	}
	var errs []error
	for range eps {
		a := <-answers
		if a.leader {
			return a.ep, nil
		}
		if a.err != nil {
			errs = append(errs, a.err)
		}
	}
	return "", fmt.Errorf("%w (errors: %w)", ErrNoLeader, errors.Join(errs...))
}

// statusTimeout bounds one endpoint's status probe.
func (c *Client) statusTimeout() time.Duration {
	if c.cfg.RequestTimeout > 0 {
		return c.cfg.RequestTimeout
	}
	return 2 * time.Second
}

// Snapshot streams a consistent copy of a member's whole database (in the
// server's snapshot format, which `snapshot restore` reads). The caller
// owns the returned reader and must Close it; closing early aborts the
// stream. Opening is retried like a read; once data flows, a broken stream
// makes Read fail — with [ErrSnapshotTruncated] if the server ended it
// before the last byte — and the caller starts over.
func (c *Client) Snapshot(ctx context.Context) (io.ReadCloser, error) {
	var sr *snapshotReader
	err := c.do(ctx, read, "snapshot", func(actx context.Context, cn *conn) error {
		// The stream outlives this attempt; it gets its own cancel.
		sctx, cancel := context.WithCancel(ctx)
		st, err := cn.maintenance.Snapshot(sctx, connect.NewRequest(&pb.SnapshotRequest{}))
		if err != nil {
			cancel()
			return err
		}
		r := &snapshotReader{st: st, cancel: cancel, endpoint: cn.url}
		// Wait for the first message, within the attempt's deadline, so
		// that a member that cannot serve fails this attempt and the next
		// endpoint is tried.
		stop := context.AfterFunc(actx, cancel)
		err = r.fill()
		if !stop() && err == nil {
			err = actx.Err()
		}
		if err != nil {
			r.Close()
			return err
		}
		sr = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	return sr, nil
}

// snapshotReader adapts the snapshot stream to io.Reader. Not safe for
// concurrent use.
type snapshotReader struct {
	st       *connect.ServerStreamForClient[pb.SnapshotResponse]
	cancel   context.CancelFunc
	endpoint string
	buf      []byte
	done     bool  // the server sent the last chunk (remaining_bytes 0)
	err      error // sticky error
}

// fill receives the next chunk into buf.
func (r *snapshotReader) fill() error {
	if r.err != nil {
		return r.err
	}
	if r.done {
		r.err = io.EOF
		return r.err
	}
	if !r.st.Receive() {
		if err := r.st.Err(); err != nil {
			r.err = fmt.Errorf("chainfire: snapshot from %s: %w", r.endpoint, err)
		} else {
			r.err = fmt.Errorf("%w (from %s)", ErrSnapshotTruncated, r.endpoint)
		}
		return r.err
	}
	m := r.st.Msg()
	r.buf = m.Blob
	if m.RemainingBytes == 0 {
		r.done = true
	}
	return nil
}

// Read implements io.Reader.
func (r *snapshotReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// Close aborts the stream if unfinished and releases it.
func (r *snapshotReader) Close() error {
	r.cancel()
	_ = r.st.Close()
	return nil
}
