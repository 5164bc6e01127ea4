package controller

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
)

// Elector elects one controller replica leader through ChainFire: the leader holds
// /plasmavmc/leader (value: its replica id) on a lease it keeps alive. Candidates poll
// the key and campaign (a put-if-absent txn) when it is gone — after the leader's lease
// expired (crash, pause, partition: within LeaseTTL) or was revoked (graceful stop).
//
// A leader steps down as soon as its keepalive channel closes (lease gone), the key
// stops naming it, or no keepalive succeeded for a whole TTL (it cannot know whether
// the lease still lives). Work done as leader must not rely on this alone: writes are
// fenced by comparing the leader key's lease ([Elector.Fence]).
//
// Safe for concurrent use; Run is called once.
type Elector struct {
	cf     *chainfire.Client
	id     string
	ttl    int64
	log    *slog.Logger
	leader atomic.Bool
	lease  atomic.Int64
	// PollInterval is how often a follower checks the key (default 200 ms).
	PollInterval time.Duration
}

// NewElector returns an elector for replica id with leases of ttl seconds.
func NewElector(cf *chainfire.Client, id string, ttl int64, log *slog.Logger) *Elector {
	return &Elector{cf: cf, id: id, ttl: ttl, log: log, PollInterval: 200 * time.Millisecond}
}

// IsLeader reports whether this replica currently leads.
func (e *Elector) IsLeader() bool { return e.leader.Load() }

// Lease is the leader lease while leading (0 otherwise).
func (e *Elector) Lease() int64 { return e.lease.Load() }

// Fence is the compare that holds only while lease still holds the leader key.
func Fence(lease int64) chainfire.Cmp {
	return chainfire.Compare(chainfire.LeaseValue(state.KeyLeader), "=", lease)
}

// Leader reads the current leader's replica id ("" when none).
func (e *Elector) Leader(ctx context.Context) (string, error) {
	g, err := e.cf.Get(ctx, state.KeyLeader)
	if err != nil || len(g.Kvs) == 0 {
		return "", err
	}
	return string(g.Kvs[0].Value), nil
}

// Run campaigns until ctx ends; each time this replica wins it calls lead with a
// context that ends when leadership is lost, and the lease. On return (ctx ended) the
// lease is revoked, so another replica takes over at once.
func (e *Elector) Run(ctx context.Context, lead func(ctx context.Context, lease int64)) error {
	for ctx.Err() == nil {
		lease, won := e.campaign(ctx)
		if !won {
			sleep(ctx, e.PollInterval)
			continue
		}
		e.log.Info("elected leader", "lease", lease)
		lctx, cancel := context.WithCancel(ctx)
		go e.hold(lctx, cancel, lease)
		e.lease.Store(lease)
		e.leader.Store(true)
		lead(lctx, lease)
		e.leader.Store(false)
		e.lease.Store(0)
		cancel()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		_, _ = e.cf.Revoke(rctx, lease)
		rcancel()
	}
	return nil
}

// campaign tries once to take the key.
func (e *Elector) campaign(ctx context.Context) (int64, bool) {
	g, err := e.cf.Get(ctx, state.KeyLeader, chainfire.WithKeysOnly())
	if err != nil || len(g.Kvs) > 0 {
		return 0, false
	}
	gr, err := e.cf.Grant(ctx, e.ttl)
	if err != nil {
		e.log.Warn("leader election: grant", "err", err)
		return 0, false
	}
	tr, err := e.cf.Txn(ctx).If(state.Absent(state.KeyLeader)).Then(chainfire.OpPut(state.KeyLeader, e.id, chainfire.WithLease(gr.ID))).Commit()
	if err == nil && tr.Succeeded {
		return gr.ID, true
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	_, _ = e.cf.Revoke(rctx, gr.ID)
	cancel()
	return 0, false
}

// hold keeps the lease alive and cancels leadership when it is lost.
func (e *Elector) hold(ctx context.Context, cancel context.CancelFunc, lease int64) {
	defer cancel()
	ka, err := e.cf.KeepAlive(ctx, lease)
	if err != nil {
		e.log.Warn("leader lease keepalive", "err", err)
		return
	}
	watch := e.cf.Watch(ctx, state.KeyLeader)
	last := time.Now()
	tick := time.NewTicker(time.Duration(e.ttl) * time.Second / 4)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case r, ok := <-ka:
			if !ok {
				e.log.Warn("leader lease lost")
				return
			}
			if r.TTL > 0 {
				last = time.Now()
			}
		case w, ok := <-watch:
			if !ok {
				watch = e.cf.Watch(ctx, state.KeyLeader)
				continue
			}
			for _, ev := range w.Events {
				if ev.Kv == nil || string(ev.Kv.Value) != e.id || ev.Kv.Lease != lease {
					e.log.Warn("leader key no longer ours")
					return
				}
			}
		case <-tick.C:
			if time.Since(last) > time.Duration(e.ttl)*time.Second {
				e.log.Warn("leader lease not renewed for a whole TTL: stepping down")
				return
			}
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
