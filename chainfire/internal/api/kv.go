package api

import (
	"context"

	"connectrpc.com/connect"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

type kvService struct{ *service }

// Range serves reads: linearizable by default (a read barrier first), serializable from this
// member's state when asked.
func (s *kvService) Range(ctx context.Context, req *connect.Request[pb.RangeRequest]) (*connect.Response[pb.RangeResponse], error) {
	if err := mvcc.ValidateRange(req.Msg, s.n.Config().Limits); err != nil {
		return nil, toConnect(err)
	}
	if !req.Msg.Serializable {
		if err := s.n.LinearizableBarrier(ctx); err != nil {
			return nil, toConnect(err)
		}
	}
	resp, err := s.n.Store().Range(ctx, req.Msg)
	if err != nil {
		return nil, toConnect(err)
	}
	resp.Header = s.fill(resp.Header)
	return connect.NewResponse(resp), nil
}

func (s *kvService) Put(ctx context.Context, req *connect.Request[pb.PutRequest]) (*connect.Response[pb.PutResponse], error) {
	res, err := s.propose(ctx, &peerv1.Command{Op: &peerv1.Command_Put{Put: req.Msg}})
	if err != nil {
		return nil, err
	}
	resp := res.GetPut()
	resp.Header = s.fill(resp.Header)
	return connect.NewResponse(resp), nil
}

func (s *kvService) DeleteRange(ctx context.Context, req *connect.Request[pb.DeleteRangeRequest]) (*connect.Response[pb.DeleteRangeResponse], error) {
	res, err := s.propose(ctx, &peerv1.Command{Op: &peerv1.Command_DeleteRange{DeleteRange: req.Msg}})
	if err != nil {
		return nil, err
	}
	resp := res.GetDeleteRange()
	resp.Header = s.fill(resp.Header)
	return connect.NewResponse(resp), nil
}

func (s *kvService) Txn(ctx context.Context, req *connect.Request[pb.TxnRequest]) (*connect.Response[pb.TxnResponse], error) {
	res, err := s.propose(ctx, &peerv1.Command{Op: &peerv1.Command_Txn{Txn: req.Msg}})
	if err != nil {
		return nil, err
	}
	resp := res.GetTxn()
	resp.Header = s.fill(resp.Header)
	fillTxnHeaders(s.service, resp)
	return connect.NewResponse(resp), nil
}

// fillTxnHeaders completes the headers of the nested responses, as etcd does.
func fillTxnHeaders(s *service, resp *pb.TxnResponse) {
	for _, r := range resp.Responses {
		switch v := r.Response.(type) {
		case *pb.ResponseOp_ResponseRange:
			v.ResponseRange.Header = s.fill(v.ResponseRange.Header)
		case *pb.ResponseOp_ResponsePut:
			v.ResponsePut.Header = s.fill(v.ResponsePut.Header)
		case *pb.ResponseOp_ResponseDeleteRange:
			v.ResponseDeleteRange.Header = s.fill(v.ResponseDeleteRange.Header)
		case *pb.ResponseOp_ResponseTxn:
			v.ResponseTxn.Header = s.fill(v.ResponseTxn.Header)
			fillTxnHeaders(s, v.ResponseTxn)
		}
	}
}

func (s *kvService) Compact(ctx context.Context, req *connect.Request[pb.CompactionRequest]) (*connect.Response[pb.CompactionResponse], error) {
	res, err := s.propose(ctx, &peerv1.Command{Op: &peerv1.Command_Compact{Compact: req.Msg}})
	if err != nil {
		return nil, err
	}
	resp := res.GetCompact()
	if resp == nil {
		resp = &pb.CompactionResponse{}
	}
	if req.Msg.Physical {
		// As etcd: answer once this member has removed the compacted history.
		if err := s.n.Store().WaitCompaction(ctx, req.Msg.Revision); err != nil {
			return nil, toConnect(err)
		}
	}
	resp.Header = s.fill(resp.Header)
	return connect.NewResponse(resp), nil
}

// propose validates a command and replicates it; errors come back as RPC errors.
func (s *service) propose(ctx context.Context, cmd *peerv1.Command) (*peerv1.Result, error) {
	if err := mvcc.ValidateCommand(cmd, s.n.Config().Limits); err != nil {
		return nil, toConnect(err)
	}
	res, err := s.n.Propose(ctx, cmd)
	if err != nil {
		return nil, toConnect(err)
	}
	return res, nil
}
