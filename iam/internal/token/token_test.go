package token_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/iam/internal/token"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// fakeModel stands in for IAM's login and store packages.
type fakeModel struct {
	mu       sync.Mutex
	disabled map[string]bool
	scopes   map[string]bool // principal/project
}

func (f *fakeModel) AuthenticatePassword(_ context.Context, user, pw, _ string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case pw == "locked":
		return "", &store.LockedError{Subject: "user:" + user, RetryAfter: 3 * time.Second}
	case pw != "secret-pw":
		return "", fmt.Errorf("%w", store.ErrBadCredentials)
	case f.disabled["user:"+user]:
		return "", store.ErrDisabled
	}
	return "user:" + user, nil
}

func (f *fakeModel) AuthenticateClient(_ context.Context, id, secret, _ string) (string, error) {
	if secret != "client-secret" {
		return "", store.ErrBadCredentials
	}
	return "serviceaccount:" + id, nil
}

func (f *fakeModel) PrincipalActive(_ context.Context, p string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.disabled[p] {
		return store.ErrDisabled
	}
	return nil
}

func (f *fakeModel) CanScope(_ context.Context, p, project string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.scopes[p+"/"+project] {
		return store.ErrFailedPrecondition
	}
	return nil
}

func (f *fakeModel) disable(p string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.disabled[p] = true
}

