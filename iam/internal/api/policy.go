package api

import (
	"context"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/policy"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// Policy serves PolicyService over a policy.View.
type Policy struct {
	v *policy.View
}

// NewPolicy returns the PolicyService handler.
func NewPolicy(v *policy.View) *Policy { return &Policy{v: v} }

var _ iamv1connect.PolicyServiceHandler = (*Policy)(nil)

// WatchPolicy implements PolicyService.WatchPolicy. The stream lives until the client
// cancels it; the server ends it with Unavailable when draining or ResourceExhausted
// when the client fell behind (resume either way).
func (p *Policy) WatchPolicy(ctx context.Context, req *connect.Request[iamv1.WatchPolicyRequest], st *connect.ServerStream[iamv1.WatchPolicyResponse]) error {
	err := p.v.Stream(ctx, req.Msg.GetAfterRevision(), st.Send)
	if ctx.Err() != nil {
		return nil
	}
	return tokenConnectError(err)
}
