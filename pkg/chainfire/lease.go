package chainfire

import (
	"context"
	"errors"
	"fmt"
	"io"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

// Grant creates a lease of ttl seconds and returns it (its ID in ID). It is
// a write.
func (c *Client) Grant(ctx context.Context, ttl int64) (*pb.LeaseGrantResponse, error) {
	req := &pb.LeaseGrantRequest{TTL: ttl}
	var resp *pb.LeaseGrantResponse
	err := c.do(ctx, write, "lease grant", func(ctx context.Context, cn *conn) error {
		r, err := cn.lease.LeaseGrant(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// Revoke deletes lease id and every key attached to it. It is a write.
func (c *Client) Revoke(ctx context.Context, id int64) (*pb.LeaseRevokeResponse, error) {
	req := &pb.LeaseRevokeRequest{ID: id}
	var resp *pb.LeaseRevokeResponse
	err := c.do(ctx, write, "lease revoke", func(ctx context.Context, cn *conn) error {
		r, err := cn.lease.LeaseRevoke(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// TimeToLive returns lease id's remaining and granted TTL, and with
// withKeys the keys attached to it. A lease that does not exist has TTL -1.
// It is a read.
func (c *Client) TimeToLive(ctx context.Context, id int64, withKeys bool) (*pb.LeaseTimeToLiveResponse, error) {
	req := &pb.LeaseTimeToLiveRequest{ID: id, Keys: withKeys}
	var resp *pb.LeaseTimeToLiveResponse
	err := c.do(ctx, read, "lease timetolive", func(ctx context.Context, cn *conn) error {
		r, err := cn.lease.LeaseTimeToLive(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// Leases lists every lease. It is a read.
func (c *Client) Leases(ctx context.Context) (*pb.LeaseLeasesResponse, error) {
	var resp *pb.LeaseLeasesResponse
	err := c.do(ctx, read, "lease leases", func(ctx context.Context, cn *conn) error {
		r, err := cn.lease.LeaseLeases(ctx, connect.NewRequest(&pb.LeaseLeasesRequest{}))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// KeepAliveOnce renews lease id once and returns its new TTL. It fails with
// [ErrLeaseNotFound] if the lease does not exist (any more). Renewing is
// idempotent, so it is retried like a read.
func (c *Client) KeepAliveOnce(ctx context.Context, id int64) (*pb.LeaseKeepAliveResponse, error) {
	var resp *pb.LeaseKeepAliveResponse
	err := c.do(ctx, read, "lease keepalive", func(ctx context.Context, cn *conn) error {
		r, err := keepAliveOnce(ctx, cn, id)
		if err != nil {
			return err
		}
		resp = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	if resp.TTL <= 0 {
		return nil, fmt.Errorf("%w: %x", ErrLeaseNotFound, id)
	}
	return resp, nil
}

// keepAliveOnce sends one keepalive on a fresh stream and waits for its
// answer.
func keepAliveOnce(ctx context.Context, cn *conn, id int64) (*pb.LeaseKeepAliveResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	st := cn.lease.LeaseKeepAlive(ctx)
	defer abortOnDone(ctx, cancel, st)()
	if err := st.Send(&pb.LeaseKeepAliveRequest{ID: id}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	resp, err := st.Receive()
	if err != nil {
		return nil, streamErr(err)
	}
	return resp, nil
}
