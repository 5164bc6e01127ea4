package auth

import "strings"

// pattern is a compiled permission pattern: its dot-separated segments, "*"
// matching one or more whole segments.
type pattern []string

func compilePattern(p string) pattern { return strings.Split(p, ".") }

// matchSegments reports whether the pattern p matches the permission
// segments s.
func (p pattern) match(s []string) bool {
	for len(p) > 0 {
		if p[0] == "*" {
			rest := p[1:]
			if len(rest) == 0 {
				return len(s) >= 1
			}
			for k := 1; k <= len(s)-len(rest); k++ {
				if rest.match(s[k:]) {
					return true
				}
			}
			return false
		}
		if len(s) == 0 || p[0] != s[0] {
			return false
		}
		p, s = p[1:], s[1:]
	}
	return len(s) == 0
}

// MatchPermission reports whether the permission pattern matches the
// permission: segments are dot-separated and a "*" segment matches one or
// more whole segments ("vm.*" matches "vm.create" and "vm.disk.attach",
// "*.get" matches "network.port.get", "*" matches everything). A "*" in
// permission is taken literally.
func MatchPermission(patternStr, permission string) bool {
	return compilePattern(patternStr).match(strings.Split(permission, "."))
}
