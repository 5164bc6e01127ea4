package store

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/argon2"
)

// HashParams are the argon2id parameters used for new password hashes. Stored hashes
// carry their own parameters (PHC string), so changing these affects only hashes made
// afterwards; verification always uses the parameters in the hash.
type HashParams struct {
	Time      uint32 // passes over memory
	MemoryKiB uint32 // memory in KiB
	Threads   uint8
	KeyLen    uint32 // bytes of output
	SaltLen   uint32 // bytes of random salt
}

// DefaultHashParams follows OWASP's 2023 argon2id recommendation (m=19 MiB, t=2, p=1):
// about 20-40 ms and 19 MiB per login on one core.
func DefaultHashParams() HashParams {
	return HashParams{Time: 2, MemoryKiB: 19 * 1024, Threads: 1, KeyLen: 32, SaltLen: 16}
}

// TestHashParams are cheap parameters for tests only (never for production).
func TestHashParams() HashParams {
	return HashParams{Time: 1, MemoryKiB: 64, Threads: 1, KeyLen: 32, SaltLen: 16}
}

func (p HashParams) validate() error {
	if p.Time == 0 || p.MemoryKiB < 8*uint32(max(p.Threads, 1)) || p.Threads == 0 || p.KeyLen < 16 || p.SaltLen < 8 {
		return fmt.Errorf("%w: argon2id parameters %+v out of range", ErrInvalid, p)
	}
	return nil
}

// errBadHash marks a stored hash that cannot be parsed: verification fails closed.
var errBadHash = errors.New("iam: malformed stored hash")

var b64 = base64.RawStdEncoding

// HashPassword returns the argon2id PHC string of password with a fresh random salt:
// $argon2id$v=19$m=<KiB>,t=<time>,p=<threads>$<salt>$<hash> (unpadded standard base64).
func HashPassword(p HashParams, password string) (string, error) {
	salt := make([]byte, p.SaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	key := argon2.IDKey([]byte(password), salt, p.Time, p.MemoryKiB, p.Threads, p.KeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.MemoryKiB, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// sha256Prefix marks a client-secret hash (see hashSecret).
const sha256Prefix = "$sha256$"

// hashSecret hashes a service account's client secret. Secrets are 32 random bytes, so
// a plain SHA-256 is as hard to invert as the secret is to guess, and costs
// microseconds instead of argon2id's tens of milliseconds and megabytes: a
// client_credentials grant stays cheap and cannot be used to exhaust IAM's memory.
// The format is "$sha256$<unpadded base64url of the digest>".
func hashSecret(secret string) string {
	d := sha256.Sum256([]byte(secret))
	return sha256Prefix + base64.RawURLEncoding.EncodeToString(d[:])
}

// VerifyHash reports whether secret matches the stored hash, in time independent of
// where they differ. It accepts argon2id PHC strings and "$sha256$" secret hashes; a
// malformed hash never matches (the error says why).
func VerifyHash(stored, secret string) (bool, error) {
	if rest, ok := strings.CutPrefix(stored, sha256Prefix); ok {
		want, err := base64.RawURLEncoding.DecodeString(rest)
		if err != nil || len(want) != sha256.Size {
			return false, errBadHash
		}
		got := sha256.Sum256([]byte(secret))
		return subtle.ConstantTimeCompare(got[:], want) == 1, nil
	}
	parts := strings.Split(stored, "$")
	// "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var version int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, errBadHash
	}
	var m, t uint32
	var p uint8
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &m, &t, &p); err != nil {
		return false, errBadHash
	}
	salt, err1 := b64.DecodeString(parts[4])
	want, err2 := b64.DecodeString(parts[5])
	// Bounds keep a corrupted record from making one login allocate gigabytes.
	if err1 != nil || err2 != nil || len(want) < 16 || len(want) > 128 || t == 0 || t > 16 || p == 0 || m < 8 || m > 1<<21 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(secret), salt, t, m, p, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// newClientSecret returns 32 random bytes as unpadded base64url (43 characters).
func newClientSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}
