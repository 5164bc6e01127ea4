// Package api holds IAM's edges: Connect handlers (TokenService, KeyService, PolicyService
// here; the admin services in admin*.go), the OAuth 2.0 endpoints /oauth2/token and
// /oauth2/revoke, and /.well-known/{jwks.json,openid-configuration}. Errors are mapped to
// Connect codes and OAuth error codes here, once.
package api

import (
	"context"
	"fmt"
	"net"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/token"
	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// PermTokenRevoke is the permission revoking anything but one's own tokens needs.
const PermTokenRevoke = "iam.token.revoke"

// AuthorizeFunc authorizes the caller in ctx (its auth.Identity) for a permission;
// pkg/auth's (*Policy).AuthorizeContext fits.
type AuthorizeFunc func(ctx context.Context, permission string) error

// Tokens serves TokenService and the OAuth endpoints over one token.Service.
type Tokens struct {
	svc       *token.Service
	authorize AuthorizeFunc
}

// NewTokens returns the token edges. authorize is consulted for revocations that need
// iam.token.revoke.
func NewTokens(svc *token.Service, authorize AuthorizeFunc) *Tokens {
	return &Tokens{svc: svc, authorize: authorize}
}

var _ iamv1connect.TokenServiceHandler = (*Tokens)(nil)

// Token implements TokenService.Token (public: the credentials are in the request).
func (t *Tokens) Token(ctx context.Context, req *connect.Request[iamv1.TokenRequest]) (*connect.Response[iamv1.TokenResponse], error) {
	resp, err := t.svc.Token(ctx, req.Msg, peerHost(req.Peer().Addr))
	if err != nil {
		return nil, tokenConnectError(err)
	}
	return connect.NewResponse(resp), nil
}

// Revoke implements TokenService.Revoke. A refresh or access token may be revoked by
// whoever holds it (possession is the authority, as in RFC 7009; revoking only takes
// power away); a jti or a watermark needs iam.token.revoke.
func (t *Tokens) Revoke(ctx context.Context, req *connect.Request[iamv1.RevokeRequest]) (*connect.Response[iamv1.RevokeResponse], error) {
	if err := t.revoke(ctx, req.Msg, peerHost(req.Peer().Addr)); err != nil {
		return nil, tokenConnectError(err)
	}
	return connect.NewResponse(&iamv1.RevokeResponse{}), nil
}

func (t *Tokens) revoke(ctx context.Context, msg *iamv1.RevokeRequest, source string) error {
	actor := ""
	if id, ok := auth.IdentityFromContext(ctx); ok {
		actor = id.Subject
	}
	switch msg.GetTarget().(type) {
	case *iamv1.RevokeRequest_RefreshToken, *iamv1.RevokeRequest_AccessToken:
	default:
		if t.authorize == nil {
			return fmt.Errorf("%w: %s", auth.ErrPermissionDenied, PermTokenRevoke)
		}
		if err := t.authorize(ctx, PermTokenRevoke); err != nil {
			return err
		}
	}
	return t.svc.Revoke(ctx, msg, actor, source)
}

// peerHost returns the host part of a peer address ("" if none).
func peerHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
