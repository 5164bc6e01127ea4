package store

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// BootstrapUser is the name of the user created at first start.
const BootstrapUser = "admin"

// Bootstrap runs the first-start setup once per ChainFire, however many replicas call
// it at once: it ensures the built-in roles, then creates user "admin" with
// adminPassword and a global binding to role admin, together with the marker
// /iam/meta/bootstrap, in one transaction guarded by the marker's absence. created
// reports whether this call did it; later calls (and the losers of a race) return
// false and change nothing. If a user "admin" already exists without the marker (made
// by hand), only the marker is written.
func (s *Store) Bootstrap(ctx context.Context, adminPassword string) (created bool, err error) {
	if err := s.EnsureBuiltins(ctx); err != nil {
		return false, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if kv, err := s.get(ctx, KeyBootstrap); err != nil || kv != nil {
		return false, err
	}
	if err := validatePassword("bootstrap admin password", adminPassword); err != nil {
		return false, err
	}
	hash, err := HashPassword(s.hash, adminPassword)
	if err != nil {
		return false, err
	}
	now := s.now()
	ts := timestamppb.New(now)
	u := &iamv1.User{Name: BootstrapUser, DisplayName: "Administrator", CreateTime: ts, UpdateTime: ts}
	uval, err := userValue(u, hash)
	if err != nil {
		return false, err
	}
	principal := UserPrincipal(BootstrapUser)
	b := &iamv1.Binding{Principal: principal, Role: RoleAdmin, Effect: iamv1.Effect_EFFECT_ALLOW, CreateTime: ts}
	marker, _ := json.Marshal(map[string]string{"time": now.UTC().Format("2006-01-02T15:04:05Z07:00"), "user": principal})
	bkey := BindingKey("", principal, RoleAdmin)
	resp, err := s.c.Txn(ctx).
		If(absent(KeyBootstrap), absent(userKey(BootstrapUser)), absent(bkey)).
		Then(chainfire.OpPut(KeyBootstrap, string(marker)), chainfire.OpPut(userKey(BootstrapUser), uval), chainfire.OpPut(bkey, marshal(b))).
		Else(chainfire.OpGet(KeyBootstrap)).
		Commit()
	if err != nil {
		return false, unavailable("bootstrap", err)
	}
	if resp.Succeeded {
		return true, nil
	}
	if len(resp.Responses) > 0 && len(resp.Responses[0].GetResponseRange().GetKvs()) > 0 {
		return false, nil // another replica did it
	}
	// No marker, but an admin user or binding exists: adopt them.
	s.log.Warn("store: bootstrap found an existing admin user or binding; marking bootstrap done without changing it")
	if _, err := commit("bootstrap marker", s.c.Txn(ctx).If(absent(KeyBootstrap)).Then(chainfire.OpPut(KeyBootstrap, string(marker)))); err != nil {
		return false, fmt.Errorf("bootstrap marker: %w", err)
	}
	return false, nil
}
