package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
)

// Lease renewal pacing: a renewal every LeaseTTL/renewDivisor (2 s for the default 10 s),
// a failed one retried after renewRetry, so that several renewals can fail before the
// fence deadline (last renewal sent + TTL - FenceMargin) passes.
const (
	renewDivisor = 5
	renewRetry   = 250 * time.Millisecond
	minRenew     = 200 * time.Millisecond
)

// holdLease keeps /plasmavmc/alive/<host> = instance id on a lease of LeaseTTL until ctx
// ends. Each lease goes through the same cycle:
//
//  1. grant (retried), put the alive key with the current instance id (retried);
//  2. join (join.go), concurrently with the renewals: relist the assigned VMs at a
//     revision after the put, allow starts, converge by the epoch rule, write
//     rejoined_instance;
//  3. renew (keepLease) every LeaseTTL/5, petting the watchdog after each renewal, until
//     the lease is gone (ErrLeaseNotFound) or the fence deadline passes without a
//     renewal;
//  4. self-fence (fence.go): starts stop, HA domains are destroyed, a new instance id is
//     drawn; then back to 1 (the rejoin).
//
// The validity of a lease is counted from when its grant or renewal was sent (the
// server starts its TTL later), so the agent's deadline is never after the server's.
func (a *agent) holdLease(ctx context.Context) {
	ttl := int64(a.cfg.LeaseTTL / time.Second)
	for ctx.Err() == nil {
		var lease int64
		var validUntil time.Time
		retry(ctx, a.log, "grant heartbeat lease", func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, a.cfg.LeaseTTL/2) // an answer after that is of little use
			defer cancel()
			sent := time.Now()
			resp, err := a.cf.Grant(ctx, ttl)
			if err != nil {
				return err
			}
			lease, validUntil = resp.ID, sent.Add(time.Duration(resp.TTL)*time.Second)
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		a.m.leaseGrants.Inc()
		inst := a.instanceID()
		var rev int64
		lost := false
		retry(ctx, a.log, "put heartbeat key", func(ctx context.Context) error {
			if time.Now().After(validUntil) {
				lost = true // expired before the key could be put: grant again
				return nil
			}
			resp, err := a.cf.Put(ctx, state.AliveKey(a.cfg.HostName), inst, chainfire.WithLease(lease))
			if err != nil {
				return err
			}
			rev = resp.GetHeader().GetRevision()
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		if lost {
			a.log.Warn("heartbeat lease expired before the alive key was put; granting a new one")
			continue
		}
		a.log.Info("heartbeat lease held", "lease_id", strconv.FormatInt(lease, 16), "ttl", a.cfg.LeaseTTL,
			"instance", inst, "revision", rev)
		a.renewed(validUntil, inst)
		a.kickHost() // capacity and versions current on each (re)grant

		jctx, endJoin := context.WithCancel(ctx)
		joined := make(chan struct{})
		go func() {
			defer close(joined)
			a.join(jctx, inst, rev)
		}()
		reason := a.keepLease(ctx, lease, validUntil, inst)
		endJoin()
		<-joined
		if ctx.Err() != nil {
			return
		}
		a.selfFence(ctx, reason)
		go func(lease int64) { // the old lease has no key left; don't wait for its TTL
			rctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			defer cancel()
			_, _ = a.cf.Revoke(rctx, lease)
		}(lease)
		a.newInstance()
	}
}

// renewed records that the lease is valid until validUntil and pets the watchdog.
func (a *agent) renewed(validUntil time.Time, inst string) {
	a.leaseValidUntil.Store(validUntil.UnixNano())
	if a.pet != nil {
		a.pet.set(validUntil, inst)
	}
}

// fenceAt is when the host self-fences unless the lease is renewed: validity minus the
// fence margin.
func (a *agent) fenceAt() time.Time {
	return time.Unix(0, a.leaseValidUntil.Load()).Add(-a.cfg.FenceMargin)
}

// keepLease renews lease until it is gone or the fence deadline passes, and returns why
// it stopped ("" when ctx ended). Renewals are sent one at a time, each bounded by the
// time left before the deadline.
func (a *agent) keepLease(ctx context.Context, lease int64, validUntil time.Time, inst string) string {
	interval := max(a.cfg.LeaseTTL/renewDivisor, minRenew)
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		sent time.Time
		ttl  int64
		err  error
	}
	results := make(chan result, 1)
	inflight := false
	// soon is the delay before the next renewal: the interval, or less when little
	// validity is left (a grant that waited long for an answer counts from when it was
	// sent, so its validity may be mostly gone: renew at once rather than fence).
	soon := func() time.Duration {
		return min(interval, max(time.Until(validUntil.Add(-a.cfg.FenceMargin))/3, 0))
	}
	next := time.NewTimer(soon())
	defer next.Stop()
	deadline := time.NewTimer(time.Until(validUntil.Add(-a.cfg.FenceMargin)))
	defer deadline.Stop()
	lastOK := time.Now()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return ""
		case <-deadline.C:
			return fmt.Sprintf("lease not renewed in time: last renewal answered %v ago (lease TTL %v, fence margin %v)",
				time.Since(lastOK).Round(time.Millisecond), a.cfg.LeaseTTL, a.cfg.FenceMargin)
		case <-next.C:
			if inflight {
				continue
			}
			inflight = true
			bound := max(time.Until(validUntil.Add(-a.cfg.FenceMargin)), minRenew)
			go func() {
				sent := time.Now()
				c, cancel := context.WithTimeout(kctx, bound)
				defer cancel()
				resp, err := a.cf.KeepAliveOnce(c, lease)
				r := result{sent: sent, err: err}
				if err == nil {
					r.ttl = resp.TTL
				}
				results <- r
			}()
		case r := <-results:
			inflight = false
			switch {
			case r.err == nil:
				a.m.leaseRenewals.Inc()
				if failures > 0 {
					a.log.Info("heartbeat lease renewed again", "failed_renewals", failures)
				}
				failures = 0
				lastOK = time.Now()
				validUntil = r.sent.Add(time.Duration(r.ttl) * time.Second)
				a.renewed(validUntil, inst)
				if !deadline.Stop() {
					select {
					case <-deadline.C:
					default:
					}
				}
				deadline.Reset(time.Until(validUntil.Add(-a.cfg.FenceMargin)))
				next.Reset(soon())
			case errors.Is(r.err, chainfire.ErrLeaseNotFound):
				return "heartbeat lease lost (expired or revoked in ChainFire)"
			default:
				failures++
				if failures == 1 || failures%10 == 0 {
					a.log.Warn("heartbeat lease renewal failed; retrying", "err", r.err, "failures", failures,
						"fence_in", time.Until(validUntil.Add(-a.cfg.FenceMargin)).Round(time.Millisecond))
				}
				next.Reset(renewRetry)
			}
		}
	}
}

