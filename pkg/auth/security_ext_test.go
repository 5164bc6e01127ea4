package auth_test

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

const (
	procListKeys    = iamv1connect.KeyServiceListKeysProcedure
	procRotateKey   = iamv1connect.KeyServiceRotateKeyProcedure
	procWatchPolicy = iamv1connect.PolicyServiceWatchPolicyProcedure
	procToken       = iamv1connect.TokenServiceTokenProcedure
)

// echoService answers with the caller's identity: ListKeys returns one key
// whose kid is the subject; WatchPolicy sends one message whose revision is
// 1; Token returns the subject (if any) as access_token.
type echoService struct {
	iamv1connect.UnimplementedKeyServiceHandler
	iamv1connect.UnimplementedPolicyServiceHandler
	iamv1connect.UnimplementedTokenServiceHandler
}

func (echoService) ListKeys(ctx context.Context, _ *connect.Request[iamv1.ListKeysRequest]) (*connect.Response[iamv1.ListKeysResponse], error) {
	id, ok := auth.IdentityFromContext(ctx)
	if !ok {
		return nil, connect.NewError(connect.CodeInternal, nil)
	}
	return connect.NewResponse(&iamv1.ListKeysResponse{Keys: []*iamv1.SigningKey{{Kid: id.Subject + "/" + id.Project}}}), nil
}

func (echoService) WatchPolicy(ctx context.Context, _ *connect.Request[iamv1.WatchPolicyRequest], st *connect.ServerStream[iamv1.WatchPolicyResponse]) error {
	if _, ok := auth.IdentityFromContext(ctx); !ok {
		return connect.NewError(connect.CodeInternal, nil)
	}
	return st.Send(&iamv1.WatchPolicyResponse{Revision: 1})
}

func (echoService) Token(ctx context.Context, _ *connect.Request[iamv1.TokenRequest]) (*connect.Response[iamv1.TokenResponse], error) {
	id, _ := auth.IdentityFromContext(ctx)
	return connect.NewResponse(&iamv1.TokenResponse{AccessToken: id.Subject}), nil
}

// env is a service protected by the real interceptor, with keys from an
// httptest JWKS and an in-process policy copy.
type env struct {
	clock  *clock
	jwks   *fakeJWKS
	keys   *auth.JWKS
	policy *auth.Policy
	ver    *auth.Verifier
	keysC  iamv1connect.KeyServiceClient
	polC   iamv1connect.PolicyServiceClient
	tokC   iamv1connect.TokenServiceClient
	ed, es *signer
}

