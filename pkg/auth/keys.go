package auth

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"errors"
	"fmt"
	"sync"

	"github.com/lestrrat-go/jwx/v3/jwk"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// Signature algorithms a [PublicKey] can carry. HMAC and "none" have no
// place here: a verifier holds only public keys.
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
)

// PublicKey is one published token-signing key.
type PublicKey struct {
	// KID is the key id tokens name in their "kid" header.
	KID string
	// Alg is the one algorithm the key verifies: [AlgEdDSA] or [AlgES256].
	// A token whose header names another algorithm is refused even if the
	// algorithm is allowed.
	Alg string
	// Key is an ed25519.PublicKey (EdDSA) or an *ecdsa.PublicKey on P-256
	// (ES256).
	Key crypto.PublicKey
}

// KeySource looks up token-signing public keys by kid. Implementations must
// be safe for concurrent use; Key is called on every verification, so a hit
// must be cheap. Key may block (to refresh a key set) no longer than ctx
// allows. A kid it does not know is [ErrUnknownKey]; a source that cannot
// answer at all returns an error wrapping [ErrKeysUnavailable].
//
// Implementations: [*JWKS] (services: JWKS over HTTP) and [*StaticKeys] (IAM
// itself, tests).
type KeySource interface {
	Key(ctx context.Context, kid string) (PublicKey, error)
}

// algForKey returns the algorithm a public key verifies, or an error for a
// key type this package does not accept.
func algForKey(k crypto.PublicKey) (string, error) {
	switch k := k.(type) {
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return "", errors.New("ed25519 key of wrong size")
		}
		return AlgEdDSA, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return "", errors.New("ecdsa key not on P-256")
		}
		return AlgES256, nil
	}
	return "", fmt.Errorf("unsupported key type %T", k)
}

// checkKey validates k: a kid, a supported key type, and an Alg matching
// the key type (an empty Alg is filled in from the key type).
func checkKey(k PublicKey) (PublicKey, error) {
	if k.KID == "" {
		return k, errors.New("auth: key without kid")
	}
	alg, err := algForKey(k.Key)
	if err != nil {
		return k, fmt.Errorf("auth: key %q: %w", k.KID, err)
	}
	if k.Alg == "" {
		k.Alg = alg
	}
	if k.Alg != alg {
		return k, fmt.Errorf("auth: key %q: alg %q does not fit its key type (%s)", k.KID, k.Alg, alg)
	}
	return k, nil
}

// ParseJWK parses one public JWK (JSON), as in a JWKS or in
// iamv1.SigningKey.public_jwk. It needs a kid, an OKP Ed25519 or EC P-256
// key, and an "alg" (if present) that matches the key type. Private members,
// if any, are dropped.
func ParseJWK(data []byte) (PublicKey, error) {
	k, err := jwk.ParseKey(data)
	if err != nil {
		return PublicKey{}, fmt.Errorf("auth: parse jwk: %w", err)
	}
	return fromJWK(k)
}

// ParseJWKS parses a JWK set ({"keys": [...]}). Keys that are not signature
// keys this package can use (wrong type or curve, "use" other than "sig", no
// kid) are skipped and reported in the returned error (joined), which is
// informational when keys is not empty.
func ParseJWKS(data []byte) (keys []PublicKey, skipped error) {
	set, err := jwk.Parse(data)
	if err != nil {
		return nil, fmt.Errorf("auth: parse jwks: %w", err)
	}
	var errs []error
	for i := range set.Len() {
		k, _ := set.Key(i)
		if use, ok := k.KeyUsage(); ok && use != "sig" {
			errs = append(errs, fmt.Errorf("auth: jwks key %d: use %q is not sig", i, use))
			continue
		}
		pk, err := fromJWK(k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		keys = append(keys, pk)
	}
	return keys, errors.Join(errs...)
}

// fromJWK converts a jwx key to a PublicKey.
func fromJWK(k jwk.Key) (PublicKey, error) {
	kid, _ := k.KeyID()
	pub, err := k.PublicKey()
	if err != nil {
		return PublicKey{}, fmt.Errorf("auth: jwk %q: %w", kid, err)
	}
	var raw any
	if err := jwk.Export(pub, &raw); err != nil {
		return PublicKey{}, fmt.Errorf("auth: jwk %q: %w", kid, err)
	}
	pk := PublicKey{KID: kid, Key: raw}
	if a, ok := k.Algorithm(); ok {
		pk.Alg = a.String()
	}
	return checkKey(pk)
}

// StaticKeys is an in-process [KeySource]: a key map the owner fills. IAM
// plugs its own keys in with it (feeding [StaticKeys.ApplySigningKey] from
// its key store); tests use it directly. It never fetches anything. Safe for
// concurrent use.
type StaticKeys struct {
	mu   sync.RWMutex
	keys map[string]PublicKey
}

var _ KeySource = (*StaticKeys)(nil)

// NewStaticKeys returns a source holding keys; it fails if one is invalid
// (see [StaticKeys.Put]).
func NewStaticKeys(keys ...PublicKey) (*StaticKeys, error) {
	s := &StaticKeys{keys: make(map[string]PublicKey, len(keys))}
	for _, k := range keys {
		if err := s.Put(k); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Put adds or replaces a key. It fails for a key without kid, of an
// unsupported type, or whose Alg does not fit its type.
func (s *StaticKeys) Put(k PublicKey) error {
	k, err := checkKey(k)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.keys == nil {
		s.keys = make(map[string]PublicKey)
	}
	s.keys[k.KID] = k
	return nil
}

// Remove drops the key kid; tokens it signed stop verifying at once.
func (s *StaticKeys) Remove(kid string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, kid)
}

// ApplySigningKey mirrors one signing key's lifecycle: pending, active and
// retired keys are published (Put from public_jwk), a removed key is
// dropped. Pass deleted=true for a key deleted from the store.
func (s *StaticKeys) ApplySigningKey(k *iamv1.SigningKey, deleted bool) error {
	if deleted || k.GetState() == iamv1.KeyState_KEY_STATE_REMOVED {
		s.Remove(k.GetKid())
		return nil
	}
	pk, err := ParseJWK([]byte(k.GetPublicJwk()))
	if err != nil {
		return err
	}
	if pk.KID != k.GetKid() {
		return fmt.Errorf("auth: signing key %q: public_jwk has kid %q", k.GetKid(), pk.KID)
	}
	if k.GetAlg() != "" && k.GetAlg() != pk.Alg {
		return fmt.Errorf("auth: signing key %q: alg %q but the key verifies %q", k.GetKid(), k.GetAlg(), pk.Alg)
	}
	return s.Put(pk)
}

// Key implements [KeySource].
func (s *StaticKeys) Key(_ context.Context, kid string) (PublicKey, error) {
	s.mu.RLock()
	k, ok := s.keys[kid]
	s.mu.RUnlock()
	if !ok {
		return PublicKey{}, fmt.Errorf("%w: kid %q", ErrUnknownKey, kid)
	}
	return k, nil
}