// instanceID is the current agent instance id (the value of /alive/<host>).
func (a *agent) instanceID() string { return *a.instance.Load() }

// newInstance draws a new instance id (after a self-fence: the rejoin is a new instance).
func (a *agent) newInstance() {
	id := newInstanceID()
	a.instance.Store(&id)
}

// rejoinedInstance is the instance whose join completed (written to the host record).
func (a *agent) rejoinedInstance() string {
	if p := a.rejoined.Load(); p != nil {
		return *p
	}
	return ""
}

// kickHost asks hostLoop to write the host record again.
func (a *agent) kickHost() {
	select {
	case a.hostKick <- struct{}{}:
	default:
	}
}

// hostLoop writes the host record (hostRecord, computed afresh for every attempt) each
// time it is kicked, retrying until ChainFire answers, until ctx ends. One goroutine
// writes it, so a newer record never loses to an older one.
func (a *agent) hostLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-a.hostKick:
		}
		retry(ctx, a.log, "register host", func(ctx context.Context) error {
			rec := a.hostRecord()
			if err := a.st.RegisterHost(ctx, rec); err != nil {
				return err
			}
			a.hostWritten.Store(&rec.RejoinedInstance)
			return nil
		})
		if ctx.Err() == nil {
			a.log.Debug("host registered", "rejoined_instance", a.rejoinedInstance())
		}
	}
}
