package keys

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// Prefix is where signing keys live in ChainFire: Prefix + kid.
const Prefix = "/iam/keys/"

// Supported JWS algorithms.
const (
	AlgEdDSA = "EdDSA"
	AlgES256 = "ES256"
)

// Sentinel errors.
var (
	// ErrMasterKey: the master key is missing, malformed, or does not decrypt a stored key.
	ErrMasterKey = errors.New("keys: master key")
	// ErrNoActiveKey: no signing key is active (the manager is not started, or the
	// active key cannot be decrypted). Issuance answers Unavailable.
	ErrNoActiveKey = errors.New("keys: no active signing key")
	// ErrUnknownKey: no published key has the kid asked for.
	ErrUnknownKey = errors.New("keys: unknown key id")
	// ErrAlgorithm: an algorithm other than EdDSA or ES256.
	ErrAlgorithm = errors.New("keys: unsupported algorithm")
)

// Signer is the private half of a signing key. It is immutable.
type Signer struct {
	Kid string
	// Alg is the JWS algorithm ("EdDSA" or "ES256"); Algorithm is the same as a jwa value.
	Alg       string
	Algorithm jwa.SignatureAlgorithm
	// Key is the raw private key (ed25519.PrivateKey or *ecdsa.PrivateKey).
	Key crypto.Signer
}

// record is the JSON value stored at Prefix + kid.
type record struct {
	Key     json.RawMessage `json:"key"`
	Private string          `json:"private"`
}

// stored is one decoded record with its ChainFire metadata.
type stored struct {
	key     *iamv1.SigningKey
	private string // sealed private JWK
	modRev  int64
}

// ValidAlgorithm checks alg.
func ValidAlgorithm(alg string) error {
	if alg != AlgEdDSA && alg != AlgES256 {
		return fmt.Errorf("%w %q: want EdDSA or ES256", ErrAlgorithm, alg)
	}
	return nil
}

func jwaOf(alg string) jwa.SignatureAlgorithm {
	if alg == AlgES256 {
		return jwa.ES256()
	}
	return jwa.EdDSA()
}

// newKid returns a key id that sorts by creation time and is unique.
func newKid(now time.Time) string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return now.UTC().Format("20060102T150405Z") + "-" + base64.RawURLEncoding.EncodeToString(b)
}

// generate creates a key pair and its stored form (state as given).
func generate(mk *MasterKey, alg string, state iamv1.KeyState, now time.Time) (*stored, error) {
	var priv crypto.Signer
	switch alg {
	case AlgEdDSA:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		priv = k
	case AlgES256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		priv = k
	default:
		return nil, ValidAlgorithm(alg)
	}
	kid := newKid(now)
	privJWK, err := jwk.Import(priv)
	if err != nil {
		return nil, fmt.Errorf("keys: import private key: %w", err)
	}
	pubJWK, err := jwk.Import(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("keys: import public key: %w", err)
	}
	for _, k := range []jwk.Key{privJWK, pubJWK} {
		_ = k.Set(jwk.KeyIDKey, kid)
		_ = k.Set(jwk.AlgorithmKey, jwaOf(alg))
		_ = k.Set(jwk.KeyUsageKey, "sig")
	}
	privJSON, err := json.Marshal(privJWK)
	if err != nil {
		return nil, err
	}
	pubJSON, err := json.Marshal(pubJWK)
	if err != nil {
		return nil, err
	}
	sk := &iamv1.SigningKey{
		Kid:        kid,
		Alg:        alg,
		State:      state,
		CreateTime: timestamppb.New(now),
		PublicJwk:  string(pubJSON),
	}
	if state == iamv1.KeyState_KEY_STATE_ACTIVE {
		sk.ActivateTime = timestamppb.New(now)
	}
	return &stored{key: sk, private: mk.seal(kid, privJSON)}, nil
}

// encode renders s as the stored JSON value.
func (s *stored) encode() (string, error) {
	kj, err := protojson.Marshal(s.key)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(record{Key: kj, Private: s.private})
	return string(b), err
}

// decode parses a stored value.
func decode(key string, value []byte, modRev int64) (*stored, error) {
	var r record
	if err := json.Unmarshal(value, &r); err != nil {
		return nil, fmt.Errorf("keys: %s: %w", key, err)
	}
	sk := &iamv1.SigningKey{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r.Key, sk); err != nil {
		return nil, fmt.Errorf("keys: %s: %w", key, err)
	}
	if sk.Kid == "" || strings.TrimPrefix(key, Prefix) != sk.Kid {
		return nil, fmt.Errorf("keys: %s: kid %q does not match its key", key, sk.Kid)
	}
	return &stored{key: sk, private: r.Private, modRev: modRev}, nil
}

// signer decrypts s's private key.
func (s *stored) signer(mk *MasterKey) (*Signer, error) {
	pt, err := mk.open(s.key.Kid, s.private)
	if err != nil {
		return nil, err
	}
	k, err := jwk.ParseKey(pt)
	if err != nil {
		return nil, fmt.Errorf("keys: private key %s: %w", s.key.Kid, err)
	}
	var raw any
	if err := jwk.Export(k, &raw); err != nil {
		return nil, fmt.Errorf("keys: private key %s: %w", s.key.Kid, err)
	}
	var cs crypto.Signer
	switch v := raw.(type) {
	case ed25519.PrivateKey:
		cs = v
	case *ed25519.PrivateKey:
		cs = *v
	case *ecdsa.PrivateKey:
		cs = v
	case ecdsa.PrivateKey:
		cs = &v
	default:
		return nil, fmt.Errorf("keys: private key %s: unexpected type %T", s.key.Kid, raw)
	}
	return &Signer{Kid: s.key.Kid, Alg: s.key.Alg, Algorithm: jwaOf(s.key.Alg), Key: cs}, nil
}

// publicOnly returns a copy of k for publication (it never holds private material, but
// callers get their own copy to keep the view immutable).
func publicOnly(k *iamv1.SigningKey) *iamv1.SigningKey {
	return &iamv1.SigningKey{
		Kid: k.Kid, Alg: k.Alg, State: k.State, CreateTime: k.CreateTime, ActivateTime: k.ActivateTime,
		RetireTime: k.RetireTime, RemoveTime: k.RemoveTime, PublicJwk: k.PublicJwk,
	}
}

// DecodePublic parses a stored key value into its public description only (for the
// policy stream, which never carries private material).
func DecodePublic(key string, value []byte) (*iamv1.SigningKey, error) {
	s, err := decode(key, value, 0)
	if err != nil {
		return nil, err
	}
	return publicOnly(s.key), nil
}