func newEnv(t testing.TB, cacheSize int) *env {
	t.Helper()
	e := &env{clock: newClock(t0)}
	e.ed = newSigner(t, auth.AlgEdDSA, "ed-1")
	e.es = newSigner(t, auth.AlgES256, "es-1")
	e.jwks = newFakeJWKS(t, e.ed.jwk(t), e.es.jwk(t))
	var err error
	e.keys, err = auth.NewJWKS(auth.JWKSConfig{Endpoints: []string{e.jwks.srv.URL}, Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.keys.Refresh(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	e.policy = auth.NewPolicy(auth.PolicyConfig{Now: e.clock.Now})
	mustApply(t, e.policy, builtinSnapshot(10))
	e.ver, err = auth.NewVerifier(auth.VerifierConfig{Keys: e.keys, Policy: e.policy, Now: e.clock.Now, CacheSize: cacheSize})
	if err != nil {
		t.Fatal(err)
	}
	ic, err := auth.NewInterceptor(auth.InterceptorConfig{
		Verifier: e.ver,
		Permissions: map[string]string{
			procListKeys:    "iam.key.list",
			procWatchPolicy: "iam.policy.stream",
		},
		Public: []string{procToken},
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	opt := connect.WithInterceptors(ic)
	mux.Handle(iamv1connect.NewKeyServiceHandler(echoService{}, opt))
	mux.Handle(iamv1connect.NewPolicyServiceHandler(echoService{}, opt))
	mux.Handle(iamv1connect.NewTokenServiceHandler(echoService{}, opt))
	srv := newH2CServer(t, mux)
	e.keysC = iamv1connect.NewKeyServiceClient(srv.Client(), srv.URL)
	e.polC = iamv1connect.NewPolicyServiceClient(srv.Client(), srv.URL)
	e.tokC = iamv1connect.NewTokenServiceClient(srv.Client(), srv.URL)
	return e
}

// call invokes ListKeys with the bearer token tok ("" sends none) and
// returns the code (0 for OK) and error.
func (e *env) call(t testing.TB, tok string) (connect.Code, error) {
	t.Helper()
	req := connect.NewRequest(&iamv1.ListKeysRequest{})
	if tok != "" {
		req.Header().Set("Authorization", "Bearer "+tok)
	}
	resp, err := e.keysC.ListKeys(ctxT(t), req)
	if err != nil {
		return connect.CodeOf(err), err
	}
	if got := resp.Msg.GetKeys()[0].GetKid(); !strings.HasPrefix(got, "user:") {
		t.Fatalf("identity not passed to handler: %q", got)
	}
	return 0, nil
}

// TestSecurityTable runs the acceptance security table through the real
// interceptor, with and without the verified-token cache.
func TestSecurityTable(t *testing.T) {
	t.Parallel()
	for _, cache := range []int{0, -1} {
		t.Run(fmt.Sprintf("cache=%d", cache), func(t *testing.T) {
			t.Parallel()
			testSecurityTable(t, cache)
		})
	}
}

func testSecurityTable(t *testing.T, cacheSize int) {
	e := newEnv(t, cacheSize)
	skew := auth.DefaultClockSkew
	now := t0
	other := newSigner(t, auth.AlgEdDSA, "ed-other") // never published
	p384 := newSigner(t, "ES384", "ed-1")            // claims the kid of a published key
	keyServer := newFakeJWKS(t, other.jwk(t))        // a JWKS a token might point at
	rotated := newSigner(t, auth.AlgEdDSA, "ed-retired")

	type tc struct {
		name  string
		setup func(t *testing.T)
		tok   func(t *testing.T) string
		want  connect.Code
	}
	edMod := func(mod func(h, c map[string]any)) func(t *testing.T) string {
		return func(t *testing.T) string { return e.ed.token(t, now, mod) }
	}
	cases := []tc{
		{name: "valid EdDSA", tok: edMod(nil)},
		{name: "valid ES256", tok: func(t *testing.T) string { return e.es.token(t, now, nil) }},
		{name: "typ application/at+jwt", tok: edMod(func(h, _ map[string]any) { h["typ"] = "application/AT+JWT" })},
		{name: "aud as a string", tok: edMod(func(_, c map[string]any) { c["aud"] = "plasmacloud" })},
		{name: "aud among several", tok: edMod(func(_, c map[string]any) { c["aud"] = []string{"x", "plasmacloud"} })},
		{name: "no token", tok: func(*testing.T) string { return "" }, want: connect.CodeUnauthenticated},
		{name: "garbage", tok: func(*testing.T) string { return "a.b.c" }, want: connect.CodeUnauthenticated},
		{name: "alg none", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			h := e.ed.header()
			h["alg"] = "none"
			return mint(t, h, claims(now), "none", nil)
		}},
		{name: "alg none signed with ed key", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			tok := e.ed.token(t, now, func(h, _ map[string]any) { h["alg"] = "none" })
			return tok
		}},
		{name: "HS256 signed with the public key bytes", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			h := e.ed.header()
			h["alg"] = "HS256"
			return mint(t, h, claims(now), "HS256", []byte(e.ed.pub.(ed25519.PublicKey)))
		}},
		{name: "HS256 signed with the public JWK", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			h := e.es.header()
			h["alg"] = "HS256"
			return mint(t, h, claims(now), "HS256", []byte(e.es.jwk(t)))
		}},
		{name: "alg outside allowlist (ES384)", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			return p384.token(t, now, nil)
		}},
		{name: "alg not the key's (ES256 header on EdDSA key)", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			h := e.es.header()
			h["kid"] = e.ed.kid
			return mint(t, h, claims(now), auth.AlgES256, e.es.priv)
		}},
		{name: "missing kid", want: connect.CodeUnauthenticated, tok: edMod(func(h, _ map[string]any) { delete(h, "kid") })},
		{name: "unknown kid", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string { return other.token(t, now, nil) }},
		{name: "exp one second before now-skew", want: connect.CodeUnauthenticated,
			tok: edMod(func(_, c map[string]any) {
				c["exp"] = now.Add(-skew - time.Second).Unix()
				c["iat"] = now.Add(-time.Hour).Unix()
				c["nbf"] = c["iat"]
			})},
		{name: "exp exactly now-skew", want: connect.CodeUnauthenticated,
			tok: edMod(func(_, c map[string]any) {
				c["exp"] = now.Add(-skew).Unix()
				c["iat"] = now.Add(-time.Hour).Unix()
				c["nbf"] = c["iat"]
			})},
		{name: "exp one second after now-skew",
			tok: edMod(func(_, c map[string]any) {
				c["exp"] = now.Add(-skew + time.Second).Unix()
				c["iat"] = now.Add(-time.Hour).Unix()
				c["nbf"] = c["iat"]
			})},
		{name: "nbf one second after now+skew", want: connect.CodeUnauthenticated,
			tok: edMod(func(_, c map[string]any) { c["nbf"] = now.Add(skew + time.Second).Unix() })},
		{name: "nbf exactly now+skew", tok: edMod(func(_, c map[string]any) { c["nbf"] = now.Add(skew).Unix() })},
		{name: "nbf one second before now+skew", tok: edMod(func(_, c map[string]any) { c["nbf"] = now.Add(skew - time.Second).Unix() })},
		{name: "iat one second after now+skew", want: connect.CodeUnauthenticated,
			tok: edMod(func(_, c map[string]any) { c["iat"] = now.Add(skew + time.Second).Unix(); c["nbf"] = now.Unix() })},
		{name: "iat exactly now+skew", tok: edMod(func(_, c map[string]any) { c["iat"] = now.Add(skew).Unix(); c["nbf"] = now.Unix() })},
		{name: "wrong iss", want: connect.CodeUnauthenticated, tok: edMod(func(_, c map[string]any) { c["iss"] = "https://evil.example" })},
		{name: "missing iss", want: connect.CodeUnauthenticated, tok: edMod(func(_, c map[string]any) { delete(c, "iss") })},
		{name: "wrong aud", want: connect.CodeUnauthenticated, tok: edMod(func(_, c map[string]any) { c["aud"] = []string{"other"} })},
		{name: "missing exp", want: connect.CodeUnauthenticated, tok: edMod(func(_, c map[string]any) { delete(c, "exp") })},
		{name: "missing jti", want: connect.CodeUnauthenticated, tok: edMod(func(_, c map[string]any) { delete(c, "jti") })},
		{name: "typ JWT (not an access token)", want: connect.CodeUnauthenticated, tok: edMod(func(h, _ map[string]any) { h["typ"] = "JWT" })},
		{name: "typ missing", want: connect.CodeUnauthenticated, tok: edMod(func(h, _ map[string]any) { delete(h, "typ") })},
		{name: "jku in header", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			return other.token(t, now, func(h, _ map[string]any) { h["jku"] = keyServer.srv.URL + auth.JWKSPath })
		}},
		{name: "x5u in header", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			return other.token(t, now, func(h, _ map[string]any) { h["x5u"] = keyServer.srv.URL + auth.JWKSPath })
		}},
		{name: "jwk in header", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			return other.token(t, now, func(h, _ map[string]any) { h["jwk"] = other.jwk(t) })
		}},
		{name: "jwk in header with a published kid", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			return other.token(t, now, func(h, _ map[string]any) { h["jwk"] = other.jwk(t); h["kid"] = e.ed.kid })
		}},
		{name: "tampered payload", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			parts := strings.Split(e.ed.token(t, now, nil), ".")
			c := claims(now)
			c["sub"] = "user:admin"
			return parts[0] + "." + b64(c) + "." + parts[2]
		}},
		{name: "tampered signature", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			tok := []byte(e.es.token(t, now, nil))
			i := len(tok) - 5
			tok[i] ^= 0x01
			if tok[i] == '.' || tok[i] > 'z' {
				tok[i] = 'A'
			}
			return string(tok)
		}},
		{name: "oversized token", want: connect.CodeUnauthenticated,
			tok: edMod(func(_, c map[string]any) { c["pad"] = strings.Repeat("x", auth.DefaultMaxTokenSize) })},
		{name: "revoked jti", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			tok := e.ed.token(t, now, func(_, c map[string]any) { c["jti"] = "revoked-1" })
			if code, _ := e.call(t, tok); code != 0 {
				t.Fatalf("before revocation: %v", code)
			}
			mustApply(t, e.policy, changes(11, put(&iamv1.RevokedToken{Jti: "revoked-1", ExpireTime: timestamppb.New(now.Add(10 * time.Minute))})))
			return tok
		}},
		{name: "principal watermark", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			mustApply(t, e.policy, changes(12, put(watermark(iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, "user:carol", now.Add(-100*time.Second)))))
			mustApply(t, e.policy, changes(13, put(allow("user:carol", "member", "p1"))))
			return e.ed.token(t, now, func(_, c map[string]any) { c["sub"] = "user:carol"; c["iat"] = now.Add(-101 * time.Second).Unix() })
		}},
		{name: "principal watermark, token issued at W", tok: func(t *testing.T) string {
			return e.ed.token(t, now, func(_, c map[string]any) { c["sub"] = "user:carol"; c["iat"] = now.Add(-100 * time.Second).Unix() })
		}},
		{name: "watermark in the same second (rounded up)", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			mustApply(t, e.policy, changes(14, put(watermark(iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, "user:dave", now.Add(-50*time.Second+time.Millisecond)))))
			mustApply(t, e.policy, changes(15, put(allow("user:dave", "member", "p1"))))
			return e.ed.token(t, now, func(_, c map[string]any) { c["sub"] = "user:dave"; c["iat"] = now.Add(-50 * time.Second).Unix() })
		}},
		{name: "project watermark", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			mustApply(t, e.policy, changes(16, put(watermark(iamv1.WatermarkScope_WATERMARK_SCOPE_PROJECT, "p1", now.Add(-200*time.Second)))))
			return e.ed.token(t, now, func(_, c map[string]any) { c["iat"] = now.Add(-201 * time.Second).Unix() })
		}},
		{name: "project watermark, other project unaffected", tok: func(t *testing.T) string {
			mustApply(t, e.policy, changes(17, put(allow("user:alice", "member", "p2"))))
			return e.ed.token(t, now, func(_, c map[string]any) { c["project"] = "p2"; c["iat"] = now.Add(-201 * time.Second).Unix() })
		}},
		{name: "global watermark newer than principal's wins", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			mustApply(t, e.policy, changes(18, put(watermark(iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, "", now.Add(-60*time.Second)))))
			return e.ed.token(t, now, func(_, c map[string]any) { c["sub"] = "user:carol"; c["iat"] = now.Add(-90 * time.Second).Unix() })
		}},
		{name: "principal watermark newer than global wins", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			mustApply(t, e.policy, changes(19, put(watermark(iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, "user:carol", now.Add(-30*time.Second)))))
			return e.ed.token(t, now, func(_, c map[string]any) { c["sub"] = "user:carol"; c["iat"] = now.Add(-45 * time.Second).Unix() })
		}},
		{name: "after every watermark", tok: func(t *testing.T) string {
			return e.ed.token(t, now, func(_, c map[string]any) { c["sub"] = "user:carol"; c["iat"] = now.Add(-20 * time.Second).Unix() })
		}},
		{name: "retired-but-published key", tok: func(t *testing.T) string {
			tok := rotated.token(t, now, nil) // signed while active
			e.jwks.setKeys(e.ed.jwk(t), e.es.jwk(t), rotated.jwk(t))
			mustApply(t, e.policy, changes(20, put(&iamv1.SigningKey{Kid: rotated.kid, Alg: auth.AlgEdDSA, State: iamv1.KeyState_KEY_STATE_RETIRED})))
			if err := e.keys.Refresh(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			return tok
		}},
		{name: "removed key (after JWKS refresh)", want: connect.CodeUnauthenticated, tok: func(t *testing.T) string {
			tok := rotated.token(t, now, nil)
			if code, err := e.call(t, tok); code != 0 {
				t.Fatalf("before removal: %v", err)
			}
			e.jwks.setKeys(e.ed.jwk(t), e.es.jwk(t))
			if err := e.keys.Refresh(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			return tok
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tok := c.tok(t)
			code, err := e.call(t, tok)
			if code != c.want {
				t.Fatalf("code %v, want %v (err %v)", code, c.want, err)
			}
			if err != nil && tok != "" && strings.Contains(err.Error(), tok) {
				t.Fatalf("error echoes the token: %v", err)
			}
			if err != nil {
				t.Logf("refused: %v", err)
			}
		})
	}
	if n := keyServer.hits.Load(); n != 0 {
		t.Fatalf("key URL offered in a token header was fetched %d times", n)
	}
}

