package api

import (
	"context"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// Keys serves KeyService over a keys.Manager.
type Keys struct {
	m     *keys.Manager
	audit *audit.Logger
}

// NewKeys returns the KeyService handler.
func NewKeys(m *keys.Manager, a *audit.Logger) *Keys {
	if a == nil {
		a = audit.New(nil)
	}
	return &Keys{m: m, audit: a}
}

var _ iamv1connect.KeyServiceHandler = (*Keys)(nil)

// ListKeys implements KeyService.ListKeys: the published keys, public parts only.
func (k *Keys) ListKeys(context.Context, *connect.Request[iamv1.ListKeysRequest]) (*connect.Response[iamv1.ListKeysResponse], error) {
	return connect.NewResponse(&iamv1.ListKeysResponse{Keys: k.m.Keys()}), nil
}

// RotateKey implements KeyService.RotateKey: a new pending key (or the one pending).
func (k *Keys) RotateKey(ctx context.Context, req *connect.Request[iamv1.RotateKeyRequest]) (*connect.Response[iamv1.RotateKeyResponse], error) {
	actor := ""
	if id, ok := auth.IdentityFromContext(ctx); ok {
		actor = id.Subject
	}
	key, err := k.m.Rotate(ctx)
	ev := audit.Event{Action: "key.rotate.request", Actor: actor, Source: peerHost(req.Peer().Addr)}
	if err != nil {
		ev.Outcome, ev.Reason = audit.Failure, err.Error()
		k.audit.Record(ctx, ev)
		return nil, tokenConnectError(err)
	}
	ev.Target = key.Kid
	k.audit.Record(ctx, ev)
	return connect.NewResponse(&iamv1.RotateKeyResponse{Key: key}), nil
}
