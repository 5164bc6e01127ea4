package login

import (
	"testing"
	"time"
)

func TestLockoutFor(t *testing.T) {
	p := Policy{Threshold: 5, BaseLockout: time.Second, MaxLockout: 15 * time.Minute}.withDefaults()
	for _, tc := range []struct {
		failures int
		want     time.Duration
	}{
		{0, 0}, {4, 0}, {5, time.Second}, {6, 2 * time.Second}, {7, 4 * time.Second},
		{14, 512 * time.Second}, {15, 15 * time.Minute}, {1000, 15 * time.Minute},
	} {
		if got := p.lockoutFor(tc.failures); got != tc.want {
			t.Errorf("lockoutFor(%d) = %v, want %v", tc.failures, got, tc.want)
		}
	}
	if p.Forget < 2*p.MaxLockout {
		t.Errorf("Forget %v shorter than twice MaxLockout", p.Forget)
	}
}

func TestSourceLimiter(t *testing.T) {
	l := newSourceLimiter(1, 3, 2)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := l.allow("a", now); !ok {
			t.Fatalf("attempt %d refused within burst", i)
		}
	}
	ok, wait := l.allow("a", now)
	if ok || wait <= 0 || wait > time.Second {
		t.Fatalf("4th attempt = %v, %v; want refused with a wait of at most 1s", ok, wait)
	}
	if ok, _ := l.allow("b", now); !ok {
		t.Fatal("another source must not be limited")
	}
	if ok, _ := l.allow("a", now.Add(time.Second)); !ok {
		t.Fatal("a token should have refilled after 1s")
	}
	l.allow("c", now) // evicts the least recently seen ("b")
	if n := l.size(); n != 2 {
		t.Fatalf("limiter tracks %d sources, want at most 2", n)
	}
}

func TestNormalizeSource(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"10.0.0.9", "10.0.0.9"},
		{"10.0.0.9:5555", "10.0.0.9"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"2001:db8:1:2::9", "2001:db8:1:2::/64"},
		{"::ffff:10.1.2.3", "10.1.2.3"},
		{"", ""},
		{"not-an-ip", "not-an-ip"},
	} {
		if got := normalizeSource(tc.in); got != tc.want {
			t.Errorf("normalizeSource(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
