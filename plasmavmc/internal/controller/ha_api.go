package controller

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// Placeholders until the HA manager lands (issue 7): the API answers Unimplemented.

var errHANotYet = errors.New("not implemented yet")

func (s vmService) MigrateVM(context.Context, *connect.Request[pb.MigrateVMRequest]) (*connect.Response[pb.MigrateVMResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errHANotYet)
}

func (s hostService) DrainHost(context.Context, *connect.Request[pb.DrainHostRequest]) (*connect.Response[pb.DrainHostResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errHANotYet)
}

func (s hostService) UndrainHost(context.Context, *connect.Request[pb.UndrainHostRequest]) (*connect.Response[pb.UndrainHostResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errHANotYet)
}

func (s hostService) ListHostEvents(context.Context, *connect.Request[pb.ListHostEventsRequest]) (*connect.Response[pb.ListHostEventsResponse], error) {
	return nil, connect.NewError(connect.CodeUnimplemented, errHANotYet)
}