func TestInterceptorAuthorization(t *testing.T) {
	t.Parallel()
	e := newEnv(t, 0)
	alice := e.ed.token(t, t0, nil)
	bob := e.ed.token(t, t0, func(_, c map[string]any) { c["sub"] = "user:bob"; delete(c, "project") })

	t.Run("permission denied names permission, principal and project", func(t *testing.T) {
		st, err := e.polC.WatchPolicy(ctxT(t), bearer(connect.NewRequest(&iamv1.WatchPolicyRequest{}), alice))
		if err == nil {
			for st.Receive() {
			}
			err = st.Err()
		}
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("code %v (%v)", connect.CodeOf(err), err)
		}
		want := `permission "iam.policy.stream" denied for user:alice in project p1`
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("message %q lacks %q", err.Error(), want)
		}
	})
	t.Run("streaming allowed after a role change", func(t *testing.T) {
		mustApply(t, e.policy, changes(11, put(role("watcher", "iam.policy.stream")), put(allow("user:alice", "watcher", ""))))
		st, err := e.polC.WatchPolicy(ctxT(t), bearer(connect.NewRequest(&iamv1.WatchPolicyRequest{}), alice))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for st.Receive() {
			n++
		}
		if st.Err() != nil || n != 1 {
			t.Fatalf("n=%d err=%v", n, st.Err())
		}
	})
	t.Run("deny wins over allow", func(t *testing.T) {
		mustApply(t, e.policy, changes(12, put(role("no-keys", "iam.key.*")), put(allow("user:bob", "admin", "")), put(deny("user:bob", "no-keys", ""))))
		if code, err := e.call(t, bob); code != connect.CodePermissionDenied {
			t.Fatalf("code %v (%v)", code, err)
		}
		mustApply(t, e.policy, changes(13, del(deny("user:bob", "no-keys", ""))))
		if code, err := e.call(t, bob); code != 0 {
			t.Fatalf("after deleting the deny: %v", err)
		}
	})
	t.Run("procedure missing from the table fails closed", func(t *testing.T) {
		_, err := e.keysC.RotateKey(ctxT(t), bearer(connect.NewRequest(&iamv1.RotateKeyRequest{}), alice))
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("code %v (%v)", connect.CodeOf(err), err)
		}
	})
	t.Run("public procedure without token", func(t *testing.T) {
		resp, err := e.tokC.Token(ctxT(t), connect.NewRequest(&iamv1.TokenRequest{}))
		if err != nil || resp.Msg.GetAccessToken() != "" {
			t.Fatalf("resp %v err %v", resp, err)
		}
	})
	t.Run("public procedure with a valid token gets the identity", func(t *testing.T) {
		resp, err := e.tokC.Token(ctxT(t), bearer(connect.NewRequest(&iamv1.TokenRequest{}), alice))
		if err != nil || resp.Msg.GetAccessToken() != "user:alice" {
			t.Fatalf("resp %v err %v", resp, err)
		}
	})
	t.Run("public procedure with a bad token still works", func(t *testing.T) {
		_, err := e.tokC.Token(ctxT(t), bearer(connect.NewRequest(&iamv1.TokenRequest{}), "x.y.z"))
		if err != nil {
			t.Fatal(err)
		}
	})
	t.Run("stale policy is Unavailable", func(t *testing.T) {
		e.clock.Add(auth.DefaultStaleness + time.Second)
		defer e.clock.Add(-auth.DefaultStaleness - time.Second)
		tok := e.ed.token(t, e.clock.Now(), nil)
		if code, err := e.call(t, tok); code != connect.CodeUnavailable {
			t.Fatalf("code %v (%v)", code, err)
		}
	})
	t.Run("scheme and header forms", func(t *testing.T) {
		for _, h := range []string{"bearer " + alice, "Basic abc", "Bearer", "Bearer  " + alice + " x"} {
			req := connect.NewRequest(&iamv1.ListKeysRequest{})
			req.Header().Set("Authorization", h)
			_, err := e.keysC.ListKeys(ctxT(t), req)
			want := connect.CodeUnauthenticated
			if strings.HasPrefix(h, "bearer ") {
				want = 0
			}
			if connect.CodeOf(err) != want && !(want == 0 && err == nil) {
				t.Fatalf("%.10q: code %v (%v)", h, connect.CodeOf(err), err)
			}
		}
	})
}

func bearer[T any](req *connect.Request[T], tok string) *connect.Request[T] {
	req.Header().Set("Authorization", "Bearer "+tok)
	return req
}
