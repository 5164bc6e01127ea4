package store_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// newStore starts a one-member ChainFire and returns a Store over it with cheap hashes.
func newStore(t *testing.T) (*store.Store, *chainfire.Client) {
	t.Helper()
	cl := chainfiretest.Start(t, 1, chainfiretest.Options{})
	c, err := chainfire.New(chainfire.Config{Endpoints: cl.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := store.New(c, store.Options{Hash: store.TestHashParams()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.EnsureBuiltins(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s, c
}

func wantErr(t *testing.T, err, sentinel error, mention ...string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Fatalf("error %v, want %v", err, sentinel)
	}
	for _, m := range mention {
		if !strings.Contains(err.Error(), m) {
			t.Fatalf("error %q should mention %q", err, m)
		}
	}
}

func ptr[T any](v T) *T { return &v }

// TestStore runs the model's behaviour against one real ChainFire; subtests use
// distinct names so they share it.
func TestStore(t *testing.T) {
	s, c := newStore(t)
	ctx := t.Context()

	t.Run("UserCRUD", func(t *testing.T) {
		u, err := s.CreateUser(ctx, &iamv1.User{Name: "alice", DisplayName: "Alice"}, "password1")
		if err != nil {
			t.Fatal(err)
		}
		if u.CreateTime == nil || u.UpdateTime == nil {
			t.Fatalf("timestamps not set: %v", u)
		}
		got, err := s.GetUser(ctx, "alice")
		if err != nil || got.DisplayName != "Alice" {
			t.Fatalf("GetUser = %v, %v", got, err)
		}
		if _, err := s.CheckPassword(ctx, "alice", "password1"); err != nil {
			t.Fatalf("CheckPassword: %v", err)
		}
		_, err = s.UpdateUser(ctx, "alice", store.UserUpdate{DisplayName: ptr("Alice A."), Password: ptr("password2")})
		if err != nil {
			t.Fatal(err)
		}
		wantErr(t, func() error { _, err := s.CheckPassword(ctx, "alice", "password1"); return err }(), store.ErrBadCredentials)
		if _, err := s.CheckPassword(ctx, "alice", "password2"); err != nil {
			t.Fatalf("new password: %v", err)
		}
		users, err := s.ListUsers(ctx)
		if err != nil || len(users) == 0 || users[0].Name != "alice" {
			t.Fatalf("ListUsers = %v, %v", users, err)
		}
		if err := s.DeleteUser(ctx, "alice"); err != nil {
			t.Fatal(err)
		}
		wantErr(t, func() error { _, err := s.GetUser(ctx, "alice"); return err }(), store.ErrNotFound, "alice")
		wantErr(t, s.DeleteUser(ctx, "alice"), store.ErrNotFound, "alice")
		wantErr(t, func() error { _, err := s.CheckPassword(ctx, "alice", "password2"); return err }(), store.ErrBadCredentials)
	})

	t.Run("Validation", func(t *testing.T) {
		for _, tc := range []struct {
			name  string
			do    func() error
			field string
		}{
			{"user name", func() error { _, err := s.CreateUser(ctx, &iamv1.User{Name: "Bad"}, "password1"); return err }, "user.name"},
			{"short password", func() error { _, err := s.CreateUser(ctx, &iamv1.User{Name: "val"}, "short"); return err }, "password"},
			{"sa name", func() error {
				_, _, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "a_b"})
				return err
			}, "service_account.name"},
			{"sa project", func() error {
				_, _, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "valsa", Project: "P"})
				return err
			}, "service_account.project"},
			{"project name", func() error { _, err := s.CreateProject(ctx, &iamv1.Project{Name: "-p"}); return err }, "project.name"},
			{"role name", func() error {
				_, err := s.CreateRole(ctx, &iamv1.Role{Name: "", Permissions: []string{"vm.get"}})
				return err
			}, "role.name"},
			{"role no permissions", func() error { _, err := s.CreateRole(ctx, &iamv1.Role{Name: "r"}); return err }, "role.permissions"},
			{"role bad permission", func() error {
				_, err := s.CreateRole(ctx, &iamv1.Role{Name: "r", Permissions: []string{"vm.get", "vm..x"}})
				return err
			}, "role.permissions[1]"},
			{"role wildcard inside segment", func() error {
				_, err := s.CreateRole(ctx, &iamv1.Role{Name: "r", Permissions: []string{"vm*"}})
				return err
			}, "role.permissions[0]"},
			{"update role permission", func() error { _, err := s.UpdateRole(ctx, "r", []string{"X"}, nil); return err }, "permissions[0]"},
			{"binding principal", func() error {
				_, err := s.CreateBinding(ctx, &iamv1.Binding{Principal: "alice", Role: "admin"})
				return err
			}, "binding.principal"},
			{"binding role", func() error {
				_, err := s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:alice", Role: "Admin"})
				return err
			}, "binding.role"},
			{"binding project", func() error {
				_, err := s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:alice", Role: "admin", Project: "p/q"})
				return err
			}, "binding.project"},
			{"binding effect", func() error {
				_, err := s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:alice", Role: "admin", Effect: 7})
				return err
			}, "binding.effect"},
			{"get name", func() error { _, err := s.GetUser(ctx, "../x"); return err }, "name"},
			{"list bindings principal", func() error { _, err := s.ListBindings(ctx, "nobody", ""); return err }, "principal"},
		} {
			t.Run(tc.name, func(t *testing.T) { wantErr(t, tc.do(), store.ErrInvalid, tc.field) })
		}
	})

	t.Run("Duplicates", func(t *testing.T) {
		noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "dup"})))
		wantErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "dup"})), store.ErrAlreadyExists, "dup")
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "dup"}, "password1")))
		wantErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "dup"}, "password1")), store.ErrAlreadyExists, "dup")
		_, _, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "dup"})
		noErr(t, err)
		_, _, err = s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "dup"})
		wantErr(t, err, store.ErrAlreadyExists, "dup")
		wantErr(t, second(s.CreateRole(ctx, &iamv1.Role{Name: "admin", Permissions: []string{"vm.get"}})), store.ErrAlreadyExists, "admin")
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:dup", Role: "reader", Project: "dup"})))
		wantErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:dup", Role: "reader", Project: "dup",
			Effect: iamv1.Effect_EFFECT_DENY})), store.ErrAlreadyExists, "user:dup")
	})

	t.Run("BindingReferencesMustExist", func(t *testing.T) {
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "ref"}, "password1")))
		wantErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:ghost", Role: "reader"})), store.ErrNotFound, "ghost")
		wantErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "serviceaccount:ghost", Role: "reader"})), store.ErrNotFound, "service account")
		wantErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:ref", Role: "ghost"})), store.ErrNotFound, "role")
		wantErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:ref", Role: "reader", Project: "ghost"})), store.ErrNotFound, "project")
		b, err := s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:ref", Role: "reader"})
		if err != nil || b.Effect != iamv1.Effect_EFFECT_ALLOW {
			t.Fatalf("global binding = %v, %v (unspecified effect must become ALLOW)", b, err)
		}
		kv, err := c.Get(ctx, "/iam/bindings/-/user:ref/reader")
		if err != nil || len(kv.Kvs) != 1 {
			t.Fatalf("binding key layout: %v %v", kv, err)
		}
		wantErr(t, s.DeleteBinding(ctx, "user:ref", "member", ""), store.ErrNotFound)
		noErr(t, s.DeleteBinding(ctx, "user:ref", "reader", ""))
	})

	t.Run("ListBindingsFilters", func(t *testing.T) {
		noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "lb1"})))
		noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "lb2"})))
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "lbu"}, "password1")))
		_, _, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "lbsa"})
		noErr(t, err)
		for _, b := range []*iamv1.Binding{
			{Principal: "user:lbu", Role: "reader", Project: "lb1"},
			{Principal: "user:lbu", Role: "member", Project: "lb2"},
			{Principal: "user:lbu", Role: "reader"},
			{Principal: "serviceaccount:lbsa", Role: "member", Project: "lb1", Effect: iamv1.Effect_EFFECT_DENY},
		} {
			noErr(t, second(s.CreateBinding(ctx, b)))
		}
		for _, tc := range []struct {
			principal, project string
			want               int
		}{
			{"user:lbu", "", 3}, {"user:lbu", "lb1", 1}, {"user:lbu", "*", 1}, {"", "lb1", 2}, {"serviceaccount:lbsa", "", 1},
		} {
			t.Run(tc.principal+"@"+tc.project, func(t *testing.T) {
				bs, err := s.ListBindings(ctx, tc.principal, tc.project)
				if err != nil || len(bs) != tc.want {
					t.Fatalf("ListBindings = %v, %v; want %d", bs, err, tc.want)
				}
			})
		}
	})

	t.Run("DeleteProjectRefused", func(t *testing.T) {
		noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "busy"})))
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "bob"}, "password1")))
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:bob", Role: "member", Project: "busy"})))
		_, _, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "busy-sa", Project: "busy"})
		noErr(t, err)
		wantErr(t, s.DeleteProject(ctx, "busy"), store.ErrFailedPrecondition, "user:bob/member", "service account busy-sa")
		noErr(t, s.DeleteServiceAccount(ctx, "busy-sa"))
		wantErr(t, s.DeleteProject(ctx, "busy"), store.ErrFailedPrecondition, "user:bob/member")
		noErr(t, s.DeleteBinding(ctx, "user:bob", "member", "busy"))
		noErr(t, s.DeleteProject(ctx, "busy"))
		wantErr(t, s.ProjectExists(ctx, "busy"), store.ErrNotFound, "busy")
		noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "busy"})))
		_, _, err = s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "orphan", Project: "nowhere"})
		wantErr(t, err, store.ErrNotFound, "nowhere")
	})

	t.Run("Roles", func(t *testing.T) {
		wantErr(t, s.DeleteRole(ctx, "admin"), store.ErrFailedPrecondition, "built in")
		wantErr(t, second(s.UpdateRole(ctx, "member", []string{"*"}, nil)), store.ErrFailedPrecondition, "built in")
		r, err := s.CreateRole(ctx, &iamv1.Role{Name: "ops", Permissions: []string{"vm.*", "vm.*", "network.port.get"}, Builtin: true})
		if err != nil || r.Builtin || len(r.Permissions) != 2 {
			t.Fatalf("CreateRole = %v, %v (builtin forced false, duplicates dropped)", r, err)
		}
		r, err = s.UpdateRole(ctx, "ops", []string{"vm.get"}, ptr("VM readers"))
		if err != nil || r.Description != "VM readers" || len(r.Permissions) != 1 {
			t.Fatalf("UpdateRole = %v, %v", r, err)
		}
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "carol"}, "password1")))
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:carol", Role: "ops"})))
		wantErr(t, s.DeleteRole(ctx, "ops"), store.ErrFailedPrecondition, "user:carol")
		noErr(t, s.DeleteBinding(ctx, "user:carol", "ops", ""))
		noErr(t, s.DeleteRole(ctx, "ops"))
		roles, err := s.ListRoles(ctx)
		if err != nil || len(roles) != 3 {
			t.Fatalf("ListRoles = %v, %v; want the 3 built-ins", roles, err)
		}
		for _, r := range roles {
			if !r.Builtin {
				t.Fatalf("role %v not builtin", r)
			}
		}
		noErr(t, s.EnsureBuiltins(ctx)) // idempotent
		// A tampered built-in is restored.
		if _, err := c.Put(ctx, "/iam/roles/reader", `{"name":"reader","permissions":["*"],"builtin":true}`); err != nil {
			t.Fatal(err)
		}
		noErr(t, s.EnsureBuiltins(ctx))
		if r, _ := s.GetRole(ctx, "reader"); len(r.GetPermissions()) != 3 {
			t.Fatalf("reader not restored: %v", r)
		}
	})

	t.Run("DisableWritesWatermark", func(t *testing.T) {
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "dave"}, "password1")))
		before := time.Now()
		u, err := s.UpdateUser(ctx, "dave", store.UserUpdate{Disabled: ptr(true)})
		if err != nil || !u.Disabled {
			t.Fatalf("UpdateUser = %v, %v", u, err)
		}
		w := watermark(t, c, "user:dave")
		nb := w.NotBefore.AsTime()
		if nb.Nanosecond() != 0 || nb.Before(before) || nb.After(time.Now().Add(time.Second)) {
			t.Fatalf("watermark not_before %v: want now rounded up to a second (disabled at %v)", nb, before)
		}
		if w.Scope != iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL || w.Name != "user:dave" {
			t.Fatalf("watermark %v", w)
		}
		wantErr(t, s.PrincipalActive(ctx, "user:dave"), store.ErrDisabled, "user:dave")
		wantErr(t, second(s.CheckPassword(ctx, "dave", "password1")), store.ErrDisabled)
		wantErr(t, second(s.CheckPassword(ctx, "dave", "wrongpass")), store.ErrBadCredentials)
		_, err = s.UpdateUser(ctx, "dave", store.UserUpdate{Disabled: ptr(false)})
		noErr(t, err)
		noErr(t, s.PrincipalActive(ctx, "user:dave"))

		_, _, err = s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "robot"})
		noErr(t, err)
		_, err = s.UpdateServiceAccount(ctx, "robot", store.ServiceAccountUpdate{Disabled: ptr(true)})
		noErr(t, err)
		watermark(t, c, "serviceaccount:robot")
		wantErr(t, s.PrincipalActive(ctx, "serviceaccount:robot"), store.ErrDisabled)
		wantErr(t, s.PrincipalActive(ctx, "user:nobody"), store.ErrNotFound)
	})

	t.Run("DeleteUserCleansUp", func(t *testing.T) {
		noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "eve-p"})))
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "eve"}, "password1")))
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:eve", Role: "reader"})))
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:eve", Role: "member", Project: "eve-p"})))
		noErr(t, s.DeleteUser(ctx, "eve"))
		bs, err := s.ListBindings(ctx, "user:eve", "")
		if err != nil || len(bs) != 0 {
			t.Fatalf("bindings left after delete: %v %v", bs, err)
		}
		watermark(t, c, "user:eve")
		noErr(t, s.DeleteProject(ctx, "eve-p")) // nothing in the way any more
	})

	t.Run("ServiceAccountSecrets", func(t *testing.T) {
		sa, secret, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "ci", RateLimitExempt: true})
		if err != nil || len(secret) != 43 || !sa.RateLimitExempt {
			t.Fatalf("CreateServiceAccount = %v, %q, %v", sa, secret, err)
		}
		kv, _ := c.Get(ctx, "/iam/serviceaccounts/ci")
		if strings.Contains(string(kv.Kvs[0].Value), secret) || !strings.Contains(string(kv.Kvs[0].Value), `"secret_hash":"$sha256$`) {
			t.Fatalf("stored value %s must hold only the secret's hash", kv.Kvs[0].Value)
		}
		noErr(t, second(s.CheckClientSecret(ctx, "ci", secret)))
		wantErr(t, second(s.CheckClientSecret(ctx, "ci", secret+"x")), store.ErrBadCredentials)
		wantErr(t, second(s.CheckClientSecret(ctx, "nope", secret)), store.ErrBadCredentials)
		next, err := s.ResetServiceAccountSecret(ctx, "ci")
		if err != nil || next == secret {
			t.Fatalf("reset = %q, %v", next, err)
		}
		wantErr(t, second(s.CheckClientSecret(ctx, "ci", secret)), store.ErrBadCredentials)
		noErr(t, second(s.CheckClientSecret(ctx, "ci", next)))
		sa, err = s.UpdateServiceAccount(ctx, "ci", store.ServiceAccountUpdate{Description: ptr("CI"), RateLimitExempt: ptr(false)})
		if err != nil || sa.Description != "CI" || sa.RateLimitExempt {
			t.Fatalf("UpdateServiceAccount = %v, %v", sa, err)
		}
		noErr(t, second(s.CheckClientSecret(ctx, "ci", next))) // update keeps the secret
		list, err := s.ListServiceAccounts(ctx)
		if err != nil || len(list) == 0 {
			t.Fatalf("ListServiceAccounts = %v, %v", list, err)
		}
	})

	t.Run("CanScope", func(t *testing.T) {
		noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: "scope"})))
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "frank"}, "password1")))
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "grace"}, "password1")))
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "heidi"}, "password1")))
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:frank", Role: "member", Project: "scope"})))
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:grace", Role: "reader"})))
		noErr(t, second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:heidi", Role: "reader", Project: "scope", Effect: iamv1.Effect_EFFECT_DENY})))
		noErr(t, s.CanScope(ctx, "user:frank", "scope"))
		noErr(t, s.CanScope(ctx, "user:grace", "scope")) // global binding
		noErr(t, s.CanScope(ctx, "user:heidi", ""))      // unscoped
		wantErr(t, s.CanScope(ctx, "user:heidi", "scope"), store.ErrFailedPrecondition, "user:heidi", "scope")
		wantErr(t, s.CanScope(ctx, "user:frank", "nowhere"), store.ErrNotFound, "nowhere")
		wantErr(t, s.CanScope(ctx, "frank", "scope"), store.ErrInvalid)
	})

	t.Run("ConcurrentCreatesOneWins", func(t *testing.T) {
		const n = 8
		for _, tc := range []struct {
			name string
			do   func(i int) error
		}{
			{"user", func(i int) error { return second(s.CreateUser(ctx, &iamv1.User{Name: "race"}, "password1")) }},
			{"project", func(i int) error { return second(s.CreateProject(ctx, &iamv1.Project{Name: "race"})) }},
			{"role", func(i int) error {
				return second(s.CreateRole(ctx, &iamv1.Role{Name: "race", Permissions: []string{fmt.Sprintf("vm.p%d", i)}}))
			}},
			{"service account", func(i int) error {
				_, _, err := s.CreateServiceAccount(ctx, &iamv1.ServiceAccount{Name: "race"})
				return err
			}},
			{"binding", func(i int) error {
				return second(s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:race", Role: "reader", Project: "race"}))
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var wins, dups atomic.Int32
				var wg sync.WaitGroup
				for i := range n {
					wg.Go(func() {
						switch err := tc.do(i); {
						case err == nil:
							wins.Add(1)
						case errors.Is(err, store.ErrAlreadyExists):
							dups.Add(1)
						default:
							t.Errorf("create: %v", err)
						}
					})
				}
				wg.Wait()
				if wins.Load() != 1 || dups.Load() != n-1 {
					t.Fatalf("%d wins, %d AlreadyExists; want 1 and %d", wins.Load(), dups.Load(), n-1)
				}
			})
		}
	})

	t.Run("ConcurrentUpdatesAllApply", func(t *testing.T) {
		noErr(t, second(s.CreateRole(ctx, &iamv1.Role{Name: "cas", Permissions: []string{"vm.get"}})))
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "cas"}, "password1")))
		var wg sync.WaitGroup
		for i := range 6 {
			wg.Go(func() {
				var err error
				if i%2 == 0 {
					_, err = s.UpdateUser(ctx, "cas", store.UserUpdate{DisplayName: ptr(fmt.Sprint(i))})
				} else {
					_, err = s.UpdateRole(ctx, "cas", []string{fmt.Sprintf("vm.p%d", i)}, nil)
				}
				if err != nil {
					t.Errorf("update %d: %v", i, err)
				}
			})
		}
		wg.Wait()
	})

	t.Run("ProjectDeleteRacesBinding", func(t *testing.T) {
		// Whatever the interleaving, a binding never outlives its project.
		noErr(t, second(s.CreateUser(ctx, &iamv1.User{Name: "racer"}, "password1")))
		for i := range 5 {
			p := fmt.Sprintf("rp%d", i)
			noErr(t, second(s.CreateProject(ctx, &iamv1.Project{Name: p})))
			var wg sync.WaitGroup
			wg.Go(func() {
				_, _ = s.CreateBinding(ctx, &iamv1.Binding{Principal: "user:racer", Role: "reader", Project: p})
			})
			wg.Go(func() { _ = s.DeleteProject(ctx, p) })
			wg.Wait()
			bs, err := s.ListBindings(ctx, "", p)
			noErr(t, err)
			if perr := s.ProjectExists(ctx, p); errors.Is(perr, store.ErrNotFound) && len(bs) > 0 {
				t.Fatalf("project %s deleted but bindings remain: %v", p, bs)
			}
		}
	})

	t.Run("BootstrapOnce", func(t *testing.T) {
		var created atomic.Int32
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				ok, err := s.Bootstrap(ctx, "bootstrap-pw")
				if err != nil {
					t.Errorf("Bootstrap: %v", err)
				}
				if ok {
					created.Add(1)
				}
			})
		}
		wg.Wait()
		if created.Load() != 1 {
			t.Fatalf("%d replicas bootstrapped, want exactly 1", created.Load())
		}
		if ok, err := s.Bootstrap(ctx, "other-password"); ok || err != nil {
			t.Fatalf("second Bootstrap = %v, %v", ok, err)
		}
		noErr(t, second(s.CheckPassword(ctx, "admin", "bootstrap-pw")))
		bs, err := s.ListBindings(ctx, "user:admin", "*")
		if err != nil || len(bs) != 1 || bs[0].Role != "admin" {
			t.Fatalf("admin bindings = %v, %v", bs, err)
		}
	})

	t.Run("Lockout", func(t *testing.T) {
		l, err := s.GetLockout(ctx, "user:lock")
		if err != nil || l.Failures != 0 {
			t.Fatalf("GetLockout = %v, %v", l, err)
		}
		for i := range 3 {
			l, err = s.UpdateLockout(ctx, "user:lock", time.Minute, func(l *store.Lockout) { l.Failures++ })
			if err != nil || l.Failures != i+1 {
				t.Fatalf("UpdateLockout = %v, %v", l, err)
			}
		}
		kv, _ := c.Get(ctx, "/iam/lockout/user:lock")
		if len(kv.Kvs) != 1 || kv.Kvs[0].Lease == 0 {
			t.Fatalf("lockout record %v must be on a lease", kv.Kvs)
		}
		first := kv.Kvs[0].Lease
		if l, err := s.GetLockout(ctx, "user:lock"); err != nil || l.Failures != 3 {
			t.Fatalf("GetLockout = %v, %v", l, err)
		}
		if _, err := s.UpdateLockout(ctx, "user:lock", time.Minute, func(l *store.Lockout) { l.Failures++ }); err != nil {
			t.Fatal(err)
		}
		if kv, _ := c.Get(ctx, "/iam/lockout/user:lock"); kv.Kvs[0].Lease != first {
			t.Fatalf("lease changed from %d to %d: updates should renew the record's lease", first, kv.Kvs[0].Lease)
		}
		noErr(t, s.ClearLockout(ctx, "user:lock"))
		if l, _ := s.GetLockout(ctx, "user:lock"); l.Failures != 0 {
			t.Fatalf("after clear: %v", l)
		}
	})
}

