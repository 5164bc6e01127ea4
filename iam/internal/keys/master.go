package keys

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strings"
)

// MasterKeySize is the length of the master key: AES-256.
const MasterKeySize = 32

// MasterKey encrypts and decrypts signing keys' private JWKs with AES-256-GCM. The key
// id is the additional authenticated data, so a ciphertext cannot be moved to another
// key's record. A MasterKey is immutable and safe for concurrent use.
type MasterKey struct {
	aead cipher.AEAD
}

// NewMasterKey wraps a 32-byte key.
func NewMasterKey(key []byte) (*MasterKey, error) {
	if len(key) != MasterKeySize {
		return nil, fmt.Errorf("%w: master key is %d bytes, want %d", ErrMasterKey, len(key), MasterKeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMasterKey, err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMasterKey, err)
	}
	return &MasterKey{aead: aead}, nil
}

// ParseMasterKey decodes a master key given as base64 (standard or URL alphabet, padded
// or not; surrounding white space ignored), as found in --master-key-file or
// IAM_MASTER_KEY. A file holding exactly 32 raw bytes is accepted too.
func ParseMasterKey(text []byte) (*MasterKey, error) {
	if len(text) == MasterKeySize {
		if mk, err := decodeBase64(string(text)); err != nil || len(mk) != MasterKeySize {
			return NewMasterKey(text) // raw bytes
		}
	}
	s := strings.TrimSpace(string(text))
	raw, err := decodeBase64(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64: %v", ErrMasterKey, err)
	}
	return NewMasterKey(raw)
}

// LoadMasterKey reads the master key from file when file is set, else from the value of
// the environment variable env. It fails when neither gives one.
func LoadMasterKey(file, env string) (*MasterKey, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrMasterKey, err)
		}
		return ParseMasterKey(b)
	}
	if v, ok := os.LookupEnv(env); ok && v != "" {
		return ParseMasterKey([]byte(v))
	}
	return nil, fmt.Errorf("%w: none given (--master-key-file or %s)", ErrMasterKey, env)
}

// InsecureDevMasterKey is a fixed, publicly known master key for development only.
func InsecureDevMasterKey() *MasterKey {
	mk, _ := NewMasterKey([]byte("plasmacloud-insecure-dev-key-32b"))
	return mk
}

// GenerateMasterKeyText returns a fresh random master key, base64 encoded.
func GenerateMasterKeyText() string {
	b := make([]byte, MasterKeySize)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

func decodeBase64(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if strings.ContainsAny(s, "-_") {
		return base64.RawURLEncoding.DecodeString(s)
	}
	return base64.RawStdEncoding.DecodeString(s)
}

// seal encrypts plaintext for the key kid; the result is base64(nonce || ciphertext).
func (m *MasterKey) seal(kid string, plaintext []byte) string {
	nonce := make([]byte, m.aead.NonceSize(), m.aead.NonceSize()+len(plaintext)+m.aead.Overhead())
	_, _ = rand.Read(nonce)
	out := m.aead.Seal(nonce, nonce, plaintext, []byte("iam-signing-key:"+kid))
	return base64.StdEncoding.EncodeToString(out)
}

// open reverses seal. A wrong master key fails with ErrMasterKey.
func (m *MasterKey) open(kid, sealed string) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(sealed)
	if err != nil || len(raw) < m.aead.NonceSize() {
		return nil, fmt.Errorf("keys: private part of key %s is malformed", kid)
	}
	n := m.aead.NonceSize()
	pt, err := m.aead.Open(nil, raw[:n], raw[n:], []byte("iam-signing-key:"+kid))
	if err != nil {
		return nil, fmt.Errorf("%w: cannot decrypt signing key %s (wrong --master-key-file or IAM_MASTER_KEY?)", ErrMasterKey, kid)
	}
	return pt, nil
}
