// Package policy is IAM's in-memory view of what verifiers need — roles, bindings,
// watermarks, revoked access tokens and public signing keys — followed from one ChainFire
// watch of /iam/, and the server side of PolicyService.WatchPolicy.
//
// The view keeps the current state and a ring of recent changes keyed by ChainFire
// revision (the same numbers on every IAM replica), so a verifier resumes from the last
// revision it saw on any replica: the changes after it are replayed from the ring, or,
// when the ring no longer reaches back that far, a snapshot is sent. Streams never buffer
// per client: each reads the shared ring at its own cursor, and a client so slow that the
// ring overtakes it is cut with ErrSlowConsumer (it resumes with a snapshot).
package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	"plasmacloud.dev/proto/mvccpb"
)

// Defaults of Config.
const (
	DefaultRingSize  = 4096
	DefaultHeartbeat = 2 * time.Second
)

// Sentinel errors of streams.
var (
	// ErrSlowConsumer: the client fell behind the ring of recent changes. ResourceExhausted;
	// the client resumes from its last revision and receives a snapshot.
	ErrSlowConsumer = errors.New("policy: client fell behind the change ring; resume to get a snapshot")
	// ErrDraining: the replica is shutting down. Unavailable; resume on another replica.
	ErrDraining = errors.New("policy: replica shutting down; resume on another")
	// ErrNotReady: the view has not loaded yet. Unavailable.
	ErrNotReady = errors.New("policy: view not loaded yet")
)

// Config configures a View. Client is required.
type Config struct {
	Client *chainfire.Client
	// RingSize is how many revisions with changes are kept for resumption (default 4096).
	RingSize int
	// Heartbeat is the period of heartbeats on idle streams (default 2 s).
	Heartbeat time.Duration
	// Drain, when closed, ends every stream with ErrDraining.
	Drain  <-chan struct{}
	Logger *slog.Logger
	// Now is the clock, for dropping expired revoked tokens from snapshots.
	Now func() time.Time
}

// batch is the changes of one ChainFire revision.
type batch struct {
	rev     int64
	changes []*iamv1.PolicyChange
}

// View is one replica's policy view. Start loads it and follows ChainFire until Start's
// ctx ends; Stream serves any number of concurrent streams. Safe for concurrent use.
type View struct {
	cfg      Config
	log      *slog.Logger
	watchers atomic.Int64

	mu      sync.RWMutex
	loaded  bool
	rev     int64                          // everything up to rev is reflected
	floor   int64                          // every change after floor is in ring
	state   map[string]*iamv1.PolicyChange // by ChainFire key, PUTs
	ring    []batch                        // ascending revisions
	changed chan struct{}                  // closed and replaced when rev advances
}

// New returns a View that is not started.
func New(cfg Config) *View {
	if cfg.RingSize <= 0 {
		cfg.RingSize = DefaultRingSize
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &View{cfg: cfg, log: cfg.Logger.With("component", "policy"), state: map[string]*iamv1.PolicyChange{},
		changed: make(chan struct{})}
}

// Start reads the current state and starts following ChainFire until ctx ends.
func (v *View) Start(ctx context.Context) error {
	rev, err := v.relist(ctx)
	if err != nil {
		return err
	}
	go v.follow(ctx, rev)
	return nil
}

// Ready reports whether the view is loaded.
func (v *View) Ready() error {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if !v.loaded {
		return ErrNotReady
	}
	return nil
}

// Revision returns the ChainFire revision the view reflects.
func (v *View) Revision() int64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.rev
}

// Watchers returns the number of open streams.
func (v *View) Watchers() int64 { return v.watchers.Load() }

// relist reads everything under Prefix and replaces the state; changes against the
// previous state (after a compaction) become one batch at the read's revision.
func (v *View) relist(ctx context.Context) (int64, error) {
	resp, err := v.cfg.Client.Get(ctx, Prefix, chainfire.WithPrefix())
	if err != nil {
		return 0, fmt.Errorf("policy: read %s: %w", Prefix, err)
	}
	state := map[string]*iamv1.PolicyChange{}
	for _, kv := range resp.Kvs {
		if ch := putChange(string(kv.Key), kv.Value); ch != nil {
			state[string(kv.Key)] = ch
		}
	}
	rev := resp.Header.GetRevision()
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.loaded {
		v.state, v.rev, v.floor, v.loaded = state, rev, rev, true
		v.notifyLocked()
		return rev, nil
	}
	var changes []*iamv1.PolicyChange
	for _, k := range sortedKeys(v.state) {
		if _, ok := state[k]; !ok {
			if ch := deleteChange(k); ch != nil {
				changes = append(changes, ch)
			}
		}
	}
	for _, k := range sortedKeys(state) {
		if old, ok := v.state[k]; !ok || !equalChange(old, state[k]) {
			changes = append(changes, state[k])
		}
	}
	v.state = state
	if len(changes) > 0 && rev > v.rev {
		v.appendLocked(batch{rev: rev, changes: changes})
	}
	if rev > v.rev {
		v.rev = rev
	}
	v.notifyLocked()
	return rev, nil
}

