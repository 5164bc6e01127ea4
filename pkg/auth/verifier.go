package auth

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jws"
)

// Defaults of [VerifierConfig] fields left at zero.
const (
	DefaultIssuer       = "https://iam.plasmacloud.internal"
	DefaultAudience     = "plasmacloud"
	DefaultClockSkew    = 30 * time.Second
	DefaultMaxTokenSize = 8 << 10
	DefaultCacheSize    = 4096
)

// DefaultAlgorithms are the signature algorithms accepted when
// [VerifierConfig.Algorithms] is empty.
var defaultAlgorithms = []string{AlgEdDSA, AlgES256}

// VerifierConfig configures a [Verifier].
type VerifierConfig struct {
	// Keys looks up signing keys by kid. Required.
	Keys KeySource
	// Policy, when set, is consulted for revocation (revoked jti and
	// watermarks) after every successful signature and claims check; a
	// stale policy then fails verification with [ErrPolicyStale]. Nil skips
	// revocation (only for callers that check it themselves).
	Policy *Policy
	// Issuer is the required iss (default [DefaultIssuer]).
	Issuer string
	// Audience must be one of the token's aud values (default
	// [DefaultAudience]).
	Audience string
	// Algorithms is the allowlist of JWS algorithms (default EdDSA and
	// ES256). Only [AlgEdDSA] and [AlgES256] may be listed: "none" and
	// HMAC algorithms are refused by NewVerifier.
	Algorithms []string
	// ClockSkew is the tolerance applied to exp, nbf and iat (default 30 s;
	// negative means none).
	ClockSkew time.Duration
	// MaxTokenSize bounds the compact token; longer tokens are refused
	// before any parsing (default 8 KiB).
	MaxTokenSize int
	// CacheSize bounds the cache of tokens whose signature and claims were
	// verified (default 4096 entries; negative disables it). A cache hit
	// skips parsing and the signature check, never the time checks, the
	// key's presence in the key source, or revocation.
	CacheSize int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Verifier checks access tokens offline: signature against a [KeySource],
// header, claims, then revocation against a [Policy]. It is safe for
// concurrent use and meant to be shared by every request of a service.
type Verifier struct {
	cfg   VerifierConfig
	algs  map[string]jwa.SignatureAlgorithm
	skew  time.Duration
	cache *tokenCache
}

// NewVerifier validates cfg and returns a verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Keys == nil {
		return nil, errors.New("auth: verifier needs a key source")
	}
	if cfg.Issuer == "" {
		cfg.Issuer = DefaultIssuer
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = defaultAlgorithms
	}
	if cfg.MaxTokenSize <= 0 {
		cfg.MaxTokenSize = DefaultMaxTokenSize
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	v := &Verifier{cfg: cfg, algs: make(map[string]jwa.SignatureAlgorithm)}
	switch {
	case cfg.ClockSkew == 0:
		v.skew = DefaultClockSkew
	case cfg.ClockSkew > 0:
		v.skew = cfg.ClockSkew
	}
	for _, a := range cfg.Algorithms {
		switch a {
		case AlgEdDSA:
			v.algs[a] = jwa.EdDSA()
		case AlgES256:
			v.algs[a] = jwa.ES256()
		default:
			return nil, fmt.Errorf("auth: algorithm %q cannot be allowed (only %s, %s)", a, AlgEdDSA, AlgES256)
		}
	}
	switch {
	case cfg.CacheSize == 0:
		v.cache = newTokenCache(DefaultCacheSize)
	case cfg.CacheSize > 0:
		v.cache = newTokenCache(cfg.CacheSize)
	}
	return v, nil
}

// Policy returns the policy the verifier checks revocation against (may be
// nil).
func (v *Verifier) Policy() *Policy { return v.cfg.Policy }

// invalid wraps ErrTokenInvalid with a reason.
func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrTokenInvalid}, args...)...)
}

// header params that carry or point at key material: a token never chooses
// its own key.
var keyHeaderParams = map[string]bool{"jku": true, "x5u": true, "jwk": true, "x5c": true}

