package controller

import (
	"context"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// ListHostEvents returns the host state transitions (and failed fence commands) of one
// host or of every host, oldest first; events are kept 24 h (HAConfig.EventTTL).
func (s hostService) ListHostEvents(ctx context.Context, req *connect.Request[pb.ListHostEventsRequest]) (*connect.Response[pb.ListHostEventsResponse], error) {
	if h := req.Msg.Host; h != "" {
		if err := checkName("host", h); err != nil {
			return nil, err
		}
	}
	evs, err := s.c.st.ListHostEvents(ctx, req.Msg.Host)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.ListHostEventsResponse{Events: evs}), nil
}
