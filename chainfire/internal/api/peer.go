package api

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/chainfire/internal/node"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
)

// peerService answers other members: only the leader serves it (FailedPrecondition
// otherwise, so the caller looks the leader up again).
type peerService struct{ *service }

func (s *peerService) Propose(ctx context.Context, req *connect.Request[peerv1.ProposeRequest]) (*connect.Response[peerv1.ProposeResponse], error) {
	if req.Msg.Command == nil {
		return nil, invalid("propose.command is missing")
	}
	if node.ForwardExpired(req.Header(), time.Now()) {
		// The forwarding member has given up on it (and told its client the outcome is
		// unknown): never apply it late.
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("chainfire: forwarded proposal arrived after its deadline; not applied"))
	}
	res, err := s.n.ProposeLocal(ctx, req.Msg.Command)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&peerv1.ProposeResponse{Result: res}), nil
}

func (s *peerService) ReadIndex(ctx context.Context, req *connect.Request[peerv1.ReadIndexRequest]) (*connect.Response[peerv1.ReadIndexResponse], error) {
	idx, term, err := s.n.ReadIndex(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&peerv1.ReadIndexResponse{Index: idx, Term: term}), nil
}

func (s *peerService) LeaseRenew(ctx context.Context, req *connect.Request[peerv1.LeaseRenewRequest]) (*connect.Response[peerv1.LeaseRenewResponse], error) {
	ttl, err := s.n.LeaseRenewLocal(req.Msg.Id)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&peerv1.LeaseRenewResponse{Ttl: ttl}), nil
}
