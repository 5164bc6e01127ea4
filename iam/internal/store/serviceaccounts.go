package store

import (
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// ServiceAccountUpdate lists the changes UpdateServiceAccount makes; nil fields are
// left alone.
type ServiceAccountUpdate struct {
	Description     *string
	Disabled        *bool
	RateLimitExempt *bool
}

func saValue(sa *iamv1.ServiceAccount, hash string) (string, error) {
	b, err := json.Marshal(record{ServiceAccount: json.RawMessage(marshal(sa)), SecretHash: hash})
	return string(b), err
}

// CreateServiceAccount stores a new service account and returns it with its client
// secret (32 random bytes, base64url), which is shown only here: the Store keeps a
// SHA-256 of it (see VerifyHash for why that suffices for a random secret). When
// sa.Project is set the project must exist (ErrNotFound otherwise) and cannot be
// deleted while the account exists. A duplicate name is ErrAlreadyExists.
func (s *Store) CreateServiceAccount(ctx context.Context, sa *iamv1.ServiceAccount) (*iamv1.ServiceAccount, string, error) {
	if err := ValidateName("service_account.name", sa.GetName()); err != nil {
		return nil, "", err
	}
	if err := validateText("service_account.description", sa.GetDescription()); err != nil {
		return nil, "", err
	}
	if sa.GetProject() != "" {
		if err := ValidateName("service_account.project", sa.GetProject()); err != nil {
			return nil, "", err
		}
	}
	secret, err := newClientSecret()
	if err != nil {
		return nil, "", err
	}
	now := timestamppb.New(s.now())
	n := &iamv1.ServiceAccount{Name: sa.GetName(), Description: sa.GetDescription(), Disabled: sa.GetDisabled(),
		RateLimitExempt: sa.GetRateLimitExempt(), Project: sa.GetProject(), CreateTime: now, UpdateTime: now}
	val, err := saValue(n, hashSecret(secret))
	if err != nil {
		return nil, "", err
	}
	key := saKey(n.Name)
	err = s.retry(ctx, "create service account", func(ctx context.Context) (bool, error) {
		cmps := []chainfire.Cmp{absent(key)}
		if n.Project != "" {
			pkv, err := s.get(ctx, projectKey(n.Project))
			if err != nil {
				return false, err
			}
			if pkv == nil {
				return false, notFound("project", n.Project)
			}
			cmps = append(cmps, unchanged(projectKey(n.Project), pkv.ModRevision))
		}
		resp, err := s.c.Txn(ctx).If(cmps...).Then(chainfire.OpPut(key, val)).Else(chainfire.OpGet(key)).Commit()
		if err != nil {
			return false, unavailable("create service account", err)
		}
		if !resp.Succeeded && len(resp.Responses) > 0 && len(resp.Responses[0].GetResponseRange().GetKvs()) > 0 {
			return false, alreadyExists("service account", n.Name)
		}
		return resp.Succeeded, nil
	})
	if err != nil {
		return nil, "", err
	}
	return n, secret, nil
}

// saRecord reads a service account with its secret hash and ModRevision.
func (s *Store) saRecord(ctx context.Context, name string) (*iamv1.ServiceAccount, string, int64, error) {
	key := saKey(name)
	kv, err := s.get(ctx, key)
	if err != nil {
		return nil, "", 0, err
	}
	if kv == nil {
		return nil, "", 0, notFound("service account", name)
	}
	return decodeSA(kv.Key, kv.Value, kv.ModRevision)
}

func decodeSA(key, value []byte, rev int64) (*iamv1.ServiceAccount, string, int64, error) {
	var rec record
	if err := json.Unmarshal(value, &rec); err != nil {
		return nil, "", 0, fmt.Errorf("store: corrupt value at %s: %w", key, err)
	}
	sa := new(iamv1.ServiceAccount)
	if err := unmarshal(string(key), rec.ServiceAccount, sa); err != nil {
		return nil, "", 0, err
	}
	return sa, rec.SecretHash, rev, nil
}

// GetServiceAccount returns the service account name, or ErrNotFound.
func (s *Store) GetServiceAccount(ctx context.Context, name string) (*iamv1.ServiceAccount, error) {
	if err := ValidateName("name", name); err != nil {
		return nil, err
	}
	ctx, cancel := s.bound(ctx)
	defer cancel()
	sa, _, _, err := s.saRecord(ctx, name)
	return sa, err
}

// ListServiceAccounts returns every service account, ordered by name.
func (s *Store) ListServiceAccounts(ctx context.Context) ([]*iamv1.ServiceAccount, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	kvs, _, err := s.list(ctx, PrefixServiceAccounts)
	if err != nil {
		return nil, err
	}
	out := make([]*iamv1.ServiceAccount, 0, len(kvs))
	for _, kv := range kvs {
		sa, _, _, err := decodeSA(kv.Key, kv.Value, kv.ModRevision)
		if err != nil {
			return nil, err
		}
		out = append(out, sa)
	}
	return out, nil
}

// UpdateServiceAccount applies up and returns the result. Disabling raises the
// account's principal watermark in the same transaction. ErrNotFound if absent.
func (s *Store) UpdateServiceAccount(ctx context.Context, name string, up ServiceAccountUpdate) (*iamv1.ServiceAccount, error) {
	if err := ValidateName("name", name); err != nil {
		return nil, err
	}
	if up.Description != nil {
		if err := validateText("description", *up.Description); err != nil {
			return nil, err
		}
	}
	return s.updateSA(ctx, name, func(sa *iamv1.ServiceAccount, hash *string) error {
		if up.Description != nil {
			sa.Description = *up.Description
		}
		if up.RateLimitExempt != nil {
			sa.RateLimitExempt = *up.RateLimitExempt
		}
		if up.Disabled != nil {
			sa.Disabled = *up.Disabled
		}
		return nil
	})
}

// ResetServiceAccountSecret replaces the account's client secret and returns the new
// one; the old secret stops working at once. Tokens already issued stay valid (revoke
// them with a watermark if the secret leaked).
func (s *Store) ResetServiceAccountSecret(ctx context.Context, name string) (string, error) {
	if err := ValidateName("name", name); err != nil {
		return "", err
	}
	secret, err := newClientSecret()
	if err != nil {
		return "", err
	}
	_, err = s.updateSA(ctx, name, func(_ *iamv1.ServiceAccount, hash *string) error {
		*hash = hashSecret(secret)
		return nil
	})
	if err != nil {
		return "", err
	}
	return secret, nil
}

// updateSA is the read-modify-write loop of service accounts; it raises the watermark
// when mutate disables the account.
func (s *Store) updateSA(ctx context.Context, name string, mutate func(*iamv1.ServiceAccount, *string) error) (*iamv1.ServiceAccount, error) {
	var out *iamv1.ServiceAccount
	err := s.retry(ctx, "update service account "+name, func(ctx context.Context) (bool, error) {
		sa, hash, rev, err := s.saRecord(ctx, name)
		if err != nil {
			return false, err
		}
		wasDisabled := sa.Disabled
		if err := mutate(sa, &hash); err != nil {
			return false, err
		}
		key := saKey(name)
		cmps := []chainfire.Cmp{unchanged(key, rev)}
		var ops []chainfire.Op
		if sa.Disabled && !wasDisabled {
			wc, wo, err := s.watermarkOps(ctx, ServiceAccountPrincipal(name))
			if err != nil {
				return false, err
			}
			cmps, ops = append(cmps, wc...), append(ops, wo...)
		}
		sa.UpdateTime = timestamppb.New(s.now())
		val, err := saValue(sa, hash)
		if err != nil {
			return false, err
		}
		ok, err := commit("update service account", s.c.Txn(ctx).If(cmps...).Then(append(ops, chainfire.OpPut(key, val))...))
		out = sa
		return ok, err
	})
	return out, err
}

// DeleteServiceAccount deletes the account with its bindings and raises its principal
// watermark, in one transaction. ErrNotFound if absent.
func (s *Store) DeleteServiceAccount(ctx context.Context, name string) error {
	if err := ValidateName("name", name); err != nil {
		return err
	}
	return s.deletePrincipal(ctx, KindServiceAccount, name)
}

// CheckClientSecret verifies a service account's client secret. An unknown client and
// a wrong secret are both ErrBadCredentials (after the same work); a disabled account
// with the right secret is ErrDisabled.
func (s *Store) CheckClientSecret(ctx context.Context, name, secret string) (*iamv1.ServiceAccount, error) {
	var (
		sa   *iamv1.ServiceAccount
		hash = hashSecret("")
	)
	if isName(name) {
		ctx, cancel := s.bound(ctx)
		defer cancel()
		got, h, _, err := s.saRecord(ctx, name)
		switch {
		case err == nil:
			sa, hash = got, h
		case !isNotFound(err):
			return nil, err
		}
	}
	ok, err := VerifyHash(hash, secret)
	if err != nil && sa != nil {
		s.log.Error("store: unusable client secret hash", "service_account", name, "error", err)
	}
	if !ok || sa == nil {
		return nil, fmt.Errorf("%w", ErrBadCredentials)
	}
	if sa.Disabled {
		return nil, fmt.Errorf("%w: service account %q", ErrDisabled, name)
	}
	return sa, nil
}
