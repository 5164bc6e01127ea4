package auth_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/auth"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

func TestMatchPermission(t *testing.T) {
	t.Parallel()
	cases := []struct {
		pattern, perm string
		want          bool
	}{
		{"vm.create", "vm.create", true},
		{"vm.create", "vm.delete", false},
		{"vm.create", "vm.create.x", false},
		{"vm.*", "vm.create", true},
		{"vm.*", "vm.disk.attach", true},
		{"vm.*", "vm", false},
		{"vm.*", "vmx.create", false},
		{"*.get", "vm.get", true},
		{"*.get", "network.port.get", true},
		{"*.get", "get", false},
		{"*.get", "vm.get.x", false},
		{"*", "anything.at.all", true},
		{"*", "x", true},
		{"iam.*.list", "iam.user.list", true},
		{"iam.*.list", "iam.list", false},
		{"*.*", "vm", false},
		{"*.*", "vm.get", true},
		{"a.*.b.*", "a.x.y.b.z", true},
		{"a.*.b.*", "a.b.z", false},
		{"vm", "vm.create", false},
	}
	for _, c := range cases {
		if got := auth.MatchPermission(c.pattern, c.perm); got != c.want {
			t.Errorf("MatchPermission(%q, %q) = %v, want %v", c.pattern, c.perm, got, c.want)
		}
	}
}

func TestPolicyAuthorize(t *testing.T) {
	t.Parallel()
	p := auth.NewPolicy(auth.PolicyConfig{Now: newClock(t0).Now})
	err := p.Apply(builtinSnapshot(1,
		put(role("vm-admin", "vm.*")),
		put(role("no-delete", "vm.delete")),
		put(allow("user:carol", "vm-admin", "p1")),
		put(deny("user:carol", "no-delete", "")),
		put(allow("serviceaccount:ci", "admin", "")),
		put(deny("serviceaccount:ci", "reader", "p9")),
		&iamv1.PolicyChange{Op: iamv1.PolicyChange_OP_PUT}, // malformed: skipped, reported
	))
	if err == nil {
		t.Fatal("malformed change not reported")
	}
	alice := auth.Identity{Subject: "user:alice", Project: "p1"}
	cases := []struct {
		name string
		id   auth.Identity
		perm string
		ok   bool
	}{
		{"project binding applies in its project", alice, "vm.create", true},
		{"member gets *.get of other services", alice, "iam.user.get", true},
		{"member lacks iam writes", alice, "iam.user.create", false},
		{"project binding not in another project", auth.Identity{Subject: "user:alice", Project: "p2"}, "vm.create", false},
		{"project binding not for unscoped tokens", auth.Identity{Subject: "user:alice"}, "vm.create", false},
		{"global binding for unscoped tokens", auth.Identity{Subject: "user:bob"}, "vm.get", true},
		{"global binding in any project", auth.Identity{Subject: "user:bob", Project: "p7"}, "vm.list", true},
		{"global reader cannot write", auth.Identity{Subject: "user:bob"}, "vm.create", false},
		{"global deny beats project allow", auth.Identity{Subject: "user:carol", Project: "p1"}, "vm.delete", false},
		{"deny only removes its role's permissions", auth.Identity{Subject: "user:carol", Project: "p1"}, "vm.create", true},
		{"project deny beats global admin", auth.Identity{Subject: "serviceaccount:ci", Project: "p9"}, "vm.get", false},
		{"project deny only in its project", auth.Identity{Subject: "serviceaccount:ci", Project: "p8"}, "vm.get", true},
		{"admin everything", auth.Identity{Subject: "serviceaccount:ci"}, "iam.key.rotate", true},
		{"unknown principal", auth.Identity{Subject: "user:mallory", Project: "p1"}, "vm.get", false},
		{"anonymous dev identity has nothing", auth.Identity{Subject: auth.AnonymousDev}, "vm.get", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := p.Authorize(c.id, c.perm)
			if (err == nil) != c.ok {
				t.Fatalf("Authorize(%v, %q) = %v, want ok=%v", c.id, c.perm, err, c.ok)
			}
			if err != nil && (!errors.Is(err, auth.ErrPermissionDenied) || auth.Code(err) != connect.CodePermissionDenied ||
				!strings.Contains(err.Error(), c.perm) || !strings.Contains(err.Error(), c.id.Subject)) {
				t.Fatalf("bad denial: %v", err)
			}
		})
	}
}