// follow applies the watch until ctx ends, relisting after a compaction.
func (v *View) follow(ctx context.Context, rev int64) {
	for ctx.Err() == nil {
		wch := v.cfg.Client.Watch(ctx, Prefix, chainfire.WithPrefix(), chainfire.WithRev(rev+1), chainfire.WithProgressNotify())
		for wr := range wch {
			if wr.Relist || wr.Err != nil {
				v.log.Warn("policy watch ended; relisting", "relist", wr.Relist, "err", wr.Err)
				break
			}
			rev = v.apply(wr)
		}
		for ctx.Err() == nil {
			r, err := v.relist(ctx)
			if err == nil {
				rev = r
				break
			}
			v.log.Warn("relisting policy", "err", err)
			t := time.NewTimer(time.Second)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// apply folds one watch response into state and ring; it returns the last revision seen.
func (v *View) apply(wr chainfire.WatchResponse) int64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	var cur *batch
	for _, ev := range wr.Events {
		key := string(ev.Kv.Key)
		var ch *iamv1.PolicyChange
		if ev.Type == mvccpb.Event_DELETE {
			if _, ok := v.state[key]; ok {
				ch = deleteChange(key)
				delete(v.state, key)
			}
		} else if ch = putChange(key, ev.Kv.Value); ch != nil {
			v.state[key] = ch
		}
		r := ev.Kv.ModRevision
		if r > v.rev {
			v.rev = r
		}
		if ch == nil {
			continue
		}
		if cur != nil && cur.rev != r {
			v.appendLocked(*cur)
			cur = nil
		}
		if cur == nil {
			cur = &batch{rev: r}
		}
		cur.changes = append(cur.changes, ch)
	}
	if cur != nil {
		v.appendLocked(*cur)
	}
	if r := wr.Revision(); wr.IsProgressNotify() && r > v.rev {
		v.rev = r
	}
	v.notifyLocked()
	return v.rev
}

// appendLocked adds b to the ring, evicting the oldest batches beyond RingSize.
func (v *View) appendLocked(b batch) {
	v.ring = append(v.ring, b)
	if n := len(v.ring) - v.cfg.RingSize; n > 0 {
		v.floor = v.ring[n-1].rev
		v.ring = append([]batch(nil), v.ring[n:]...)
	}
}

func (v *View) notifyLocked() {
	close(v.changed)
	v.changed = make(chan struct{})
}

// snapshotLocked is the full state as one snapshot message.
func (v *View) snapshotLocked() *iamv1.WatchPolicyResponse {
	now := v.cfg.Now()
	out := &iamv1.WatchPolicyResponse{Revision: v.rev, Snapshot: true, Changes: make([]*iamv1.PolicyChange, 0, len(v.state))}
	for _, k := range sortedKeys(v.state) {
		ch := v.state[k]
		if rt := ch.GetRevokedToken(); rt != nil && rt.GetExpireTime() != nil && rt.GetExpireTime().AsTime().Before(now) {
			continue
		}
		out.Changes = append(out.Changes, ch)
	}
	return out
}

// Stream sends the policy stream to send until ctx ends, the drain starts, the client
// falls behind, or send fails: a snapshot first unless after is a revision the ring can
// resume from, then every later change in revision order, one message per revision, and
// a heartbeat (no changes, the current revision) whenever nothing was sent for a
// heartbeat period. send is called from the calling goroutine only; messages are shared
// and must not be modified.
func (v *View) Stream(ctx context.Context, after int64, send func(*iamv1.WatchPolicyResponse) error) error {
	v.watchers.Add(1)
	defer v.watchers.Add(-1)
	v.mu.RLock()
	if !v.loaded {
		v.mu.RUnlock()
		return ErrNotReady
	}
	cursor := after
	var first *iamv1.WatchPolicyResponse
	if after <= 0 || after < v.floor || after > v.rev {
		first = v.snapshotLocked()
		cursor = v.rev
	}
	v.mu.RUnlock()
	if first != nil {
		if err := send(first); err != nil {
			return err
		}
	}
	hb := time.NewTicker(v.cfg.Heartbeat)
	defer hb.Stop()
	for {
		v.mu.RLock()
		if cursor < v.floor {
			v.mu.RUnlock()
			return ErrSlowConsumer
		}
		i := sort.Search(len(v.ring), func(i int) bool { return v.ring[i].rev > cursor })
		pending := v.ring[i:len(v.ring):len(v.ring)]
		cur, changed := v.rev, v.changed
		v.mu.RUnlock()
		for _, b := range pending {
			if err := send(&iamv1.WatchPolicyResponse{Revision: b.rev, Changes: b.changes}); err != nil {
				return err
			}
			cursor = b.rev
		}
		if len(pending) > 0 {
			hb.Reset(v.cfg.Heartbeat)
		}
		if cur > cursor {
			cursor = cur // nothing the stream carries changed in between
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-v.cfg.Drain:
			return ErrDraining
		case <-changed:
		case <-hb.C:
			if err := send(&iamv1.WatchPolicyResponse{Revision: cursor}); err != nil {
				return err
			}
		}
	}
}

func sortedKeys(m map[string]*iamv1.PolicyChange) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
