package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwt"

	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// benchPolicy is a policy with the built-in roles and 1000 principals, each
// with a project binding and a global one.
func benchPolicy(b *testing.B) *auth.Policy {
	p := auth.NewPolicy(auth.PolicyConfig{Staleness: -1})
	var extra []*iamv1.PolicyChange
	for i := range 1000 {
		u := fmt.Sprintf("user:u%d", i)
		extra = append(extra, put(allow(u, "member", fmt.Sprintf("p%d", i%50))), put(allow(u, "reader", "")))
	}
	mustApply(b, p, builtinSnapshot(1, extra...))
	return p
}

// benchVerifier verifies against a JWKS cache loaded from an httptest IAM
// (so "key cached" is the real lookup path), with revocation and the
// policy check included.
func benchVerifier(b *testing.B, s *signer, cacheSize int) (*auth.Verifier, *auth.Policy) {
	iam := newFakeJWKS(b, s.jwk(b))
	keys, err := auth.NewJWKS(auth.JWKSConfig{Endpoints: []string{iam.srv.URL}})
	if err != nil {
		b.Fatal(err)
	}
	if err := keys.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	p := benchPolicy(b)
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: keys, Policy: p, CacheSize: cacheSize})
	if err != nil {
		b.Fatal(err)
	}
	return v, p
}

func benchVerify(b *testing.B, cacheSize int) {
	for _, alg := range []string{auth.AlgEdDSA, auth.AlgES256} {
		b.Run(alg, func(b *testing.B) {
			s := newSigner(b, alg, "k1")
			v, p := benchVerifier(b, s, cacheSize)
			tok := s.token(b, time.Now(), nil)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				id, err := v.Verify(ctx, tok)
				if err != nil {
					b.Fatal(err)
				}
				if err := p.Authorize(id, "vm.create"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyCold: every op parses the token and checks its signature
// (verified-token cache disabled); key lookup, revocation and the policy
// check included.
func BenchmarkVerifyCold(b *testing.B) { benchVerify(b, -1) }

// BenchmarkVerifyCached: the same token again, answered by the
// verified-token cache (time checks, key presence, revocation and the
// policy check still run).
func BenchmarkVerifyCached(b *testing.B) { benchVerify(b, 0) }

func BenchmarkAuthorize(b *testing.B) {
	p := benchPolicy(b)
	for _, c := range []struct {
		name, perm string
		id         auth.Identity
	}{
		{"project-allow", "vm.create", auth.Identity{Subject: "user:u7", Project: "p7"}},
		{"global-allow", "network.port.get", auth.Identity{Subject: "user:u7"}},
		{"deny", "iam.user.create", auth.Identity{Subject: "user:u7", Project: "p7"}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = p.Authorize(c.id, c.perm)
			}
		})
	}
}

// BenchmarkPeer measures, in the same run as BenchmarkVerifyCold, what verification
// costs without pkg/auth: "signature" is the bare signature check of the token's
// signing input (crypto/ed25519, crypto/ecdsa) — the floor; "jwx" is
// lestrrat-go/jwx's own jwt.Parse with the key given and claims validated, what a
// service would do with the library alone (no kid lookup, revocation or policy).
func BenchmarkPeer(b *testing.B) {
	for _, alg := range []string{auth.AlgEdDSA, auth.AlgES256} {
		s := newSigner(b, alg, "k1")
		tok := s.token(b, time.Now(), nil)
		dot := strings.LastIndexByte(tok, '.')
		input := []byte(tok[:dot])
		sig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
		if err != nil {
			b.Fatal(err)
		}
		b.Run("signature/"+alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var ok bool
				switch pub := s.pub.(type) {
				case ed25519.PublicKey:
					ok = ed25519.Verify(pub, input, sig)
				case *ecdsa.PublicKey:
					h := sha256.Sum256(input)
					r, sv := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
					ok = ecdsa.Verify(pub, h[:], r, sv)
				}
				if !ok {
					b.Fatal("signature does not verify")
				}
			}
		})
		jalg := jwa.EdDSA()
		if alg == auth.AlgES256 {
			jalg = jwa.ES256()
		}
		b.Run("jwx/"+alg, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := jwt.ParseString(tok, jwt.WithKey(jalg, s.pub), jwt.WithValidate(true)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
