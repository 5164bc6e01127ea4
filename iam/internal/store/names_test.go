package store

import (
	"errors"
	"regexp"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"alice", true}, {"a-1", true}, {"a" + strings.Repeat("b", 62), true},
		{"", false}, {"1a", false}, {"-a", false}, {"Alice", false}, {"a_b", false}, {"a.b", false},
		{"a" + strings.Repeat("b", 63), false}, {"a/b", false}, {"a:b", false}, {"é", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateName("user.name", tc.name)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "user.name")) {
				t.Fatalf("error %v should wrap ErrInvalid and name the field", err)
			}
		})
	}
}

func TestValidatePermission(t *testing.T) {
	for _, tc := range []struct {
		perm string
		ok   bool
	}{
		{"vm.create", true}, {"*", true}, {"vm.*", true}, {"*.get", true}, {"network.port.update", true},
		{"a-b.c1", true}, {"*.*", true},
		{"", false}, {".", false}, {"vm.", false}, {".vm", false}, {"vm..create", false}, {"VM.create", false},
		{"vm*", false}, {"v*m", false}, {"**", false}, {"vm.cre ate", false}, {"1vm", false}, {"vm.-x", false},
		{strings.Repeat("a", MaxPermissionLen+1), false},
	} {
		t.Run(tc.perm, func(t *testing.T) {
			err := ValidatePermission("role.permissions[0]", tc.perm)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidatePermission(%q) = %v, want ok=%v", tc.perm, err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "role.permissions[0]")) {
				t.Fatalf("error %v should wrap ErrInvalid and name the field", err)
			}
		})
	}
}

func TestParsePrincipal(t *testing.T) {
	for _, tc := range []struct {
		in, kind, name string
	}{
		{"user:alice", KindUser, "alice"}, {"serviceaccount:ci", KindServiceAccount, "ci"},
		{"group:x", "", ""}, {"user:", "", ""}, {"alice", "", ""}, {"user:Alice", "", ""}, {"user:a:b", "", ""},
	} {
		t.Run(tc.in, func(t *testing.T) {
			k, n, err := ParsePrincipal("principal", tc.in)
			if k != tc.kind || n != tc.name || (err == nil) != (tc.kind != "") {
				t.Fatalf("ParsePrincipal(%q) = %q, %q, %v", tc.in, k, n, err)
			}
		})
	}
}

var (
	nameRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	permRE = regexp.MustCompile(`^(\*|[a-z][a-z0-9-]*)(\.(\*|[a-z][a-z0-9-]*))*$`)
)

// FuzzValidateName checks the hand-written validator against the regular expression
// of the brief.
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "alice", "a-1", "1a", "", "A", "a_b", strings.Repeat("a", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidateName("f", s) == nil, nameRE.MatchString(s); got != want {
			t.Fatalf("ValidateName(%q) ok=%v, regexp says %v", s, got, want)
		}
	})
}

// FuzzValidatePermission checks the validator against the grammar (segments are "*"
// or [a-z][a-z0-9-]*, dot-separated) and the length bound.
func FuzzValidatePermission(f *testing.F) {
	for _, s := range []string{"vm.create", "*", "vm.*", "*.get", "vm..x", "**", "v*", ".", "a.b.c-d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := permRE.MatchString(s) && len(s) <= MaxPermissionLen
		if got := ValidatePermission("f", s) == nil; got != want {
			t.Fatalf("ValidatePermission(%q) ok=%v, grammar says %v", s, got, want)
		}
	})
}
