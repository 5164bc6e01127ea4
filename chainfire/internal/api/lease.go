package api

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

type leaseService struct{ *service }

func (s *leaseService) LeaseGrant(ctx context.Context, req *connect.Request[pb.LeaseGrantRequest]) (*connect.Response[pb.LeaseGrantResponse], error) {
	if err := mvcc.ValidateCommand(&peerv1.Command{Op: &peerv1.Command_LeaseGrant{LeaseGrant: req.Msg}}, s.n.Config().Limits); err != nil {
		return nil, toConnect(err)
	}
	resp, err := s.n.LeaseGrant(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	resp.Header = s.fill(resp.Header)
	return connect.NewResponse(resp), nil
}

func (s *leaseService) LeaseRevoke(ctx context.Context, req *connect.Request[pb.LeaseRevokeRequest]) (*connect.Response[pb.LeaseRevokeResponse], error) {
	res, err := s.propose(ctx, &peerv1.Command{Op: &peerv1.Command_LeaseRevoke{LeaseRevoke: req.Msg}})
	if err != nil {
		return nil, err
	}
	resp := res.GetLeaseRevoke()
	if resp == nil {
		resp = &pb.LeaseRevokeResponse{}
	}
	resp.Header = s.fill(resp.Header)
	return connect.NewResponse(resp), nil
}

// LeaseKeepAlive renews leases as the client asks; renewals are decided by the leader and
// never go through the raft log. An unknown lease is answered with TTL 0, as etcd does.
func (s *leaseService) LeaseKeepAlive(ctx context.Context, stream *connect.BidiStream[pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse]) error {
	reqs := make(chan *pb.LeaseKeepAliveRequest)
	errc := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Receive()
			if err != nil {
				errc <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		select {
		case req := <-reqs:
			ttl, err := s.n.LeaseRenew(ctx, req.ID)
			if errors.Is(err, mvcc.ErrLeaseNotFound) {
				ttl, err = 0, nil
			}
			if err != nil {
				return toConnect(err)
			}
			if err := stream.Send(&pb.LeaseKeepAliveResponse{Header: s.header(0), ID: req.ID, TTL: ttl}); err != nil {
				return err
			}
		case err := <-errc:
			if isEOF(err) || connect.CodeOf(err) == connect.CodeCanceled {
				return nil
			}
			return err
		case <-s.drain:
			return connect.NewError(connect.CodeUnavailable, errors.New("chainfire: member shutting down; keep alive on another member"))
		case <-ctx.Done():
			return nil
		}
	}
}

func (s *leaseService) LeaseTimeToLive(ctx context.Context, req *connect.Request[pb.LeaseTimeToLiveRequest]) (*connect.Response[pb.LeaseTimeToLiveResponse], error) {
	resp, err := s.n.LeaseTimeToLive(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	resp.Header = s.header(0)
	return connect.NewResponse(resp), nil
}

// LeaseLeases lists the live leases, linearizably.
func (s *leaseService) LeaseLeases(ctx context.Context, req *connect.Request[pb.LeaseLeasesRequest]) (*connect.Response[pb.LeaseLeasesResponse], error) {
	if err := s.n.LinearizableBarrier(ctx); err != nil {
		return nil, toConnect(err)
	}
	leases, err := s.n.Store().Leases()
	if err != nil {
		return nil, toConnect(err)
	}
	resp := &pb.LeaseLeasesResponse{Header: s.header(0)}
	for _, l := range leases {
		resp.Leases = append(resp.Leases, &pb.LeaseStatus{ID: l.ID})
	}
	return connect.NewResponse(resp), nil
}
