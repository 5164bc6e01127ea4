package store

import (
	"strings"
	"testing"
	"time"
)

func TestHashPassword(t *testing.T) {
	p := TestHashParams()
	h, err := HashPassword(p, "correct horse")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=64,t=1,p=1$") {
		t.Fatalf("hash %q is not an argon2id PHC string with the parameters", h)
	}
	h2, _ := HashPassword(p, "correct horse")
	if h == h2 {
		t.Fatal("two hashes of one password are equal: salt not random")
	}
	for _, tc := range []struct {
		name, stored, pw string
		ok, bad          bool
	}{
		{"right", h, "correct horse", true, false},
		{"wrong", h, "correct horsf", false, false},
		{"empty", h, "", false, false},
		{"truncated", h[:len(h)-4], "correct horse", false, false},
		{"garbage", "$argon2id$v=19$m=x$y$z", "x", false, true},
		{"other alg", "$bcrypt$x", "x", false, true},
		{"huge memory", "$argon2id$v=19$m=99999999,t=1,p=1$c2FsdHNhbHQ$" + strings.Repeat("A", 43), "x", false, true},
		{"sha256 right", hashSecret("s3cret"), "s3cret", true, false},
		{"sha256 wrong", hashSecret("s3cret"), "s3creT", false, false},
		{"sha256 corrupt", "$sha256$abc", "x", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ok, err := VerifyHash(tc.stored, tc.pw)
			if ok != tc.ok || (err != nil) != tc.bad {
				t.Fatalf("VerifyHash = %v, %v; want %v, bad=%v", ok, err, tc.ok, tc.bad)
			}
		})
	}
}

func TestClientSecret(t *testing.T) {
	s, err := newClientSecret()
	if err != nil || len(s) != 43 || strings.ContainsAny(s, "+/=") {
		t.Fatalf("secret %q, %v: want 43 base64url characters", s, err)
	}
}

func TestCeilSecond(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		in, want time.Time
	}{
		{base, base},
		{base.Add(time.Nanosecond), base.Add(time.Second)},
		{base.Add(999 * time.Millisecond), base.Add(time.Second)},
	} {
		if got := ceilSecond(tc.in); !got.Equal(tc.want) {
			t.Errorf("ceilSecond(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
}
