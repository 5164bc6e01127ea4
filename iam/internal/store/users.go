package store

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// Password length limits. The upper bound keeps hashing cost independent of input.
const (
	MinPasswordLen = 8
	MaxPasswordLen = 1024
)

func validatePassword(field, pw string) error {
	if len(pw) < MinPasswordLen {
		return fmt.Errorf("%w: %s must be at least %d characters", ErrInvalid, field, MinPasswordLen)
	}
	if len(pw) > MaxPasswordLen {
		return fmt.Errorf("%w: %s must be at most %d bytes", ErrInvalid, field, MaxPasswordLen)
	}
	return nil
}

// UserUpdate lists the changes UpdateUser makes; nil fields are left alone.
type UserUpdate struct {
	DisplayName *string
	Disabled    *bool
	Password    *string
}

// retry runs attempt, bounded by Options.Timeout, until it reports success or an error,
// at most maxCASAttempts times (attempt returns false when its compare failed because a
// concurrent writer got there first).
func (s *Store) retry(ctx context.Context, what string, attempt func(ctx context.Context) (bool, error)) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	for range maxCASAttempts {
		ok, err := attempt(ctx)
		if err != nil || ok {
			return err
		}
	}
	return contended(what)
}

// CreateUser stores a new user with password (argon2id-hashed) and returns it with its
// timestamps set. u.Name is validated; Disabled is honoured. A user of that name
// existing is ErrAlreadyExists.
func (s *Store) CreateUser(ctx context.Context, u *iamv1.User, password string) (*iamv1.User, error) {
	if err := ValidateName("user.name", u.GetName()); err != nil {
		return nil, err
	}
	if err := validateText("user.display_name", u.GetDisplayName()); err != nil {
		return nil, err
	}
	if err := validatePassword("password", password); err != nil {
		return nil, err
	}
	hash, err := HashPassword(s.hash, password)
	if err != nil {
		return nil, err
	}
	now := timestamppb.New(s.now())
	nu := &iamv1.User{Name: u.GetName(), DisplayName: u.GetDisplayName(), Disabled: u.GetDisabled(), CreateTime: now, UpdateTime: now}
	val, err := userValue(nu, hash)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	key := userKey(nu.Name)
	ok, err := commit("create user", s.c.Txn(ctx).If(absent(key)).Then(chainfire.OpPut(key, val)))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, alreadyExists("user", nu.Name)
	}
	return nu, nil
}

func userValue(u *iamv1.User, hash string) (string, error) {
	b, err := json.Marshal(record{User: json.RawMessage(marshal(u)), PasswordHash: hash})
	return string(b), err
}

// userRecord reads a user with its hash and the ModRevision of the read.
func (s *Store) userRecord(ctx context.Context, name string) (*iamv1.User, string, int64, error) {
	key := userKey(name)
	kv, err := s.get(ctx, key)
	if err != nil {
		return nil, "", 0, err
	}
	if kv == nil {
		return nil, "", 0, notFound("user", name)
	}
	var rec record
	if err := json.Unmarshal(kv.Value, &rec); err != nil {
		return nil, "", 0, fmt.Errorf("store: corrupt value at %s: %w", key, err)
	}
	u := new(iamv1.User)
	if err := unmarshal(key, rec.User, u); err != nil {
		return nil, "", 0, err
	}
	return u, rec.PasswordHash, kv.ModRevision, nil
}

