package api

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

type clusterService struct{ *service }

func (s *clusterService) MemberAdd(ctx context.Context, req *connect.Request[pb.MemberAddRequest]) (*connect.Response[pb.MemberAddResponse], error) {
	if len(req.Msg.PeerURLs) == 0 {
		return nil, invalid("member_add.peer_urls is empty")
	}
	resp, err := s.n.MemberAdd(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	resp.Header = s.header(0)
	return connect.NewResponse(resp), nil
}

func (s *clusterService) MemberRemove(ctx context.Context, req *connect.Request[pb.MemberRemoveRequest]) (*connect.Response[pb.MemberRemoveResponse], error) {
	members, err := s.n.MemberRemove(ctx, req.Msg.ID)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.MemberRemoveResponse{Header: s.header(0), Members: members}), nil
}

func (s *clusterService) MemberUpdate(context.Context, *connect.Request[pb.MemberUpdateRequest]) (*connect.Response[pb.MemberUpdateResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("chainfire: member update is not supported; remove the member and add it with its new peer URLs"))
}

func (s *clusterService) MemberList(ctx context.Context, req *connect.Request[pb.MemberListRequest]) (*connect.Response[pb.MemberListResponse], error) {
	if req.Msg.Linearizable {
		if err := s.n.LinearizableBarrier(ctx); err != nil {
			return nil, toConnect(err)
		}
	}
	members, err := s.n.MemberList(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.MemberListResponse{Header: s.header(0), Members: members}), nil
}

func (s *clusterService) MemberPromote(ctx context.Context, req *connect.Request[pb.MemberPromoteRequest]) (*connect.Response[pb.MemberPromoteResponse], error) {
	members, err := s.n.MemberPromote(ctx, req.Msg.ID)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.MemberPromoteResponse{Header: s.header(0), Members: members}), nil
}