func TestPolicyApply(t *testing.T) {
	t.Parallel()
	clk := newClock(t0)
	var keyEvents []string
	p := auth.NewPolicy(auth.PolicyConfig{Now: clk.Now, OnSigningKey: func(k *iamv1.SigningKey, deleted bool) {
		keyEvents = append(keyEvents, k.GetKid()+map[bool]string{true: "-", false: "+"}[deleted])
	}})
	alice := auth.Identity{Subject: "user:alice", Project: "p1", JTI: "j1", IssuedAt: t0}

	// Before the snapshot: stale, changes refused, heartbeats ignored.
	if err := p.Authorize(alice, "vm.get"); !errors.Is(err, auth.ErrPolicyStale) || auth.Code(err) != connect.CodeUnavailable {
		t.Fatalf("before snapshot: %v", err)
	}
	if err := p.Apply(changes(3, put(role("x", "y")))); err == nil {
		t.Fatal("change before snapshot accepted")
	}
	if err := p.Apply(changes(3)); err != nil || p.Fresh() == nil {
		t.Fatalf("heartbeat before snapshot: err %v fresh %v", err, p.Fresh())
	}

	mustApply(t, p, builtinSnapshot(10, put(&iamv1.SigningKey{Kid: "k1"})))
	if err := p.Authorize(alice, "vm.create"); err != nil {
		t.Fatal(err)
	}
	// Role change reflected.
	mustApply(t, p, changes(11, put(role("member", "vm.get"))))
	if err := p.Authorize(alice, "vm.create"); err == nil {
		t.Fatal("role change not reflected")
	}
	// A replayed (older) batch is skipped.
	mustApply(t, p, changes(11, put(role("member", "*"))))
	if err := p.Authorize(alice, "vm.create"); err == nil || p.Revision() != 11 {
		t.Fatalf("replay applied: rev %d", p.Revision())
	}
	// Binding deleted.
	mustApply(t, p, changes(12, del(&iamv1.Binding{Principal: "user:alice", Role: "member", Project: "p1"})))
	if err := p.Authorize(alice, "vm.get"); err == nil {
		t.Fatal("deleted binding still grants")
	}
	// Revocations and their deletion.
	mustApply(t, p, changes(13,
		put(&iamv1.RevokedToken{Jti: "j1", ExpireTime: timestamppb.New(t0.Add(time.Minute))}),
		put(&iamv1.SigningKey{Kid: "k2"}), del(&iamv1.SigningKey{Kid: "k1"})))
	if err := p.CheckRevoked(alice); !errors.Is(err, auth.ErrTokenRevoked) {
		t.Fatalf("revoked jti: %v", err)
	}
	mustApply(t, p, changes(14, del(&iamv1.RevokedToken{Jti: "j1"})))
	if err := p.CheckRevoked(alice); err != nil {
		t.Fatal(err)
	}
	mustApply(t, p, changes(15, put(watermark(iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL, "", t0.Add(time.Second)))))
	if err := p.CheckRevoked(alice); !errors.Is(err, auth.ErrTokenRevoked) {
		t.Fatalf("watermark: %v", err)
	}
	mustApply(t, p, changes(16, del(&iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_GLOBAL})))
	if err := p.CheckRevoked(alice); err != nil {
		t.Fatal(err)
	}
	// Snapshot replaces everything (alice's binding back, bob's gone).
	mustApply(t, p, &iamv1.WatchPolicyResponse{Revision: 30, Snapshot: true, Changes: []*iamv1.PolicyChange{
		put(role("member", "vm.*")), put(allow("user:alice", "member", "p1")),
	}})
	if err := p.Authorize(alice, "vm.create"); err != nil {
		t.Fatal(err)
	}
	if err := p.Authorize(auth.Identity{Subject: "user:bob"}, "vm.get"); err == nil {
		t.Fatal("snapshot did not replace bindings")
	}
	// Heartbeats advance revision and freshness; staleness fails closed.
	clk.Add(auth.DefaultStaleness)
	if p.Fresh() != nil {
		t.Fatal("stale exactly at the window")
	}
	clk.Add(time.Second)
	if err := p.Authorize(alice, "vm.create"); !errors.Is(err, auth.ErrPolicyStale) {
		t.Fatalf("stale: %v", err)
	}
	if err := p.CheckRevoked(alice); !errors.Is(err, auth.ErrPolicyStale) {
		t.Fatalf("stale: %v", err)
	}
	mustApply(t, p, changes(31))
	if p.Revision() != 31 || p.Authorize(alice, "vm.create") != nil {
		t.Fatalf("heartbeat: rev %d", p.Revision())
	}
	if got := strings.Join(keyEvents, ","); got != "k1+,k2+,k1-" {
		t.Fatalf("key events %q", got)
	}
}
