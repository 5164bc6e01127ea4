package keys

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// errRace: the guarded txn lost to a concurrent change; re-read and decide again.
var errRace = errors.New("keys: concurrent key change")

// loop runs Reconcile every CheckInterval until ctx ends.
func (m *Manager) loop(ctx context.Context) {
	t := time.NewTicker(m.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := m.Reconcile(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn("key lifecycle step failed; retrying", "err", err)
		}
	}
}

// snapshot is one consistent read of every key.
type snapshot struct {
	rev     int64
	keys    []*stored
	active  []*stored
	pending *stored // the oldest pending key
}

func (m *Manager) read(ctx context.Context) (*snapshot, error) {
	resp, err := m.cfg.Client.Get(ctx, Prefix, chainfire.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("keys: read %s: %w", Prefix, err)
	}
	sn := &snapshot{rev: resp.Header.GetRevision()}
	for _, kv := range resp.Kvs {
		s, err := decode(string(kv.Key), kv.Value, kv.ModRevision)
		if err != nil {
			continue
		}
		sn.keys = append(sn.keys, s)
		switch s.key.State {
		case iamv1.KeyState_KEY_STATE_ACTIVE:
			sn.active = append(sn.active, s)
		case iamv1.KeyState_KEY_STATE_PENDING:
			if sn.pending == nil || s.key.Kid < sn.pending.key.Kid {
				sn.pending = s
			}
		}
	}
	return sn, nil
}

// guard holds when no key under Prefix was created or changed after the read at rev.
func guard(rev int64) chainfire.Cmp {
	return chainfire.Compare(chainfire.ModRevision(Prefix).WithPrefix(), "<", rev+1)
}

// Reconcile performs the lifecycle steps due now, each as one guarded txn: create and
// activate a first key when none is active or pending; activate a pending key whose
// publish delay has passed, retiring the active one in the same txn; start a rotation
// (a pending key) when the active key is older than RotationInterval; delete retired
// keys past their remove time. Safe to run concurrently on every replica.
func (m *Manager) Reconcile(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		err := m.step(ctx)
		if !errors.Is(err, errRace) || attempt >= 5 {
			return err
		}
	}
}

func (m *Manager) step(ctx context.Context) error {
	sn, err := m.read(ctx)
	if err != nil {
		return err
	}
	now := m.cfg.Now()
	switch {
	case len(sn.active) == 0 && sn.pending == nil:
		s, err := generate(m.cfg.MasterKey, m.cfg.Algorithm, iamv1.KeyState_KEY_STATE_ACTIVE, now)
		if err != nil {
			return err
		}
		if err := m.commit(ctx, sn.rev, []*stored{s}, nil); err != nil {
			return err
		}
		m.log.Info("created and activated the first signing key", "kid", s.key.Kid, "alg", s.key.Alg)
		m.cfg.Audit.Record(ctx, audit.Event{Action: "key.create", Target: s.key.Kid, Reason: "first key, active at once"})
		m.transition("create")
		return nil
	case sn.pending != nil && (len(sn.active) == 0 || !now.Before(sn.pending.key.CreateTime.AsTime().Add(m.cfg.PublishDelay))) ||
		len(sn.active) > 1:
		// Activate the pending key (or, should several be active, keep the newest), and
		// retire every other active key in the same txn.
		next := sn.pending
		if next == nil {
			for _, a := range sn.active {
				if next == nil || a.key.GetActivateTime().AsTime().After(next.key.GetActivateTime().AsTime()) {
					next = a
				}
			}
		}
		var puts []*stored
		if next.key.State != iamv1.KeyState_KEY_STATE_ACTIVE {
			k := publicOnly(next.key)
			k.State = iamv1.KeyState_KEY_STATE_ACTIVE
			k.ActivateTime = timestamppb.New(now)
			puts = append(puts, &stored{key: k, private: next.private})
		}
		for _, a := range sn.active {
			if a == next {
				continue
			}
			k := publicOnly(a.key)
			k.State = iamv1.KeyState_KEY_STATE_RETIRED
			k.RetireTime = timestamppb.New(now)
			k.RemoveTime = timestamppb.New(now.Add(m.cfg.RetireFor))
			puts = append(puts, &stored{key: k, private: a.private})
		}
		if err := m.commit(ctx, sn.rev, puts, nil); err != nil {
			return err
		}
		m.log.Info("activated signing key", "kid", next.key.Kid)
		m.cfg.Audit.Record(ctx, audit.Event{Action: "key.activate", Target: next.key.Kid})
		m.transition("activate")
		return nil
	case sn.pending == nil && m.cfg.RotationInterval > 0 && len(sn.active) == 1 &&
		!now.Before(sn.active[0].key.GetActivateTime().AsTime().Add(m.cfg.RotationInterval)):
		_, err := m.createPending(ctx, sn, now, "rotation interval")
		return err
	}
	// Remove retired keys past their time.
	var dels []*stored
	for _, s := range sn.keys {
		if s.key.State == iamv1.KeyState_KEY_STATE_RETIRED && !now.Before(s.key.GetRemoveTime().AsTime()) {
			dels = append(dels, s)
		}
	}
	if len(dels) > 0 {
		if err := m.commit(ctx, sn.rev, nil, dels); err != nil {
			return err
		}
		for _, s := range dels {
			m.log.Info("removed retired signing key", "kid", s.key.Kid)
			m.cfg.Audit.Record(ctx, audit.Event{Action: "key.remove", Target: s.key.Kid})
		}
		m.transition("remove")
	}
	return nil
}