// Verify checks the compact JWS raw and returns the identity it carries. In
// order: size (at most MaxTokenSize, else refused before parsing), three
// base64url parts, header (alg in the allowlist — never "none" or HS*;
// typ "at+jwt" or "application/at+jwt", case-insensitive; kid present; no
// jku, x5u, jwk or x5c, which are refused and never fetched; no crit or
// b64), key lookup by kid (ctx bounds a refresh for an unknown kid) whose
// algorithm must equal the header's, signature, claims (iss, aud contains
// Audience, exp, nbf and iat within the clock skew, sub and jti present),
// then revocation through the Policy.
//
// Errors wrap [ErrTokenInvalid], [ErrTokenExpired], [ErrTokenNotYetValid],
// [ErrUnknownKey], [ErrKeysUnavailable], [ErrTokenRevoked] or
// [ErrPolicyStale]; none contains the token.
func (v *Verifier) Verify(ctx context.Context, raw string) (Identity, error) {
	if len(raw) > v.cfg.MaxTokenSize {
		return Identity{}, invalid("token of %d bytes exceeds the limit of %d", len(raw), v.cfg.MaxTokenSize)
	}
	now := v.cfg.Now()
	if v.cache != nil {
		if ct, ok := v.cache.get(raw); ok {
			id, err := v.recheck(ctx, ct, now)
			id.Audience = slices.Clone(id.Audience) // the cached slice stays private
			return id, err
		}
	}
	ct, err := v.verifySignedToken(ctx, raw, now)
	if err != nil {
		return Identity{}, err
	}
	if v.cache != nil {
		v.cache.put(raw, ct, now)
	}
	return ct.id, v.checkRevoked(ct.id)
}

// recheck re-validates a cached verified token: its key must still be the
// one published under its kid, its times must still hold, and it must not
// be revoked.
func (v *Verifier) recheck(ctx context.Context, ct *cachedToken, now time.Time) (Identity, error) {
	k, err := v.cfg.Keys.Key(ctx, ct.key.KID)
	if err != nil {
		return Identity{}, err
	}
	if k.Alg != ct.key.Alg || !samePublicKey(k.Key, ct.key.Key) {
		v.cache.remove(ct.raw)
		return v.Verify(ctx, ct.raw)
	}
	if err := v.checkTimes(ct.id.ExpiresAt, ct.nbf, ct.id.IssuedAt, now); err != nil {
		return Identity{}, err
	}
	return ct.id, v.checkRevoked(ct.id)
}

func (v *Verifier) checkRevoked(id Identity) error {
	if v.cfg.Policy == nil {
		return nil
	}
	return v.cfg.Policy.CheckRevoked(id)
}

// samePublicKey compares two public keys by value.
func samePublicKey(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(x crypto.PublicKey) bool })
	if !ok {
		return false
	}
	return ea.Equal(b)
}

// tokenHeader is the parsed JOSE header.
type tokenHeader struct {
	alg, typ, kid string
}

// parseHeader decodes and checks the protected header. Every refusal is
// ErrTokenInvalid.
func (v *Verifier) parseHeader(b64 string) (tokenHeader, error) {
	var h tokenHeader
	hb, err := base64.RawURLEncoding.DecodeString(b64)
	if err != nil {
		return h, invalid("header is not base64url")
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(hb, &fields); err != nil || fields == nil {
		return h, invalid("header is not a JSON object")
	}
	for name := range fields {
		switch {
		case keyHeaderParams[name]:
			return h, invalid("header offers key material (%q): keys come only from IAM's key set", name)
		case name == "crit" || name == "b64" || name == "zip":
			return h, invalid("header parameter %q is not supported", name)
		}
	}
	str := func(name string) (string, error) {
		raw, ok := fields[name]
		if !ok {
			return "", nil
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", invalid("header %q is not a string", name)
		}
		return s, nil
	}
	if h.alg, err = str("alg"); err != nil {
		return h, err
	}
	if h.typ, err = str("typ"); err != nil {
		return h, err
	}
	if h.kid, err = str("kid"); err != nil {
		return h, err
	}
	switch {
	case h.alg == "":
		return h, invalid("header has no alg")
	case strings.EqualFold(h.alg, "none"):
		return h, invalid(`algorithm "none" is refused`)
	case strings.HasPrefix(strings.ToUpper(h.alg), "HS"):
		return h, invalid("HMAC algorithm %.16q is refused", h.alg)
	}
	if _, ok := v.algs[h.alg]; !ok {
		return h, invalid("algorithm %.16q is not allowed", h.alg)
	}
	if !strings.EqualFold(h.typ, "at+jwt") && !strings.EqualFold(h.typ, "application/at+jwt") {
		return h, invalid("typ %.32q is not an access token (at+jwt)", h.typ)
	}
	if h.kid == "" {
		return h, invalid("header has no kid")
	}
	return h, nil
}

// claimSet is the JWT payload as IAM issues it (RFC 9068 plus project).
type claimSet struct {
	Iss      string       `json:"iss"`
	Sub      string       `json:"sub"`
	Aud      audience     `json:"aud"`
	Exp      *numericDate `json:"exp"`
	Nbf      *numericDate `json:"nbf"`
	Iat      *numericDate `json:"iat"`
	Jti      string       `json:"jti"`
	ClientID string       `json:"client_id"`
	Project  string       `json:"project"`
}

// audience is aud: a string or an array of strings.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*a = audience{s}
		return nil
	}
	var ss []string
	if err := json.Unmarshal(b, &ss); err != nil {
		return err
	}
	*a = ss
	return nil
}