// TestUnavailable: a Store whose ChainFire cannot be reached answers ErrUnavailable
// within its timeout.
func TestUnavailable(t *testing.T) {
	c, err := chainfire.New(chainfire.Config{Endpoints: []string{"http://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := store.New(c, store.Options{Hash: store.TestHashParams(), Timeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for name, do := range map[string]func() error{
		"get":    func() error { return second(s.GetUser(ctx, "x")) },
		"create": func() error { return second(s.CreateProject(ctx, &iamv1.Project{Name: "x"})) },
		"check":  func() error { return second(s.CheckPassword(ctx, "x", "password1")) },
		"scope":  func() error { return s.CanScope(ctx, "user:x", "p") },
	} {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			wantErr(t, do(), store.ErrUnavailable)
			if d := time.Since(start); d > 3*time.Second {
				t.Fatalf("took %v", d)
			}
		})
	}
}

func watermark(t *testing.T, c *chainfire.Client, principal string) *iamv1.Watermark {
	t.Helper()
	resp, err := c.Get(t.Context(), store.PrincipalWatermarkKey(principal))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("watermark of %s: %v %v", principal, resp, err)
	}
	w := new(iamv1.Watermark)
	if err := protojsonUnmarshal(resp.Kvs[0].Value, w); err != nil {
		t.Fatal(err)
	}
	return w
}

func second[T any](_ T, err error) error { return err }

func noErr(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
