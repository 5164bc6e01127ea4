package server

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"plasmacloud.dev/iam/internal/api"
	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

type iamv1WatchPolicyResponse = iamv1.WatchPolicyResponse

// Permissions is IAM's procedure → permission table: the admin services' and the token,
// key and policy procedures'.
func Permissions() map[string]string {
	p := maps.Clone(api.AdminPermissions())
	p[iamv1connect.KeyServiceListKeysProcedure] = "iam.key.list"
	p[iamv1connect.KeyServiceRotateKeyProcedure] = "iam.key.rotate"
	p[iamv1connect.PolicyServiceWatchPolicyProcedure] = "iam.policy.watch"
	return p
}

// PublicProcedures need no token: Token carries credentials; Revoke authorizes in its
// handler (a refresh or access token by possession, anything else iam.token.revoke).
func PublicProcedures() []string {
	return []string{iamv1connect.TokenServiceTokenProcedure, iamv1connect.TokenServiceRevokeProcedure}
}

// keySource adapts keys.Manager to auth.KeySource: IAM verifies tokens against its own
// published keys, in memory.
type keySource struct{ m *keys.Manager }

func (k keySource) Key(ctx context.Context, kid string) (auth.PublicKey, error) {
	raw, alg, err := k.m.RawPublicKey(ctx, kid)
	if errors.Is(err, keys.ErrUnknownKey) {
		return auth.PublicKey{}, fmt.Errorf("%w: kid %q", auth.ErrUnknownKey, kid)
	}
	if err != nil {
		return auth.PublicKey{}, fmt.Errorf("%w: %v", auth.ErrKeysUnavailable, err)
	}
	return auth.PublicKey{KID: kid, Alg: alg, Key: raw}, nil
}
