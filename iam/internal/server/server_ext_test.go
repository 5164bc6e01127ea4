package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

const adminPassword = "bootstrap-pass-1234"

type iamProc struct {
	*harness.Process
	url string
}

// startIAM runs the real iam binary (built from this tree) against ChainFire.
func startIAM(t *testing.T, cf *chainfiretest.Cluster, extra ...string) *iamProc {
	t.Helper()
	bin := harness.Build(t, "plasmacloud.dev/iam/cmd/iam")
	dir := t.TempDir()
	mk := filepath.Join(dir, "master.key")
	pw := filepath.Join(dir, "admin.pw")
	if err := os.WriteFile(mk, []byte(keys.GenerateMasterKeyText()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pw, []byte(adminPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	args := append([]string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"--chainfire-endpoints", strings.Join(cf.Endpoints(), ","), "--master-key-file", mk,
		"--bootstrap-admin-password-file", pw, "--key-publish-delay", "1s", "--log-level", "debug"}, extra...)
	p := harness.StartProcess(t, harness.ProcessConfig{Name: "iam", Path: bin, Args: args, ReadyURL: u + "/readyz"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return &iamProc{Process: p, url: u}
}

func postForm(t *testing.T, u string, form url.Values, basic ...string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if len(basic) == 2 {
		req.SetBasicAuth(basic[0], basic[1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, resp.Header, body
}

func bearer(tok string) connect.Option {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+tok)
			return next(ctx, req)
		}
	}))
}

type bearerStream string

func (b bearerStream) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }
func (b bearerStream) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, s connect.Spec) connect.StreamingClientConn {
		c := next(ctx, s)
		c.RequestHeader().Set("Authorization", "Bearer "+string(b))
		return c
	}
}
func (b bearerStream) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// TestServerFlow runs real ChainFire and the real iam binary: bootstrap, password login at
// /oauth2/token, an authorized admin call, the policy stream, revocation, rejection, and a
// graceful SIGTERM.
func TestServerFlow(t *testing.T) {
	cf := chainfiretest.Start(t, 1, chainfiretest.Options{})
	iam := startIAM(t, cf)
	ctx := context.Background()

	// Login.
	code, hdr, body := postForm(t, iam.url+"/oauth2/token", url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {adminPassword}})
	if code != 200 || body["token_type"] != "Bearer" || body["access_token"] == nil || body["refresh_token"] == nil {
		t.Fatalf("login: %d %v", code, body)
	}
	if hdr.Get("Cache-Control") != "no-store" {
		t.Fatalf("token response Cache-Control %q", hdr.Get("Cache-Control"))
	}
	access, refresh := body["access_token"].(string), body["refresh_token"].(string)

	// Authorized admin call, and the same without a token.
	users := iamv1connect.NewUserServiceClient(http.DefaultClient, iam.url, bearer(access))
	lr, err := users.ListUsers(ctx, connect.NewRequest(&iamv1.ListUsersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(lr.Msg.Users) != 1 || lr.Msg.Users[0].Name != "admin" {
		t.Fatalf("users %v", lr.Msg.Users)
	}
	anon := iamv1connect.NewUserServiceClient(http.DefaultClient, iam.url)
	if _, err := anon.ListUsers(ctx, connect.NewRequest(&iamv1.ListUsersRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("anonymous ListUsers: %v", err)
	}

	t.Run("oauth errors", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			form   url.Values
			basic  []string
			status int
			code   string
		}{
			{"wrong password", url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {"wrong-password"}}, nil, 400, "invalid_grant"},
			{"unknown user", url.Values{"grant_type": {"password"}, "username": {"nobody"}, "password": {"wrong-password"}}, nil, 400, "invalid_grant"},
			{"unsupported grant", url.Values{"grant_type": {"implicit"}}, nil, 400, "unsupported_grant_type"},
			{"missing grant", url.Values{}, nil, 400, "invalid_request"},
			{"bad client", url.Values{"grant_type": {"client_credentials"}}, []string{"robot", "nope"}, 401, "invalid_client"},
			{"unknown project", url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {adminPassword}, "project": {"nope"}}, nil, 400, "invalid_scope"},
			{"bad refresh", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"nope"}}, nil, 400, "invalid_grant"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				code, hdr, body := postForm(t, iam.url+"/oauth2/token", tc.form, tc.basic...)
				if code != tc.status || body["error"] != tc.code || body["error_description"] == "" {
					t.Fatalf("got %d %v, want %d %s", code, body, tc.status, tc.code)
				}
				if code == 401 && hdr.Get("WWW-Authenticate") == "" {
					t.Fatal("401 without WWW-Authenticate")
				}
			})
		}
		resp, err := http.Get(iam.url + "/oauth2/token")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Fatalf("GET /oauth2/token: %d", resp.StatusCode)
		}
	})

	t.Run("discovery", func(t *testing.T) {
		resp, err := http.Get(iam.url + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		var set struct{ Keys []map[string]any }
		_ = json.NewDecoder(resp.Body).Decode(&set)
		resp.Body.Close()
		if len(set.Keys) != 1 || set.Keys[0]["d"] != nil || !strings.Contains(resp.Header.Get("Cache-Control"), "max-age") {
			t.Fatalf("jwks %v %v", set, resp.Header)
		}
		resp, err = http.Get(iam.url + "/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&doc)
		resp.Body.Close()
		if doc["issuer"] != "https://iam.plasmacloud.internal" || doc["token_endpoint"] != iam.url+"/oauth2/token" || doc["jwks_uri"] == nil {
			t.Fatalf("discovery %v", doc)
		}
	})

	// Policy stream: snapshot, a delta for a new role, heartbeats, resume.
	policyClient := iamv1connect.NewPolicyServiceClient(http.DefaultClient, iam.url, connect.WithInterceptors(bearerStream(access)))
	sctx, scancel := context.WithCancel(ctx)
	defer scancel()
	st, err := policyClient.WatchPolicy(sctx, connect.NewRequest(&iamv1.WatchPolicyRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Receive() {
		t.Fatal(st.Err())
	}
	snap := st.Msg()
	if !snap.Snapshot || snap.Revision == 0 {
		t.Fatalf("first message %v", snap)
	}
	kinds := map[string]int{}
	for _, ch := range snap.Changes {
		switch {
		case ch.GetRole() != nil:
			kinds["role"]++
		case ch.GetBinding() != nil:
			kinds["binding"]++
		case ch.GetSigningKey() != nil:
			kinds["key"]++
			if ch.GetSigningKey().PublicJwk == "" || strings.Contains(ch.GetSigningKey().PublicJwk, `"d"`) {
				t.Fatalf("signing key in stream: %v", ch.GetSigningKey())
			}
		}
	}
	if kinds["role"] != 3 || kinds["binding"] != 1 || kinds["key"] != 1 {
		t.Fatalf("snapshot holds %v, want 3 built-in roles, the admin binding and one key", kinds)
	}
	roles := iamv1connect.NewRoleServiceClient(http.DefaultClient, iam.url, bearer(access))
	if _, err := roles.CreateRole(ctx, connect.NewRequest(&iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: "vm-admin", Permissions: []string{"vm.*"}}})); err != nil {
		t.Fatal(err)
	}
	var delta *iamv1.WatchPolicyResponse
	heartbeat := false
	deadline := time.Now().Add(6 * time.Second)
	for (delta == nil || !heartbeat) && time.Now().Before(deadline) {
		if !st.Receive() {
			t.Fatal(st.Err())
		}
		m := st.Msg()
		if len(m.Changes) == 0 {
			heartbeat = heartbeat || m.Revision >= snap.Revision
			continue
		}
		if m.Revision <= snap.Revision || m.Snapshot {
			t.Fatalf("delta %v not after the snapshot", m)
		}
		if m.Changes[0].GetRole().GetName() == "vm-admin" {
			delta = m
		}
	}
	if delta == nil || !heartbeat {
		t.Fatalf("delta %v heartbeat %v", delta, heartbeat)
	}
	scancel()
	// Resume after the snapshot: the role comes again as a delta, no snapshot.
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	rs, err := policyClient.WatchPolicy(rctx, connect.NewRequest(&iamv1.WatchPolicyRequest{AfterRevision: snap.Revision}))
	if err != nil {
		t.Fatal(err)
	}
	if !rs.Receive() {
		t.Fatal(rs.Err())
	}
	if m := rs.Msg(); m.Snapshot || m.Revision != delta.Revision {
		t.Fatalf("resume gave %v, want the delta at %d", m, delta.Revision)
	}
	rcancel()

	// Revoke the access token; it is rejected within about a second.
	code, _, body = postForm(t, iam.url+"/oauth2/revoke", url.Values{"token": {access}})
	if code != 200 {
		t.Fatalf("revoke: %d %v", code, body)
	}
	waitRejected := func(what string) {
		deadline := time.Now().Add(3 * time.Second)
		for {
			_, err := users.ListUsers(ctx, connect.NewRequest(&iamv1.ListUsersRequest{}))
			if connect.CodeOf(err) == connect.CodeUnauthenticated {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: still accepted: %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitRejected("revoked access token")
	// The refresh token still works (another access token), until its family is revoked.
	code, _, body = postForm(t, iam.url+"/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}})
	if code != 200 {
		t.Fatalf("refresh: %d %v", code, body)
	}
	refresh2 := body["refresh_token"].(string)
	users = iamv1connect.NewUserServiceClient(http.DefaultClient, iam.url, bearer(body["access_token"].(string)))
	if _, err := users.ListUsers(ctx, connect.NewRequest(&iamv1.ListUsersRequest{})); err != nil {
		t.Fatal(err)
	}
	if code, _, _ := postForm(t, iam.url+"/oauth2/revoke", url.Values{"token": {refresh2}, "token_type_hint": {"refresh_token"}}); code != 200 {
		t.Fatalf("revoke refresh: %d", code)
	}
	if code, _, body := postForm(t, iam.url+"/oauth2/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh2}}); code != 400 || body["error"] != "invalid_grant" {
		t.Fatalf("refresh after revoke: %d %v", code, body)
	}
	// A global watermark revokes everything issued so far.
	tokens := iamv1connect.NewTokenServiceClient(http.DefaultClient, iam.url, bearer(body2token(t, iam)))
	if _, err := tokens.Revoke(ctx, connect.NewRequest(&iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_Watermark{
		Watermark: &iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL}}})); err != nil {
		t.Fatal(err)
	}
	waitRejected("token before the global watermark")

	// Graceful shutdown.
	if err := iam.Terminate(15 * time.Second); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(iam.Logs(), "shutting down") {
		t.Fatal("no shutdown message")
	}
	_ = syscall.SIGTERM
}

// body2token logs admin in again and returns the access token.
func body2token(t *testing.T, iam *iamProc) string {
	code, _, body := postForm(t, iam.url+"/oauth2/token", url.Values{"grant_type": {"password"}, "username": {"admin"}, "password": {adminPassword}})
	if code != 200 {
		t.Fatalf("login: %d %v", code, body)
	}
	return body["access_token"].(string)
}
