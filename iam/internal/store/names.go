package store

import (
	"fmt"
	"strings"
)

// Principal kinds: a principal is "<kind>:<name>".
const (
	KindUser           = "user"
	KindServiceAccount = "serviceaccount"
)

// Limits on what a role may hold, so one role cannot blow up every verifier's copy.
const (
	// MaxPermissions is the most permission patterns a role may have.
	MaxPermissions = 256
	// MaxPermissionLen is the longest permission pattern accepted.
	MaxPermissionLen = 128
	// MaxDescriptionLen bounds descriptions and display names.
	MaxDescriptionLen = 1024
)

// ValidateName checks a user, service account, project or role name against
// ^[a-z][a-z0-9-]{0,62}$. field names the field in the error, which wraps ErrInvalid.
func ValidateName(field, name string) error {
	if !isName(name) {
		return fmt.Errorf("%w: %s %q must match ^[a-z][a-z0-9-]{0,62}$", ErrInvalid, field, name)
	}
	return nil
}

func isName(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// ValidatePermission checks a permission pattern: dot-separated segments, each either
// "*" or ^[a-z][a-z0-9-]*$ (a segment may start with "*" only when it is exactly "*"),
// at most MaxPermissionLen bytes. The error wraps ErrInvalid and names field.
func ValidatePermission(field, p string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: %s %q %s", ErrInvalid, field, p, why)
	}
	if p == "" {
		return bad("is empty")
	}
	if len(p) > MaxPermissionLen {
		return bad(fmt.Sprintf("is longer than %d bytes", MaxPermissionLen))
	}
	for seg := range strings.SplitSeq(p, ".") {
		if seg == "*" {
			continue
		}
		if seg == "" || seg[0] < 'a' || seg[0] > 'z' {
			return bad(`has a segment that is empty, not "*", or does not start with a-z`)
		}
		for i := 1; i < len(seg); i++ {
			if c := seg[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return bad("has a character outside a-z, 0-9, '-', '.', '*'")
			}
		}
	}
	return nil
}

// ParsePrincipal splits "user:<name>" or "serviceaccount:<name>" and validates the
// name. The error wraps ErrInvalid and names field.
func ParsePrincipal(field, principal string) (kind, name string, err error) {
	kind, name, ok := strings.Cut(principal, ":")
	if !ok || (kind != KindUser && kind != KindServiceAccount) || !isName(name) {
		return "", "", fmt.Errorf("%w: %s %q must be user:<name> or serviceaccount:<name>", ErrInvalid, field, principal)
	}
	return kind, name, nil
}

// UserPrincipal returns "user:<name>".
func UserPrincipal(name string) string { return KindUser + ":" + name }

// ServiceAccountPrincipal returns "serviceaccount:<name>".
func ServiceAccountPrincipal(name string) string { return KindServiceAccount + ":" + name }

func validateText(field, s string) error {
	if len(s) > MaxDescriptionLen {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalid, field, MaxDescriptionLen)
	}
	return nil
}
