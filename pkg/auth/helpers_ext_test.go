package auth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jws/jwsbb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// t0 is the fixed "now" of the tests.
var t0 = time.Unix(1_800_000_000, 0)

// clock is a settable test clock.
type clock struct{ n atomic.Int64 }

func newClock(t time.Time) *clock { c := &clock{}; c.Set(t); return c }
func (c *clock) Now() time.Time   { return time.Unix(0, c.n.Load()) }
func (c *clock) Set(t time.Time)  { c.n.Store(t.UnixNano()) }
func (c *clock) Add(d time.Duration) {
	c.n.Add(int64(d))
}

// signer is a test signing key.
type signer struct {
	kid, alg string
	priv     crypto.Signer
	pub      crypto.PublicKey
}

func newSigner(t testing.TB, alg, kid string) *signer {
	t.Helper()
	s := &signer{kid: kid, alg: alg}
	switch alg {
	case auth.AlgEdDSA:
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s.priv, s.pub = priv, pub
	case auth.AlgES256, "ES384":
		curve := elliptic.P256()
		if alg == "ES384" {
			curve = elliptic.P384()
		}
		priv, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s.priv, s.pub = priv, &priv.PublicKey
	default:
		t.Fatalf("alg %s", alg)
	}
	return s
}

func (s *signer) publicKey() auth.PublicKey {
	return auth.PublicKey{KID: s.kid, Alg: s.alg, Key: s.pub}
}

// jwk returns the public JWK JSON.
func (s *signer) jwk(t testing.TB) json.RawMessage {
	t.Helper()
	k, err := jwk.Import(s.pub)
	if err != nil {
		t.Fatal(err)
	}
	_ = k.Set(jwk.KeyIDKey, s.kid)
	_ = k.Set(jwk.AlgorithmKey, s.alg)
	_ = k.Set(jwk.KeyUsageKey, "sig")
	b, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// mint builds a compact JWS with header and claims, signed with key under
// alg (any jwsbb algorithm, including HS256 with a byte key); alg "none"
// gives an empty signature.
func mint(t testing.TB, header, claims map[string]any, alg string, key any) string {
	t.Helper()
	input := b64(header) + "." + b64(claims)
	if alg == "none" {
		return input + "."
	}
	sig, err := jwsbb.Sign(key, alg, []byte(input), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func (s *signer) header() map[string]any {
	return map[string]any{"alg": s.alg, "typ": "at+jwt", "kid": s.kid}
}

var jtiSeq atomic.Int64

// claims are valid claims at now.
func claims(now time.Time) map[string]any {
	return map[string]any{
		"iss":       auth.DefaultIssuer,
		"sub":       "user:alice",
		"aud":       []string{"plasmacloud"},
		"exp":       now.Add(10 * time.Minute).Unix(),
		"iat":       now.Unix(),
		"nbf":       now.Unix(),
		"jti":       fmt.Sprintf("jti-%d", jtiSeq.Add(1)),
		"client_id": "iam-cli",
		"project":   "p1",
	}
}

// token mints a token with the signer's header and claims changed by mod.
func (s *signer) token(t testing.TB, now time.Time, mod func(h, c map[string]any)) string {
	t.Helper()
	h, c := s.header(), claims(now)
	if mod != nil {
		mod(h, c)
	}
	return mint(t, h, c, s.alg, s.priv)
}

// fakeJWKS is an httptest IAM serving /.well-known/jwks.json over h2c.
type fakeJWKS struct {
	srv  *httptest.Server
	hits atomic.Int64
	fail atomic.Bool

	mu   sync.Mutex
	keys []json.RawMessage
}

func newFakeJWKS(t testing.TB, keys ...json.RawMessage) *fakeJWKS {
	t.Helper()
	f := &fakeJWKS{keys: keys}
	f.srv = newH2CServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != auth.JWKSPath {
			http.NotFound(w, r)
			return
		}
		f.hits.Add(1)
		if f.fail.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		f.mu.Lock()
		body, _ := json.Marshal(map[string]any{"keys": f.keys})
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	return f
}

func (f *fakeJWKS) setKeys(keys ...json.RawMessage) {
	f.mu.Lock()
	f.keys = keys
	f.mu.Unlock()
}

func newH2CServer(t testing.TB, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetHTTP1(true)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// Policy stream builders.

func put(obj any) *iamv1.PolicyChange {
	c := &iamv1.PolicyChange{Op: iamv1.PolicyChange_OP_PUT}
	setObj(c, obj)
	return c
}

func del(obj any) *iamv1.PolicyChange {
	c := &iamv1.PolicyChange{Op: iamv1.PolicyChange_OP_DELETE}
	setObj(c, obj)
	return c
}

func setObj(c *iamv1.PolicyChange, obj any) {
	switch o := obj.(type) {
	case *iamv1.Role:
		c.Object = &iamv1.PolicyChange_Role{Role: o}
	case *iamv1.Binding:
		c.Object = &iamv1.PolicyChange_Binding{Binding: o}
	case *iamv1.Watermark:
		c.Object = &iamv1.PolicyChange_Watermark{Watermark: o}
	case *iamv1.RevokedToken:
		c.Object = &iamv1.PolicyChange_RevokedToken{RevokedToken: o}
	case *iamv1.SigningKey:
		c.Object = &iamv1.PolicyChange_SigningKey{SigningKey: o}
	default:
		panic("unknown object")
	}
}

func role(name string, perms ...string) *iamv1.Role {
	return &iamv1.Role{Name: name, Permissions: perms}
}

func allow(principal, roleName, project string) *iamv1.Binding {
	return &iamv1.Binding{Principal: principal, Role: roleName, Project: project, Effect: iamv1.Effect_EFFECT_ALLOW}
}

func deny(principal, roleName, project string) *iamv1.Binding {
	return &iamv1.Binding{Principal: principal, Role: roleName, Project: project, Effect: iamv1.Effect_EFFECT_DENY}
}

func watermark(scope iamv1.WatermarkScope, name string, nb time.Time) *iamv1.Watermark {
	return &iamv1.Watermark{Scope: scope, Name: name, NotBefore: timestamppb.New(nb)}
}

// builtinSnapshot is a snapshot with the built-in roles, alice as member of
// p1 and bob as global reader.
func builtinSnapshot(rev int64, extra ...*iamv1.PolicyChange) *iamv1.WatchPolicyResponse {
	changes := []*iamv1.PolicyChange{
		put(role("admin", "*")),
		put(role("member", "vm.*", "network.*", "volume.*", "image.*", "metrics.*", "events.*", "*.get", "*.list", "*.watch")),
		put(role("reader", "*.get", "*.list", "*.watch")),
		put(allow("user:alice", "member", "p1")),
		put(allow("user:bob", "reader", "")),
	}
	return &iamv1.WatchPolicyResponse{Revision: rev, Snapshot: true, Changes: append(changes, extra...)}
}

func changes(rev int64, cs ...*iamv1.PolicyChange) *iamv1.WatchPolicyResponse {
	return &iamv1.WatchPolicyResponse{Revision: rev, Changes: cs}
}

func mustApply(t testing.TB, p *auth.Policy, msg *iamv1.WatchPolicyResponse) {
	t.Helper()
	if err := p.Apply(msg); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}
