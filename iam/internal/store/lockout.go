package store

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"plasmacloud.dev/pkg/chainfire"
)

// Lockout is the failed-login record of one subject ("user:alice",
// "serviceaccount:ci"), shared by every replica through ChainFire. The login package
// owns its meaning; the Store only keeps it.
type Lockout struct {
	// Failures counts consecutive failed attempts since the last success.
	Failures int `json:"failures"`
	// LockedUntil: attempts before this instant are refused unchecked.
	LockedUntil time.Time `json:"locked_until,omitzero"`
}

func lockoutKey(subject string) string { return PrefixLockout + subject }

// GetLockout returns subject's record; the zero Lockout when there is none.
func (s *Store) GetLockout(ctx context.Context, subject string) (Lockout, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	l, _, _, err := s.lockoutRecord(ctx, subject)
	return l, err
}

func (s *Store) lockoutRecord(ctx context.Context, subject string) (l Lockout, modRev, lease int64, err error) {
	kv, err := s.get(ctx, lockoutKey(subject))
	if err != nil || kv == nil {
		return Lockout{}, 0, 0, err
	}
	if err := json.Unmarshal(kv.Value, &l); err != nil {
		// A corrupt record is treated as absent and overwritten.
		s.log.Warn("store: corrupt lockout record", "subject", subject, "error", err)
		return Lockout{}, kv.ModRevision, kv.Lease, nil
	}
	return l, kv.ModRevision, kv.Lease, nil
}

// UpdateLockout applies fn to subject's record (the zero Lockout when absent) and
// stores the result on a lease of ttl, so the record disappears ttl after its last
// update; concurrent updates from any replica are serialized (compare on ModRevision,
// fn re-run on conflict). It returns the record stored.
func (s *Store) UpdateLockout(ctx context.Context, subject string, ttl time.Duration, fn func(*Lockout)) (Lockout, error) {
	key := lockoutKey(subject)
	secs := max(int64(math.Ceil(ttl.Seconds())), 1)
	var out Lockout
	err := s.retry(ctx, "update lockout", func(ctx context.Context) (bool, error) {
		l, rev, lease, err := s.lockoutRecord(ctx, subject)
		if err != nil {
			return false, err
		}
		fn(&l)
		val, err := json.Marshal(l)
		if err != nil {
			return false, err
		}
		// Reuse the record's lease (renewed to its full TTL) rather than granting one
		// per failure, so an attack does not pile up leases.
		if lease != 0 {
			if ka, err := s.c.KeepAliveOnce(ctx, lease); err != nil || ka.GetTTL() < secs {
				lease = 0
			}
		}
		if lease == 0 {
			g, err := s.c.Grant(ctx, secs)
			if err != nil {
				return false, unavailable("grant lockout lease", err)
			}
			lease = g.ID
		}
		out = l
		return commit("update lockout", s.c.Txn(ctx).If(unchanged(key, rev)).
			Then(chainfire.OpPut(key, string(val), chainfire.WithLease(lease))))
	})
	return out, err
}

// ClearLockout removes subject's record (after a successful login).
func (s *Store) ClearLockout(ctx context.Context, subject string) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	if _, err := s.c.Delete(ctx, lockoutKey(subject)); err != nil {
		return unavailable(fmt.Sprintf("clear lockout of %s", subject), err)
	}
	return nil
}
