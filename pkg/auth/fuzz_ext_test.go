package auth_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"plasmacloud.dev/pkg/auth"
)

// FuzzVerify feeds arbitrary strings to Verify: it must never panic, never
// accept anything but a token really signed by the key, and never echo the
// input in its error.
func FuzzVerify(f *testing.F) {
	ed := newSigner(f, auth.AlgEdDSA, "k1")
	keys, err := auth.NewStaticKeys(ed.publicKey())
	if err != nil {
		f.Fatal(err)
	}
	clk := newClock(t0)
	p := auth.NewPolicy(auth.PolicyConfig{Now: clk.Now})
	mustApply(f, p, builtinSnapshot(1))
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: keys, Policy: p, Now: clk.Now, CacheSize: -1})
	if err != nil {
		f.Fatal(err)
	}
	valid := ed.token(f, t0, nil)
	want, err := v.Verify(context.Background(), valid)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add(ed.token(f, t0, func(h, _ map[string]any) { h["alg"] = "none" }))
	f.Add(ed.token(f, t0, func(h, _ map[string]any) { h["jku"] = "http://x" }))
	f.Add(ed.token(f, t0, func(_, c map[string]any) { c["exp"] = "soon"; c["aud"] = 7 }))
	f.Add("a.b.c")
	f.Add("..")
	f.Add("eyJhbGciOiJFZERTQSJ9..")
	f.Add(strings.Repeat("A", 9000))
	f.Fuzz(func(t *testing.T, raw string) {
		id, err := v.Verify(context.Background(), raw)
		if err == nil {
			// Only the signed claims may verify (a non-canonical base64
			// spelling of the same bytes is not a forgery).
			if id.JTI != want.JTI || id.Subject != want.Subject || id.Project != want.Project ||
				!id.ExpiresAt.Equal(want.ExpiresAt) {
				t.Fatalf("accepted claims that were not signed: %q (%v)", raw, id)
			}
			return
		}
		if len(raw) > 16 && strings.Contains(err.Error(), raw) {
			t.Fatalf("error echoes the input: %v", err)
		}
		if !errors.Is(err, auth.ErrTokenInvalid) && !errors.Is(err, auth.ErrTokenMissing) &&
			!errors.Is(err, auth.ErrUnknownKey) && !errors.Is(err, auth.ErrTokenExpired) &&
			!errors.Is(err, auth.ErrTokenNotYetValid) {
			t.Fatalf("unexpected error class: %v", err)
		}
	})
}

// FuzzBearerToken checks Authorization header parsing: no panic, a token
// comes back only for "Bearer <token68>", and errors never echo the header.
func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"", "Bearer abc.def.ghi", "bearer x", "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Bearer a b",
		"Bearer abc==", "Bearer ab=c", "BEARER  tok", "Bearer \x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		tok, err := auth.BearerToken(h)
		if err != nil {
			if tok != "" {
				t.Fatal("token with error")
			}
			if len(h) > 8 && strings.Contains(err.Error(), h) {
				t.Fatalf("error echoes the header: %v", err)
			}
			return
		}
		if tok == "" || !strings.EqualFold(h[:7], "bearer ") || !strings.HasSuffix(h, tok) || strings.ContainsAny(tok, " \t\r\n") {
			t.Fatalf("BearerToken(%q) = %q", h, tok)
		}
	})
}
