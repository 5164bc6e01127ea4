package token

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"

	"github.com/lestrrat-go/jwx/v3/jws"
)

// Claims are the claims of an access token (RFC 9068 §2.2), as serialized.
type Claims struct {
	Issuer    string   `json:"iss"`
	Subject   string   `json:"sub"`
	Audience  []string `json:"aud"`
	ExpiresAt int64    `json:"exp"`
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf"`
	JTI       string   `json:"jti"`
	ClientID  string   `json:"client_id"`
	// Project is the token's scope; omitted for an unscoped token.
	Project string `json:"project,omitempty"`
}

// NewJTI returns a random 128-bit token id, base64url.
func NewJTI() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Minter signs access tokens with the active key of a KeySet. It is safe for concurrent use.
type Minter struct {
	Keys KeySet
}

// Mint builds claims for sub issued at iat (whole seconds) valid for ttl, and signs
// them. The JWS header is {"alg", "kid", "typ": "at+jwt"}.
func (m *Minter) Mint(c Claims, iat time.Time, ttl time.Duration) (string, Claims, error) {
	signer, err := m.Keys.Active()
	if err != nil {
		return "", c, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	c.IssuedAt = iat.Unix()
	c.NotBefore = c.IssuedAt
	c.ExpiresAt = iat.Add(ttl).Unix()
	if c.JTI == "" {
		c.JTI = NewJTI()
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return "", c, err
	}
	h := jws.NewHeaders()
	_ = h.Set(jws.TypeKey, "at+jwt")
	_ = h.Set(jws.KeyIDKey, signer.Kid)
	out, err := jws.Sign(payload, jws.WithKey(signer.Algorithm, signer.Key, jws.WithProtectedHeaders(h)))
	if err != nil {
		return "", c, fmt.Errorf("token: sign: %w", err)
	}
	return string(out), c, nil
}
