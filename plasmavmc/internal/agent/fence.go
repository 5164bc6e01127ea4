package agent

import (
	"context"
	"errors"
	"time"
)

// Self-fence and (re)join.
//
// A host may run VMs only while its agent holds the heartbeat lease: once the lease is
// lost, or could have expired (the fence deadline: last renewal sent + TTL - margin), the
// controller may declare the host fenced and restart its HA VMs elsewhere. So the agent
// then stops every HA domain (selfFence), starts nothing, and rejoins with a new lease
// and a new instance id (join). The watchdog process does the same destruction should
// the agent be unable to.
//
// Starts (first starts, restarts after a crash, migrations out) are allowed only while
// mayStart: the current instance has joined (its relist is in) and the lease is valid.

// mayStart reports whether the agent may start a domain (or a migration) now.
func (a *agent) mayStart() bool {
	return a.joined.Load() && time.Now().Before(a.fenceAt())
}

// startBlockedReason says why mayStart is false (for statuses and logs).
func (a *agent) startBlockedReason() string {
	if r := a.fenceReason.Load(); r != nil && !a.joined.Load() {
		return "host self-fenced (" + *r + "); starts after the host has rejoined"
	}
	if !a.joined.Load() {
		return "waiting for the host to join (heartbeat lease, fresh list of assigned VMs)"
	}
	return "heartbeat lease not renewed in time; waiting for the host to rejoin"
}

// selfFence makes this host safe to be declared dead: starts stop at once (joined is
// cleared before any domain is listed, so a start racing with the fence either sees it
// or is listed and destroyed), then every running HA domain of the host is destroyed,
// retrying until done or ctx ends, and the fence is recorded (log, fenced file, metric).
// Non-HA domains keep running: they are never restarted elsewhere.
func (a *agent) selfFence(ctx context.Context, reason string) {
	a.joined.Store(false)
	a.fenceReason.Store(&reason)
	start := time.Now()
	a.m.selfFences.Inc()
	a.log.Error("SELF-FENCE: destroying this host's HA domains; starting nothing until the host rejoins",
		"reason", reason, "instance", a.instanceID())
	for _, w := range a.workerList() {
		w.poke()
	}
	destroyed := fenceDomains(ctx, a.drv, a.cfg.HostName, a.log)
	if ctx.Err() != nil {
		return
	}
	took := time.Since(start)
	if err := appendFenceRecord(a.cfg.StateDir, FenceRecord{Time: start, By: "agent", Host: a.cfg.HostName,
		Reason: reason, Destroyed: destroyed, TookMS: took.Milliseconds()}); err != nil {
		a.log.Warn("cannot record the self-fence in the fenced file", "err", err)
	}
	a.log.Error("SELF-FENCE done; rejoining", "destroyed", destroyed, "took", took)
}

// join brings instance inst in after its lease was granted and its alive key put at
// revision rev: the informer relists the assigned VMs and the agent waits until its
// cache reflects a revision >= rev (so no record older than the lease is trusted); then
// starts are allowed, every domain and VM is reconciled by the epoch rule (stale copies
// destroyed, assigned VMs started), and once each worker has reconciled (at most 30 s)
// the host record's rejoined_instance is set to inst. Ends early when ctx does (the
// lease was lost meanwhile).
func (a *agent) join(ctx context.Context, inst string, rev int64) {
	start := time.Now()
	a.requestRelist()
	for !a.synced() || a.inf.Revision() < rev {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	seq := a.joinSeq.Add(1)
	a.joined.Store(true)
	fenced := a.fenceReason.Load() != nil
	a.log.Info("host joined: converging by the epoch rule", "instance", inst, "revision", a.inf.Revision(),
		"after_self_fence", fenced)
	a.sweep(ctx)
	ws := a.workerList()
	for _, w := range ws {
		w.poke()
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, w := range ws {
		for w.joinSeen.Load() < seq && !w.exited.Load() && time.Now().Before(deadline) {
			select {
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
		if w.joinSeen.Load() < seq && !w.exited.Load() {
			a.log.Warn("rejoin: a VM has not converged within 30 s; reporting the rejoin anyway", "vm", w.id)
		}
	}
	a.rejoined.Store(&inst)
	a.kickHost()
	for {
		if p := a.hostWritten.Load(); p != nil && *p == inst {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	a.log.Info("host rejoin complete: rejoined_instance written", "instance", inst, "took", time.Since(start).Round(time.Millisecond))
}

// requestRelist makes runInformer restart the informer, which lists again.
func (a *agent) requestRelist() {
	select {
	case a.relist <- struct{}{}:
	default:
	}
}

// errFenced: a start was undone because the host self-fenced meanwhile (retried once
// the host has rejoined).
var errFenced = errors.New("agent: host self-fenced")
