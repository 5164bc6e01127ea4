package token_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/iam/internal/token"
)

// staticKeys is a KeySet with one fixed signer.
type staticKeys struct{ s *keys.Signer }

func (k staticKeys) Active() (*keys.Signer, error) { return k.s, nil }
func (k staticKeys) PublicKeys() jwk.Set           { return jwk.NewSet() }

// BenchmarkIssue measures signing one access token (claims, JSON, JWS) with each algorithm;
// the grants add one ChainFire read (watermarks) and the credential check on top.
func BenchmarkIssue(b *testing.B) {
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, s := range []*keys.Signer{
		{Kid: "k-ed", Alg: keys.AlgEdDSA, Algorithm: jwa.EdDSA(), Key: edKey},
		{Kid: "k-ec", Alg: keys.AlgES256, Algorithm: jwa.ES256(), Key: ecKey},
	} {
		b.Run(s.Alg, func(b *testing.B) {
			m := &token.Minter{Keys: staticKeys{s}}
			c := token.Claims{Issuer: token.DefaultIssuer, Subject: "user:alice", Audience: []string{"plasmacloud"}, ClientID: "iam-cli", Project: "p1"}
			now := time.Now().Truncate(time.Second)
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := m.Mint(c, now, 10*time.Minute); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
