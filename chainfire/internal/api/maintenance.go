package api

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

type maintenanceService struct{ *service }

// Alarm reports no alarms: ChainFire has no space quota alarm yet.
func (s *maintenanceService) Alarm(ctx context.Context, req *connect.Request[pb.AlarmRequest]) (*connect.Response[pb.AlarmResponse], error) {
	return connect.NewResponse(&pb.AlarmResponse{Header: s.header(0)}), nil
}

func (s *maintenanceService) Status(ctx context.Context, req *connect.Request[pb.StatusRequest]) (*connect.Response[pb.StatusResponse], error) {
	last, applied := s.n.RaftIndexes()
	resp := &pb.StatusResponse{
		Header:           s.header(0),
		Version:          EtcdVersion,
		DbSize:           s.n.Store().DBSize(),
		DbSizeInUse:      s.n.Store().DBSize(),
		Leader:           s.n.LeaderID(),
		RaftIndex:        last,
		RaftTerm:         s.n.Term(),
		RaftAppliedIndex: applied,
	}
	if resp.Leader == 0 {
		resp.Errors = append(resp.Errors, "etcdserver: no leader")
	}
	return connect.NewResponse(resp), nil
}

func (s *maintenanceService) Defragment(ctx context.Context, req *connect.Request[pb.DefragmentRequest]) (*connect.Response[pb.DefragmentResponse], error) {
	if err := s.n.Store().Defragment(ctx); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.DefragmentResponse{Header: s.header(0)}), nil
}

func (s *maintenanceService) Hash(ctx context.Context, req *connect.Request[pb.HashRequest]) (*connect.Response[pb.HashResponse], error) {
	h, _, _, err := s.n.Store().HashKV(0)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.HashResponse{Header: s.header(0), Hash: h}), nil
}

func (s *maintenanceService) HashKV(ctx context.Context, req *connect.Request[pb.HashKVRequest]) (*connect.Response[pb.HashKVResponse], error) {
	h, rev, compact, err := s.n.Store().HashKV(req.Msg.Revision)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.HashKVResponse{Header: s.header(rev), Hash: h, CompactRevision: compact, HashRevision: rev}), nil
}

// Snapshot streams a consistent image of this member's store (ChainFire's snapshot format,
// restorable with `chainfire snapshot restore`; not a bbolt file as etcd's is).
func (s *maintenanceService) Snapshot(ctx context.Context, req *connect.Request[pb.SnapshotRequest], stream *connect.ServerStream[pb.SnapshotResponse]) error {
	snap, err := s.n.Store().Snapshot()
	if err != nil {
		return toConnect(err)
	}
	pr, pw := io.Pipe()
	go func() {
		defer snap.Release()
		_, err := snap.WriteTo(pw)
		pw.CloseWithError(err)
	}()
	defer pr.Close()
	buf := make([]byte, 64<<10)
	hdr := s.header(0)
	for {
		n, err := io.ReadFull(pr, buf)
		if n > 0 {
			if serr := stream.Send(&pb.SnapshotResponse{Header: hdr, Blob: append([]byte(nil), buf[:n]...), Version: EtcdVersion}); serr != nil {
				return serr
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return toConnect(err)
		}
	}
}

func (s *maintenanceService) MoveLeader(ctx context.Context, req *connect.Request[pb.MoveLeaderRequest]) (*connect.Response[pb.MoveLeaderResponse], error) {
	if err := s.n.MoveLeader(ctx, req.Msg.TargetID); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.MoveLeaderResponse{Header: s.header(0)}), nil
}

func (s *maintenanceService) Downgrade(context.Context, *connect.Request[pb.DowngradeRequest]) (*connect.Response[pb.DowngradeResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errors.New("chainfire: downgrade is not supported"))
}