// GetUser returns the user name, or ErrNotFound.
func (s *Store) GetUser(ctx context.Context, name string) (*iamv1.User, error) {
	if err := ValidateName("name", name); err != nil {
		return nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	u, _, _, err := s.userRecord(ctx, name)
	return u, err
}

// ListUsers returns every user, ordered by name.
func (s *Store) ListUsers(ctx context.Context) ([]*iamv1.User, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kvs, _, err := s.list(ctx, PrefixUsers)
	if err != nil {
		return nil, err
	}
	out := make([]*iamv1.User, 0, len(kvs))
	for _, kv := range kvs {
		var rec record
		if err := json.Unmarshal(kv.Value, &rec); err != nil {
			return nil, fmt.Errorf("store: corrupt value at %s: %w", kv.Key, err)
		}
		u := new(iamv1.User)
		if err := unmarshal(string(kv.Key), rec.User, u); err != nil {
			return nil, err
		}
		out = append(out, u)
	}
	return out, nil
}

// UpdateUser applies up to the user name and returns the result. Disabling a user also
// raises its principal watermark (same transaction), revoking every token issued to it
// so far. ErrNotFound if there is no such user.
func (s *Store) UpdateUser(ctx context.Context, name string, up UserUpdate) (*iamv1.User, error) {
	if err := ValidateName("name", name); err != nil {
		return nil, err
	}
	if up.DisplayName != nil {
		if err := validateText("display_name", *up.DisplayName); err != nil {
			return nil, err
		}
	}
	var newHash string
	if up.Password != nil {
		if err := validatePassword("password", *up.Password); err != nil {
			return nil, err
		}
		h, err := HashPassword(s.hash, *up.Password)
		if err != nil {
			return nil, err
		}
		newHash = h
	}
	var out *iamv1.User
	err := s.retry(ctx, "update user "+name, func(ctx context.Context) (bool, error) {
		u, hash, rev, err := s.userRecord(ctx, name)
		if err != nil {
			return false, err
		}
		key := userKey(name)
		cmps := []chainfire.Cmp{unchanged(key, rev)}
		var ops []chainfire.Op
		if up.DisplayName != nil {
			u.DisplayName = *up.DisplayName
		}
		if up.Disabled != nil {
			if *up.Disabled && !u.Disabled {
				wc, wo, err := s.watermarkOps(ctx, UserPrincipal(name))
				if err != nil {
					return false, err
				}
				cmps, ops = append(cmps, wc...), append(ops, wo...)
			}
			u.Disabled = *up.Disabled
		}
		if newHash != "" {
			hash = newHash
		}
		u.UpdateTime = timestamppb.New(s.now())
		val, err := userValue(u, hash)
		if err != nil {
			return false, err
		}
		ops = append(ops, chainfire.OpPut(key, val))
		ok, err := commit("update user", s.c.Txn(ctx).If(cmps...).Then(ops...))
		out = u
		return ok, err
	})
	return out, err
}

// DeleteUser deletes the user name together with every binding of it, and raises its
// principal watermark, in one transaction. ErrNotFound if there is no such user.
func (s *Store) DeleteUser(ctx context.Context, name string) error {
	if err := ValidateName("name", name); err != nil {
		return err
	}
	return s.deletePrincipal(ctx, KindUser, name)
}

// deletePrincipal removes a user or service account, its bindings, and raises its
// watermark atomically.
func (s *Store) deletePrincipal(ctx context.Context, kind, name string) error {
	principal := kind + ":" + name
	key := principalKey(kind, name)
	return s.retry(ctx, "delete "+principal, func(ctx context.Context) (bool, error) {
		kv, err := s.get(ctx, key)
		if err != nil {
			return false, err
		}
		if kv == nil {
			return false, notFound(kind, name)
		}
		bindings, rev, err := s.list(ctx, PrefixBindings)
		if err != nil {
			return false, err
		}
		cmps := []chainfire.Cmp{unchanged(key, kv.ModRevision), unchangedSince(PrefixBindings, rev)}
		ops := []chainfire.Op{chainfire.OpDelete(key)}
		for _, b := range bindings {
			if p := splitKey(string(b.Key), PrefixBindings); len(p) == 3 && p[1] == principal {
				ops = append(ops, chainfire.OpDelete(string(b.Key)))
			}
		}
		wc, wo, err := s.watermarkOps(ctx, principal)
		if err != nil {
			return false, err
		}
		return commit("delete "+principal, s.c.Txn(ctx).If(append(cmps, wc...)...).Then(append(ops, wo...)...))
	})
}

// CheckPassword verifies a user's password. An unknown (or invalidly named) user and
// a wrong password both return ErrBadCredentials after the same argon2id work (a
// dummy hash of the current parameters), so timing does not reveal who exists. A
// disabled user with the right password is ErrDisabled.
func (s *Store) CheckPassword(ctx context.Context, name, password string) (*iamv1.User, error) {
	var (
		u    *iamv1.User
		hash = s.dummyHash
	)
	if isName(name) && len(password) <= MaxPasswordLen {
		ctx, cancel := s.bound(ctx)
		defer cancel()
		got, h, _, err := s.userRecord(ctx, name)
		switch {
		case err == nil:
			u, hash = got, h
		case !isNotFound(err):
			return nil, err
		}
	}
	if len(password) > MaxPasswordLen {
		password = password[:MaxPasswordLen]
	}
	ok, err := VerifyHash(hash, password)
	if err != nil && u != nil {
		s.log.Error("store: unusable password hash", "user", name, "error", err)
	}
	if !ok || u == nil {
		return nil, fmt.Errorf("%w", ErrBadCredentials)
	}
	if u.Disabled {
		return nil, fmt.Errorf("%w: user %q", ErrDisabled, name)
	}
	return u, nil
}