type env struct {
	cl    *chainfire.Client
	keys  *keys.Manager
	model *fakeModel
	svc   *token.Service
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cl, err := chainfire.New(chainfire.Config{Endpoints: c.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	km, err := keys.New(keys.Config{Client: cl, MasterKey: keys.InsecureDevMasterKey(), RetireFor: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := km.Start(ctx); err != nil {
		t.Fatal(err)
	}
	model := &fakeModel{disabled: map[string]bool{}, scopes: map[string]bool{"user:alice/p1": true}}
	svc, err := token.New(token.Config{Client: cl, Keys: km, Auth: model, Directory: model})
	if err != nil {
		t.Fatal(err)
	}
	return &env{cl: cl, keys: km, model: model, svc: svc}
}

// decodeJWT returns header and claims of a compact JWS without verifying it.
func decodeJWT(t *testing.T, raw string) (map[string]any, token.Claims) {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	var h map[string]any
	var c token.Claims
	for i, v := range []any{&h, &c} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	return h, c
}

func password(user, project string) *iamv1.TokenRequest {
	return &iamv1.TokenRequest{GrantType: "password", Username: user, Password: "secret-pw", Project: project}
}

func TestGrants(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()

	t.Run("password", func(t *testing.T) {
		resp, err := e.svc.Token(ctx, password("alice", "p1"), "127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if resp.RefreshToken == "" || resp.TokenType != "Bearer" || resp.ExpiresIn != 600 || resp.Project != "p1" {
			t.Fatalf("response %+v", resp)
		}
		h, c := decodeJWT(t, resp.AccessToken)
		active, _ := e.keys.Active()
		if h["typ"] != "at+jwt" || h["kid"] != active.Kid || h["alg"] != "EdDSA" {
			t.Fatalf("header %v", h)
		}
		if c.Issuer != token.DefaultIssuer || c.Subject != "user:alice" || c.ClientID != "iam-cli" || c.Project != "p1" ||
			len(c.Audience) != 1 || c.Audience[0] != "plasmacloud" || c.ExpiresAt-c.IssuedAt != 600 || c.NotBefore != c.IssuedAt || len(c.JTI) != 22 {
			t.Fatalf("claims %+v", c)
		}
	})
	t.Run("client credentials", func(t *testing.T) {
		resp, err := e.svc.Token(ctx, &iamv1.TokenRequest{GrantType: "client_credentials", ClientId: "robot", ClientSecret: "client-secret"}, "")
		if err != nil {
			t.Fatal(err)
		}
		if resp.RefreshToken != "" {
			t.Fatal("client_credentials returned a refresh token")
		}
		_, c := decodeJWT(t, resp.AccessToken)
		if c.Subject != "serviceaccount:robot" || c.ClientID != "robot" || c.Project != "" {
			t.Fatalf("claims %+v", c)
		}
	})
	for _, tc := range []struct {
		name string
		req  *iamv1.TokenRequest
		want error
	}{
		{"no grant type", &iamv1.TokenRequest{}, token.ErrInvalidRequest},
		{"unknown grant type", &iamv1.TokenRequest{GrantType: "implicit"}, token.ErrUnsupportedGrant},
		{"wrong password", &iamv1.TokenRequest{GrantType: "password", Username: "alice", Password: "nope"}, token.ErrInvalidGrant},
		{"missing password", &iamv1.TokenRequest{GrantType: "password", Username: "alice"}, token.ErrInvalidRequest},
		{"locked", &iamv1.TokenRequest{GrantType: "password", Username: "alice", Password: "locked"}, store.ErrLocked},
		{"project not allowed", password("alice", "p2"), token.ErrInvalidScope},
		{"bad project name", password("alice", "P!"), token.ErrInvalidRequest},
		{"bad client secret", &iamv1.TokenRequest{GrantType: "client_credentials", ClientId: "robot", ClientSecret: "x"}, token.ErrInvalidClient},
		{"no client", &iamv1.TokenRequest{GrantType: "client_credentials"}, token.ErrInvalidClient},
		{"unknown refresh token", &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: "nope"}, token.ErrInvalidGrant},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.svc.Token(ctx, tc.req, "")
			if !errors.Is(err, tc.want) {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRefreshRotationAndReuse(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, err := e.svc.Token(ctx, password("alice", "p1"), "")
	if err != nil {
		t.Fatal(err)
	}
	refresh := func(tok string) (*iamv1.TokenResponse, error) {
		return e.svc.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: tok}, "")
	}
	second, err := refresh(first.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	if second.RefreshToken == first.RefreshToken || second.Project != "p1" {
		t.Fatalf("rotation gave %+v", second)
	}
	third, err := refresh(second.RefreshToken)
	if err != nil {
		t.Fatal(err)
	}
	// Reuse of the first (rotated) token: refused, and the whole family dies.
	if _, err := refresh(first.RefreshToken); !errors.Is(err, token.ErrInvalidGrant) || !strings.Contains(err.Error(), "already used") {
		t.Fatalf("reuse: %v", err)
	}
	if _, err := refresh(third.RefreshToken); !errors.Is(err, token.ErrInvalidGrant) || !strings.Contains(err.Error(), "revoked") {
		t.Fatalf("newest token after reuse: %v", err)
	}
	// A new login starts a new family.
	fresh, err := e.svc.Token(ctx, password("alice", ""), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := refresh(fresh.RefreshToken); err != nil {
		t.Fatal(err)
	}

	t.Run("revoke refresh token", func(t *testing.T) {
		r, err := e.svc.Token(ctx, password("alice", ""), "")
		if err != nil {
			t.Fatal(err)
		}
		if err := e.svc.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_RefreshToken{RefreshToken: r.RefreshToken}}, "", ""); err != nil {
			t.Fatal(err)
		}
		if _, err := refresh(r.RefreshToken); !errors.Is(err, token.ErrInvalidGrant) {
			t.Fatalf("refresh after revoke: %v", err)
		}
		// Unknown tokens revoke fine (RFC 7009).
		if err := e.svc.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_RefreshToken{RefreshToken: "unknown"}}, "", ""); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("disabled principal", func(t *testing.T) {
		r, err := e.svc.Token(ctx, password("bob", ""), "")
		if err != nil {
			t.Fatal(err)
		}
		e.model.disable("user:bob")
		if _, err := refresh(r.RefreshToken); !errors.Is(err, token.ErrInvalidGrant) || !strings.Contains(err.Error(), "disabled") {
			t.Fatalf("disabled refresh: %v", err)
		}
	})
	t.Run("concurrent refresh", func(t *testing.T) {
		r, err := e.svc.Token(ctx, password("carol", ""), "")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := 0
		for range 4 {
			wg.Go(func() {
				if _, err := refresh(r.RefreshToken); err == nil {
					mu.Lock()
					ok++
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if ok > 1 {
			t.Fatalf("%d concurrent redemptions of one refresh token succeeded", ok)
		}
	})
}

func TestWatermarks(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	before, err := e.svc.Token(ctx, password("alice", "p1"), "")
	if err != nil {
		t.Fatal(err)
	}
	_, c0 := decodeJWT(t, before.AccessToken)
	wm := &iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, Name: "user:alice"}
	if err := e.svc.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_Watermark{Watermark: wm}}, "user:admin", ""); err != nil {
		t.Fatal(err)
	}
	w, err := e.svc.Watermark(ctx, "user:alice", "p1")
	if err != nil {
		t.Fatal(err)
	}
	if w.Nanosecond() != 0 || c0.IssuedAt >= w.Unix() {
		t.Fatalf("watermark %v does not revoke a token issued at %d", w, c0.IssuedAt)
	}
	// The family started before W is refused.
	if _, err := e.svc.Token(ctx, &iamv1.TokenRequest{GrantType: "refresh_token", RefreshToken: before.RefreshToken}, ""); !errors.Is(err, token.ErrInvalidGrant) || !strings.Contains(err.Error(), "watermark") {
		t.Fatalf("refresh across watermark: %v", err)
	}
	// A token issued right after never has iat < W (issuance waits for the second).
	after, err := e.svc.Token(ctx, password("alice", "p1"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, c := decodeJWT(t, after.AccessToken); c.IssuedAt < w.Unix() {
		t.Fatalf("token issued with iat %d < watermark %d", c.IssuedAt, w.Unix())
	}
	t.Run("newest wins", func(t *testing.T) {
		old := &iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, Name: "user:alice", NotBefore: timestamppb.New(w.Add(-time.Hour))}
		got, err := e.svc.RevokeWatermark(ctx, old)
		if err != nil {
			t.Fatal(err)
		}
		if !got.NotBefore.AsTime().Equal(w) {
			t.Fatalf("older watermark replaced the newer: %v", got.NotBefore.AsTime())
		}
	})
	for _, tc := range []struct {
		name string
		wm   *iamv1.Watermark
	}{
		{"no scope", &iamv1.Watermark{}},
		{"bad principal", &iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, Name: "alice"}},
		{"global with name", &iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, Name: "x"}},
		{"future", &iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, NotBefore: timestamppb.New(time.Now().Add(time.Hour))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.svc.RevokeWatermark(ctx, tc.wm); !errors.Is(err, token.ErrInvalidRequest) {
				t.Fatalf("err %v, want ErrInvalidRequest", err)
			}
		})
	}
}

func TestRevokeAccessToken(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	r, err := e.svc.Token(ctx, password("alice", ""), "")
	if err != nil {
		t.Fatal(err)
	}
	_, c := decodeJWT(t, r.AccessToken)
	if err := e.svc.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_AccessToken{AccessToken: r.AccessToken}}, "user:alice", ""); err != nil {
		t.Fatal(err)
	}
	got, err := e.cl.Get(ctx, token.PrefixRevoked+c.JTI)
	if err != nil || len(got.Kvs) != 1 || got.Kvs[0].Lease == 0 {
		t.Fatalf("revoked record %v %v (want one, on a lease)", got, err)
	}
	ttl, err := e.cl.TimeToLive(ctx, got.Kvs[0].Lease, false)
	if err != nil {
		t.Fatal(err)
	}
	if ttl.TTL < 600 || ttl.TTL > 640 {
		t.Fatalf("revocation lease TTL %d s, want exp - now + skew", ttl.TTL)
	}
	tampered := r.AccessToken[:len(r.AccessToken)-4] + "AAAA"
	if err := e.svc.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_AccessToken{AccessToken: tampered}}, "", ""); !errors.Is(err, token.ErrInvalidToken) {
		t.Fatalf("tampered token: %v", err)
	}
	if err := e.svc.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_Jti{Jti: "some-jti"}}, "", ""); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.Revoke(ctx, &iamv1.RevokeRequest{Target: &iamv1.RevokeRequest_Jti{Jti: "bad/jti"}}, "", ""); !errors.Is(err, token.ErrInvalidRequest) {
		t.Fatalf("malformed jti: %v", err)
	}
}
