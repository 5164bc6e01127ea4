package controller

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// hostService implements plasmavmcv1connect.HostServiceHandler. Hosts are fleet-wide:
// any caller holding host.list / host.get sees them all.
type hostService struct{ c *Controller }

func (s hostService) ListHosts(ctx context.Context, _ *connect.Request[pb.ListHostsRequest]) (*connect.Response[pb.ListHostsResponse], error) {
	hosts, _, err := s.c.st.ListHosts(ctx)
	if err != nil {
		return nil, toConnect(err)
	}
	out := &pb.ListHostsResponse{}
	for _, h := range hosts {
		out.Hosts = append(out.Hosts, h.Host)
	}
	return connect.NewResponse(out), nil
}

func (s hostService) GetHost(ctx context.Context, req *connect.Request[pb.GetHostRequest]) (*connect.Response[pb.GetHostResponse], error) {
	if err := checkName("name", req.Msg.Name); err != nil {
		return nil, err
	}
	h, err := s.c.st.GetHost(ctx, req.Msg.Name)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.GetHostResponse{Host: h.Host}), nil
}

// imageService implements plasmavmcv1connect.ImageServiceHandler. Images are
// fleet-wide, like the pools that hold them.
type imageService struct{ c *Controller }

func (s imageService) RegisterImage(ctx context.Context, req *connect.Request[pb.RegisterImageRequest]) (*connect.Response[pb.RegisterImageResponse], error) {
	img := req.Msg.Image
	if err := checkImage(img); err != nil {
		return nil, err
	}
	img.CreateTime = s.c.st.Now()
	if err := s.c.st.PutImage(ctx, img); err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.RegisterImageResponse{Image: img}), nil
}

func (s imageService) ListImages(ctx context.Context, req *connect.Request[pb.ListImagesRequest]) (*connect.Response[pb.ListImagesResponse], error) {
	if p := req.Msg.Pool; p != "" {
		if err := checkPool("pool", p); err != nil {
			return nil, err
		}
	}
	imgs, err := s.c.st.ListImages(ctx, req.Msg.Pool)
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.ListImagesResponse{Images: imgs}), nil
}

// operationService implements plasmavmcv1connect.OperationServiceHandler. An operation
// is visible to whoever sees its project (NotFound otherwise).
type operationService struct{ c *Controller }

func (s operationService) GetOperation(ctx context.Context, req *connect.Request[pb.GetOperationRequest]) (*connect.Response[pb.GetOperationResponse], error) {
	if err := checkID("id", req.Msg.Id); err != nil {
		return nil, err
	}
	sc, err := callerScope(ctx)
	if err != nil {
		return nil, err
	}
	op, _, err := s.c.st.GetOperation(ctx, req.Msg.Id)
	if err == nil && !sc.sees(op.Project) {
		err = fmt.Errorf("%w: operation %q", state.ErrNotFound, req.Msg.Id)
	}
	if err != nil {
		return nil, toConnect(err)
	}
	return connect.NewResponse(&pb.GetOperationResponse{Operation: op}), nil
}

func (s operationService) ListOperations(ctx context.Context, req *connect.Request[pb.ListOperationsRequest]) (*connect.Response[pb.ListOperationsResponse], error) {
	if id := req.Msg.VmId; id != "" {
		if err := checkID("vm_id", id); err != nil {
			return nil, err
		}
	}
	sc, err := callerScope(ctx)
	if err != nil {
		return nil, err
	}
	ops, err := s.c.st.ListOperations(ctx, req.Msg.VmId)
	if err != nil {
		return nil, toConnect(err)
	}
	out := &pb.ListOperationsResponse{}
	for _, op := range ops {
		if sc.sees(op.Project) {
			out.Operations = append(out.Operations, op)
		}
	}
	return connect.NewResponse(out), nil
}

var _ = errors.New