// numericDate is a JWT NumericDate (seconds since the epoch, possibly
// fractional).
type numericDate struct{ t time.Time }

func (d *numericDate) UnmarshalJSON(b []byte) error {
	f, err := strconv.ParseFloat(string(bytes.TrimSpace(b)), 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<40 {
		return errors.New("bad NumericDate")
	}
	sec, frac := math.Modf(f)
	d.t = time.Unix(int64(sec), int64(frac*1e9))
	return nil
}

// cachedToken is a token whose signature and claims verified.
type cachedToken struct {
	raw string
	id  Identity
	nbf time.Time // zero when absent
	key PublicKey
}

// verifySignedToken does every check but revocation.
func (v *Verifier) verifySignedToken(ctx context.Context, raw string, now time.Time) (*cachedToken, error) {
	if raw == "" {
		return nil, ErrTokenMissing
	}
	dot1 := strings.IndexByte(raw, '.')
	if dot1 < 0 || strings.Count(raw, ".") != 2 {
		return nil, invalid("not a compact JWS (three dot-separated parts)")
	}
	h, err := v.parseHeader(raw[:dot1])
	if err != nil {
		return nil, err
	}
	key, err := v.cfg.Keys.Key(ctx, h.kid)
	if err != nil {
		return nil, err
	}
	if key.Alg != h.alg {
		return nil, invalid("token alg %q does not match key %q (%s)", h.alg, h.kid, key.Alg)
	}
	payload, err := jws.VerifyCompactFast(key.Key, []byte(raw), v.algs[h.alg])
	if err != nil {
		return nil, invalid("signature does not verify")
	}
	var c claimSet
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, invalid("claims are not valid JSON: %v", err)
	}
	if c.Iss != v.cfg.Issuer {
		return nil, invalid("issuer %.64q is not %q", c.Iss, v.cfg.Issuer)
	}
	found := false
	for _, a := range c.Aud {
		if a == v.cfg.Audience {
			found = true
			break
		}
	}
	if !found {
		return nil, invalid("audience does not include %q", v.cfg.Audience)
	}
	switch {
	case c.Exp == nil:
		return nil, invalid("no exp claim")
	case c.Iat == nil:
		return nil, invalid("no iat claim")
	case c.Sub == "":
		return nil, invalid("no sub claim")
	case c.Jti == "":
		return nil, invalid("no jti claim")
	}
	ct := &cachedToken{
		raw: raw,
		key: key,
		id: Identity{
			Subject:   c.Sub,
			Project:   c.Project,
			ClientID:  c.ClientID,
			JTI:       c.Jti,
			Audience:  c.Aud,
			IssuedAt:  c.Iat.t,
			ExpiresAt: c.Exp.t,
		},
	}
	if c.Nbf != nil {
		ct.nbf = c.Nbf.t
	}
	if err := v.checkTimes(ct.id.ExpiresAt, ct.nbf, ct.id.IssuedAt, now); err != nil {
		return nil, err
	}
	return ct, nil
}

// checkTimes applies the clock skew: the token is expired from exp+skew on,
// and not yet valid before nbf-skew or when iat is after now+skew.
func (v *Verifier) checkTimes(exp, nbf, iat, now time.Time) error {
	if !now.Before(exp.Add(v.skew)) {
		return fmt.Errorf("%w at %s", ErrTokenExpired, exp.UTC().Format(time.RFC3339))
	}
	if !nbf.IsZero() && now.Before(nbf.Add(-v.skew)) {
		return fmt.Errorf("%w before %s", ErrTokenNotYetValid, nbf.UTC().Format(time.RFC3339))
	}
	if iat.After(now.Add(v.skew)) {
		return fmt.Errorf("%w: issued in the future (%s)", ErrTokenNotYetValid, iat.UTC().Format(time.RFC3339))
	}
	return nil
}
