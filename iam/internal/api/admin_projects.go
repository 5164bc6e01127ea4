package api

import (
	"context"

	"connectrpc.com/connect"

	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// CreateProject creates a project (audited as project.create).
func (a *Admin) CreateProject(ctx context.Context, req *connect.Request[iamv1.CreateProjectRequest]) (*connect.Response[iamv1.CreateProjectResponse], error) {
	p, err := a.store.CreateProject(ctx, req.Msg.GetProject())
	a.record(ctx, req.Peer(), "project.create", req.Msg.GetProject().GetName(), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ProjectServiceCreateProjectProcedure, err)
	}
	return connect.NewResponse(&iamv1.CreateProjectResponse{Project: p}), nil
}

// GetProject returns one project.
func (a *Admin) GetProject(ctx context.Context, req *connect.Request[iamv1.GetProjectRequest]) (*connect.Response[iamv1.GetProjectResponse], error) {
	p, err := a.store.GetProject(ctx, req.Msg.GetName())
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ProjectServiceGetProjectProcedure, err)
	}
	return connect.NewResponse(&iamv1.GetProjectResponse{Project: p}), nil
}

// ListProjects returns every project.
func (a *Admin) ListProjects(ctx context.Context, req *connect.Request[iamv1.ListProjectsRequest]) (*connect.Response[iamv1.ListProjectsResponse], error) {
	ps, err := a.store.ListProjects(ctx)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ProjectServiceListProjectsProcedure, err)
	}
	return connect.NewResponse(&iamv1.ListProjectsResponse{Projects: ps}), nil
}

// DeleteProject deletes a project; refused (FailedPrecondition, naming them) while
// bindings or service accounts refer to it (audited as project.delete).
func (a *Admin) DeleteProject(ctx context.Context, req *connect.Request[iamv1.DeleteProjectRequest]) (*connect.Response[iamv1.DeleteProjectResponse], error) {
	err := a.store.DeleteProject(ctx, req.Msg.GetName())
	a.record(ctx, req.Peer(), "project.delete", req.Msg.GetName(), err)
	if err != nil {
		return nil, a.adminError(ctx, iamv1connect.ProjectServiceDeleteProjectProcedure, err)
	}
	return connect.NewResponse(&iamv1.DeleteProjectResponse{}), nil
}