// Rotate starts a rotation now: it creates a pending key, published at once and active
// after PublishDelay. When a rotation is already pending it returns that key.
func (m *Manager) Rotate(ctx context.Context) (*iamv1.SigningKey, error) {
	for attempt := 0; ; attempt++ {
		sn, err := m.read(ctx)
		if err != nil {
			return nil, err
		}
		if sn.pending != nil {
			return publicOnly(sn.pending.key), nil
		}
		k, err := m.createPending(ctx, sn, m.cfg.Now(), "requested")
		if errors.Is(err, errRace) && attempt < 5 {
			continue
		}
		return k, err
	}
}

func (m *Manager) createPending(ctx context.Context, sn *snapshot, now time.Time, why string) (*iamv1.SigningKey, error) {
	s, err := generate(m.cfg.MasterKey, m.cfg.Algorithm, iamv1.KeyState_KEY_STATE_PENDING, now)
	if err != nil {
		return nil, err
	}
	if err := m.commit(ctx, sn.rev, []*stored{s}, nil); err != nil {
		return nil, err
	}
	m.log.Info("new signing key pending", "kid", s.key.Kid, "alg", s.key.Alg, "active_after", m.cfg.PublishDelay, "reason", why)
	m.cfg.Audit.Record(ctx, audit.Event{Action: "key.rotate", Target: s.key.Kid, Reason: why})
	m.transition("create")
	return publicOnly(s.key), nil
}

// commit writes puts and deletes in one txn guarded by the read revision.
func (m *Manager) commit(ctx context.Context, rev int64, puts, dels []*stored) error {
	ops := make([]chainfire.Op, 0, len(puts)+len(dels))
	for _, s := range puts {
		v, err := s.encode()
		if err != nil {
			return err
		}
		ops = append(ops, chainfire.OpPut(Prefix+s.key.Kid, v))
	}
	for _, s := range dels {
		ops = append(ops, chainfire.OpDelete(Prefix+s.key.Kid))
	}
	resp, err := m.cfg.Client.Txn(ctx).If(guard(rev)).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("keys: write: %w", err)
	}
	if !resp.Succeeded {
		return errRace
	}
	return nil
}

func (m *Manager) transition(t string) {
	if m.cfg.OnRotate != nil {
		m.cfg.OnRotate(t)
	}
}
