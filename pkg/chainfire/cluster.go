package chainfire

import (
	"context"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

// MemberList lists the cluster's members. It is a read.
func (c *Client) MemberList(ctx context.Context) (*pb.MemberListResponse, error) {
	var resp *pb.MemberListResponse
	err := c.do(ctx, read, "member list", func(ctx context.Context, cn *conn) error {
		r, err := cn.cluster.MemberList(ctx, connect.NewRequest(&pb.MemberListRequest{Linearizable: true}))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// MemberAdd adds a voting member reachable by its peers at peerURLs. The
// new member must then be started with the returned member list as its
// initial cluster. It is a write.
func (c *Client) MemberAdd(ctx context.Context, peerURLs []string) (*pb.MemberAddResponse, error) {
	return c.memberAdd(ctx, peerURLs, false)
}

// MemberAddAsLearner adds a non-voting member (a learner) that replicates
// the log and can later be promoted with MemberPromote. It is a write.
func (c *Client) MemberAddAsLearner(ctx context.Context, peerURLs []string) (*pb.MemberAddResponse, error) {
	return c.memberAdd(ctx, peerURLs, true)
}

func (c *Client) memberAdd(ctx context.Context, peerURLs []string, learner bool) (*pb.MemberAddResponse, error) {
	req := &pb.MemberAddRequest{PeerURLs: peerURLs, IsLearner: learner}
	var resp *pb.MemberAddResponse
	err := c.do(ctx, write, "member add", func(ctx context.Context, cn *conn) error {
		r, err := cn.cluster.MemberAdd(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// MemberRemove removes member id from the cluster. It is a write.
func (c *Client) MemberRemove(ctx context.Context, id uint64) (*pb.MemberRemoveResponse, error) {
	req := &pb.MemberRemoveRequest{ID: id}
	var resp *pb.MemberRemoveResponse
	err := c.do(ctx, write, "member remove", func(ctx context.Context, cn *conn) error {
		r, err := cn.cluster.MemberRemove(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// MemberUpdate changes the peer URLs of member id. It is a write.
func (c *Client) MemberUpdate(ctx context.Context, id uint64, peerURLs []string) (*pb.MemberUpdateResponse, error) {
	req := &pb.MemberUpdateRequest{ID: id, PeerURLs: peerURLs}
	var resp *pb.MemberUpdateResponse
	err := c.do(ctx, write, "member update", func(ctx context.Context, cn *conn) error {
		r, err := cn.cluster.MemberUpdate(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// MemberPromote makes learner id a voting member. It is a write.
func (c *Client) MemberPromote(ctx context.Context, id uint64) (*pb.MemberPromoteResponse, error) {
	req := &pb.MemberPromoteRequest{ID: id}
	var resp *pb.MemberPromoteResponse
	err := c.do(ctx, write, "member promote", func(ctx context.Context, cn *conn) error {
		r, err := cn.cluster.MemberPromote(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}
