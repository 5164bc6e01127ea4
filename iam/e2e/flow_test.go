package e2e

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// revocationBound is the acceptance bound for "within a second" at the verifier, with
// a safety margin for a loaded 2-core machine.
const revocationBound = 3 * time.Second

// TestLoginAuthorizeRevoke is the full flow: admin sets up a project, a user and a
// binding; the user's token is authorized by a pkg/auth service from the watched policy;
// a deny binding, a token revocation and a principal watermark take effect at the service
// within the bound; refresh-token reuse revokes the family; a disabled user cannot refresh.
func TestLoginAuthorizeRevoke(t *testing.T) {
	e := startEnv(t, 1)
	admin := e.admin(t)
	base := e.client(t, nil)
	ctx := bg(t)

	if _, err := admin.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "p1"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateUser(ctx, &iamv1.CreateUserRequest{User: &iamv1.User{Name: "alice"}, Password: "alice-pass-1234"}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
		Principal: "user:alice", Role: "member", Project: "p1", Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	prot := startProtected(t, e.endpoints(), e.watcher(t, admin, "verifier"), protectedConfig{})

	alice := login(t, base, "alice", "alice-pass-1234", "p1")
	if alice.Project != "p1" || alice.RefreshToken == "" {
		t.Fatalf("alice's token response: project %q, refresh token set %v", alice.Project, alice.RefreshToken != "")
	}
	pc := prot.client(alice.AccessToken)

	t.Run("authorize", func(t *testing.T) {
		got, err := pc.GetProject(ctx, connect.NewRequest(&iamv1.GetProjectRequest{Name: "p1"}))
		if err != nil {
			t.Fatalf("GetProject (demo.project.get, member has *.get): %v", err)
		}
		if got.Msg.Project.Description != "user:alice" {
			t.Fatalf("identity at the handler %q, want user:alice", got.Msg.Project.Description)
		}
		if _, err := pc.CreateProject(ctx, connect.NewRequest(&iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "x"}})); err != nil {
			t.Fatalf("CreateProject (vm.create, member has vm.*): %v", err)
		}
		_, err = pc.DeleteProject(ctx, connect.NewRequest(&iamv1.DeleteProjectRequest{Name: "p1"}))
		if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), `"demo.project.delete"`) {
			t.Fatalf("DeleteProject (demo.project.delete, not in member): %v, want PermissionDenied naming the permission", err)
		}
		if err := prot.get(""); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("no token: %v, want Unauthenticated", err)
		}
	})

	t.Run("deny binding", func(t *testing.T) {
		if _, err := admin.CreateRole(ctx, &iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: "no-get", Permissions: []string{"demo.project.get"}}}); err != nil {
			t.Fatal(err)
		}
		deny := &iamv1.Binding{Principal: "user:alice", Role: "no-get", Project: "p1", Effect: iamv1.Effect_EFFECT_DENY}
		if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: deny}); err != nil {
			t.Fatal(err)
		}
		d, err := waitCode(t, revocationBound, "deny binding at the service", connect.CodePermissionDenied, func() error { return prot.get(alice.AccessToken) })
		t.Logf("deny binding effective at the service after %v", d)
		if !strings.Contains(err.Error(), `"demo.project.get"`) {
			t.Fatalf("denial %v does not name demo.project.get", err)
		}
		// Other permissions of member are untouched by the deny.
		if _, err := pc.CreateProject(ctx, connect.NewRequest(&iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: "x"}})); err != nil {
			t.Fatalf("CreateProject under an unrelated deny: %v", err)
		}
		if _, err := admin.DeleteBinding(ctx, &iamv1.DeleteBindingRequest{Principal: deny.Principal, Role: deny.Role, Project: deny.Project}); err != nil {
			t.Fatal(err)
		}
		d, _ = waitCode(t, revocationBound, "deny binding removed", 0, func() error { return prot.get(alice.AccessToken) })
		t.Logf("deny removal effective at the service after %v", d)
	})

	t.Run("revoke access token", func(t *testing.T) {
		if _, err := admin.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_AccessToken{AccessToken: alice.AccessToken}}); err != nil {
			t.Fatal(err)
		}
		d, err := waitCode(t, revocationBound, "revoked access token at the service", connect.CodeUnauthenticated, func() error { return prot.get(alice.AccessToken) })
		t.Logf("access-token revocation effective at the service after %v (%v)", d, err)
		if strings.Contains(err.Error(), alice.AccessToken) {
			t.Fatal("error echoes the token")
		}
	})

	t.Run("principal watermark", func(t *testing.T) {
		tok := login(t, base, "alice", "alice-pass-1234", "p1")
		if err := prot.get(tok.AccessToken); err != nil {
			t.Fatalf("fresh token: %v", err)
		}
		if _, err := admin.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_Watermark{Watermark: &iamv1.Watermark{
			Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, Name: "user:alice"}}}); err != nil {
			t.Fatal(err)
		}
		d, _ := waitCode(t, revocationBound, "principal watermark at the service", connect.CodeUnauthenticated, func() error { return prot.get(tok.AccessToken) })
		t.Logf("principal watermark effective at the service after %v", d)
		// A token issued after the watermark is accepted at once.
		after := login(t, base, "alice", "alice-pass-1234", "p1")
		if err := prot.get(after.AccessToken); err != nil {
			t.Fatalf("token issued after the watermark: %v", err)
		}
		// Admin's tokens are unaffected.
		if _, err := admin.ListUsers(ctx, &iamv1.ListUsersRequest{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("refresh reuse revokes the family", func(t *testing.T) {
		first := login(t, base, "alice", "alice-pass-1234", "p1")
		second, err := base.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: first.RefreshToken})
		if err != nil {
			t.Fatal(err)
		}
		if second.RefreshToken == first.RefreshToken || second.Project != "p1" {
			t.Fatalf("refresh did not rotate (or lost the scope %q)", second.Project)
		}
		if err := prot.get(second.AccessToken); err != nil {
			t.Fatalf("refreshed access token: %v", err)
		}
		_, err = base.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: first.RefreshToken})
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("reused refresh token: %v, want Unauthenticated", err)
		}
		_, err = base.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: second.RefreshToken})
		if connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("newest refresh token of a revoked family: %v, want Unauthenticated", err)
		}
	})

	t.Run("own refresh token revoked without a bearer token", func(t *testing.T) {
		tok := login(t, base, "alice", "alice-pass-1234", "p1")
		if _, err := base.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_RefreshToken{RefreshToken: tok.RefreshToken}}); err != nil {
			t.Fatalf("unauthenticated revoke of one's own refresh token: %v", err)
		}
		if _, err := base.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: tok.RefreshToken}); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("refresh after revoke: %v, want Unauthenticated", err)
		}
		// A jti needs iam.token.revoke: alice (member) may not revoke by jti.
		aliceClient := e.client(t, iamclient.StaticToken(tok.AccessToken))
		if _, err := aliceClient.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_Jti{Jti: "x"}}); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("member revoking by jti: %v, want PermissionDenied", err)
		}
	})

	t.Run("disabled user cannot refresh", func(t *testing.T) {
		tok := login(t, base, "alice", "alice-pass-1234", "p1")
		if _, err := admin.UpdateUser(ctx, &iamv1.UpdateUserRequest{Name: "alice", Disabled: proto.Bool(true)}); err != nil {
			t.Fatal(err)
		}
		_, err := base.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: tok.RefreshToken})
		if err == nil {
			t.Fatal("a disabled user refreshed")
		}
		if c := connect.CodeOf(err); c != connect.CodeUnauthenticated && c != connect.CodePermissionDenied {
			t.Fatalf("disabled user's refresh: %v", err)
		}
		if _, err := base.Token(ctx, &iamv1.TokenRequest{GrantType: "password", Username: "alice", Password: "alice-pass-1234"}); err == nil {
			t.Fatal("a disabled user logged in")
		}
		d, _ := waitCode(t, revocationBound, "disabled user's access token at the service", connect.CodeUnauthenticated, func() error { return prot.get(tok.AccessToken) })
		t.Logf("disabling effective at the service after %v (refresh refused: %v)", d, err)
	})
}
