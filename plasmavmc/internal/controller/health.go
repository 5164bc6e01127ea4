package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// The HA manager runs on the leader only (runHA, every HealthInterval):
//
//  1. host health: each host's state from its agent's lease (up → suspect → down →
//     fenced → recovered → up), written to /health/<host> with a HostEvent;
//  2. migration housekeeping: finalize switched or failed migrations, fail stuck ones;
//  3. failover: move the HA VMs of fenced hosts, mark the others HOST_DOWN;
//  4. drains: advance every RUNNING host.drain operation by one step.
//
// Every write is a txn fenced by the leader lease and compare-and-swapped on what it
// read, so a deposed leader changes nothing and a new leader continues where the last
// one stopped: it reads /health and the operations back from ChainFire. Only the fence
// delay is counted in memory, from this leader's own first observation of DOWN (never
// shorter than intended: safe).

// haState is the HA manager's memory of one leadership term. Safe for concurrent use.
type haState struct {
	mu         sync.Mutex
	downSeen   map[string]time.Time // host → this term's first observation of DOWN
	fencers    map[string]*fencer   // host → its running fence command
	eventLease int64
	eventAt    time.Time
	wg         sync.WaitGroup
}

func newHAState() *haState {
	return &haState{downSeen: map[string]time.Time{}, fencers: map[string]*fencer{}}
}

// reset starts a leadership term with an empty memory.
func (h *haState) reset() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.downSeen = map[string]time.Time{}
	h.eventLease = 0
}

// stop cancels every fence command and waits for them.
func (h *haState) stop() {
	h.mu.Lock()
	for name, f := range h.fencers {
		f.cancel()
		delete(h.fencers, name)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// downSince returns when this term first saw host DOWN, recording now if it had not.
func (h *haState) downSince(host string, now time.Time) time.Time {
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.downSeen[host]; ok {
		return t
	}
	h.downSeen[host] = now
	return now
}

// up forgets host's DOWN observation and stops its fence command.
func (h *haState) up(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.downSeen, host)
	if f := h.fencers[host]; f != nil {
		f.cancel()
		delete(h.fencers, host)
	}
}

// fencer is one host's fence command, retried with backoff until it succeeds or is
// cancelled.
type fencer struct {
	cancel   context.CancelFunc
	mu       sync.Mutex
	ok       bool
	failures []string // not yet reported as events
}

func (f *fencer) result() (ok bool, failures []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	failures, f.failures = f.failures, nil
	return f.ok, failures
}

// runHA runs the HA manager until ctx (leadership) ends or a write finds that this
// replica no longer leads.
func (c *Controller) runHA(ctx context.Context, lease int64) {
	c.ha.reset()
	defer c.ha.stop()
	defer c.metrics.hostState.Reset()
	defer c.metrics.hostMaintenance.Reset()
	tick := time.NewTicker(c.cfg.HA.HealthInterval)
	defer tick.Stop()
	for ctx.Err() == nil {
		if err := c.HAPass(ctx, lease); err != nil {
			if errors.Is(err, errNotLeader) {
				c.log.Warn("HA manager: another replica leads")
				return
			}
			if ctx.Err() == nil {
				c.log.Warn("HA pass", "err", err)
			}
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}

// HAPass runs one round of the HA manager, fenced by lease (0: no fence, for tests).
// It returns errNotLeader when the fence failed.
func (c *Controller) HAPass(ctx context.Context, lease int64) error {
	hosts, _, err := c.st.ListHosts(ctx)
	if err != nil {
		return err
	}
	ag, err := c.cf.Get(ctx, state.PrefixAssigned, chainfire.WithPrefix(), chainfire.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("%w: list assigned: %w", state.ErrUnavailable, err)
	}
	placed := map[string]int{}
	for _, kv := range ag.Kvs {
		if h, _, ok := state.ParseAssignedKey(string(kv.Key)); ok {
			placed[h]++
		}
	}
	var errs []error
	for _, h := range hosts {
		if h.Health == nil && !h.Alive && placed[h.Host.Name] == 0 {
			// Registered but never seen alive, and nothing to fail over: an agent starting
			// (it registers, then takes its lease). The API shows DOWN "no heartbeat".
			continue
		}
		if err := c.checkHost(ctx, lease, h); err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			errs = append(errs, fmt.Errorf("host %s: %w", h.Host.Name, err))
		}
	}
	for _, step := range []func(context.Context, int64) error{c.migrationHousekeeping, c.failover, c.runDrains, c.operationDeadlines} {
		if err := step(ctx, lease); err != nil {
			if errors.Is(err, errNotLeader) {
				return err
			}
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// checkHost decides host h's health state from its lease and writes a transition.
func (c *Controller) checkHost(ctx context.Context, lease int64, h *state.HostRecord) error {
	name := h.Host.Name
	prev := h.Health.GetState()
	now := c.now()
	next, reason := prev, ""
	if h.Alive {
		c.ha.up(name)
		switch prev {
		case pb.HostState_HOST_STATE_FENCED:
			next, reason = pb.HostState_HOST_STATE_RECOVERED, fmt.Sprintf("agent back (instance %s); waiting for its rejoin", h.AliveInstance)
		case pb.HostState_HOST_STATE_RECOVERED:
			if h.Host.RejoinedInstance != "" && h.Host.RejoinedInstance == h.AliveInstance {
				next, reason = pb.HostState_HOST_STATE_UP, fmt.Sprintf("rejoined (instance %s)", h.AliveInstance)
			}
		default:
			next, reason = pb.HostState_HOST_STATE_UP, c.upReason(prev, h)
			if left, granted, ok := c.leaseLeft(ctx, h.AliveLease); ok && granted > 0 {
				after := c.cfg.HA.SuspectAfter
				if after <= 0 {
					after = time.Duration(granted) * time.Second / 3
				}
				if time.Duration(left)*time.Second < time.Duration(granted)*time.Second-after {
					next, reason = pb.HostState_HOST_STATE_SUSPECT, fmt.Sprintf("lease renewals missed: %d s of %d s left", left, granted)
				}
			}
		}
	} else {
		switch prev {
		case pb.HostState_HOST_STATE_FENCED:
		case pb.HostState_HOST_STATE_DOWN:
			first := c.ha.downSince(name, now)
			ok, failures := c.fenceResult(ctx, name)
			for _, f := range failures {
				if err := c.writeHostEvent(ctx, lease, h, prev, "fence command failed: "+f); err != nil {
					return err
				}
			}
			switch {
			case ok:
				next, reason = pb.HostState_HOST_STATE_FENCED, "fenced by command"
			case now.Sub(first) >= c.cfg.HA.FenceDelay:
				next, reason = pb.HostState_HOST_STATE_FENCED, fmt.Sprintf("fence delay %v passed", c.cfg.HA.FenceDelay)
			}
		default:
			next, reason = pb.HostState_HOST_STATE_DOWN, "lease expired"
			if h.Health == nil {
				reason = "no heartbeat"
			}
			c.ha.downSince(name, now)
			c.fenceResult(ctx, name) // starts the fence command
		}
	}
	c.metrics.setHostState(name, next)
	c.metrics.setMaintenance(name, h.Maintenance)
	if next == prev {
		return nil
	}
	if next == pb.HostState_HOST_STATE_FENCED {
		c.ha.up(name) // the fence command is no longer needed
	}
	hh := &pb.HostHealth{Host: name, State: next, Reason: reason, Since: timestamppb.New(now), Instance: h.AliveInstance}
	switch next {
	case pb.HostState_HOST_STATE_FENCED:
		hh.FencedAt = hh.Since
	case pb.HostState_HOST_STATE_RECOVERED:
		hh.FencedAt = h.Health.GetFencedAt()
	}
	ev := &pb.HostEvent{Host: name, From: prev, To: next, Reason: reason, Time: hh.Since}
	el, err := c.eventLeaseID(ctx)
	if err != nil {
		return err
	}
	tr, err := c.st.Commit(ctx, fenced(state.Txn{
		If:   []chainfire.Cmp{state.Unchanged(state.HealthKey(name), h.HealthRev)},
		Then: []chainfire.Op{state.PutHealthOp(hh), state.PutHostEventOp(ev, el)},
	}, lease))
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		if lease != 0 && !c.stillLeader(ctx, lease) {
			return errNotLeader
		}
		return nil // changed meanwhile: decided again next round
	}
	h.Health, h.HealthRev = hh, tr.GetHeader().GetRevision()
	c.metrics.transitions.WithLabelValues(stateName(prev), stateName(next)).Inc()
	c.log.Info("host state", "host", name, "from", stateName(prev), "to", stateName(next), "reason", reason)
	return nil
}

func (c *Controller) upReason(prev pb.HostState, h *state.HostRecord) string {
	switch prev {
	case pb.HostState_HOST_STATE_SUSPECT:
		return "lease renewed"
	case pb.HostState_HOST_STATE_DOWN:
		return fmt.Sprintf("agent back before the fence (instance %s)", h.AliveInstance)
	}
	return fmt.Sprintf("agent alive (instance %s)", h.AliveInstance)
}

// leaseLeft reads the remaining and granted TTL of the alive key's lease; ok is false
// when it could not be read or the lease is gone (the key goes with it: decided next
// round).
func (c *Controller) leaseLeft(ctx context.Context, lease int64) (left, granted int64, ok bool) {
	if lease == 0 {
		return 0, 0, false
	}
	r, err := c.cf.TimeToLive(ctx, lease, false)
	if err != nil || r.TTL < 0 {
		return 0, 0, false
	}
	return r.TTL, r.GrantedTTL, true
}

// writeHostEvent records an event of host h that is not a transition (a failed fence
// command).
func (c *Controller) writeHostEvent(ctx context.Context, lease int64, h *state.HostRecord, st pb.HostState, reason string) error {
	el, err := c.eventLeaseID(ctx)
	if err != nil {
		return err
	}
	ev := &pb.HostEvent{Host: h.Host.Name, From: st, To: st, Reason: reason, Time: timestamppb.New(c.now())}
	tr, err := c.st.Commit(ctx, fenced(state.Txn{Then: []chainfire.Op{state.PutHostEventOp(ev, el)}}, lease))
	if err != nil {
		return err
	}
	if !tr.Succeeded {
		return errNotLeader
	}
	c.log.Warn("host event", "host", h.Host.Name, "reason", reason)
	return nil
}

// eventLeaseID is the lease host events are put on: granted for EventTTL, replaced
// hourly, so events live between EventTTL - 1 h and EventTTL.
func (c *Controller) eventLeaseID(ctx context.Context) (int64, error) {
	c.ha.mu.Lock()
	defer c.ha.mu.Unlock()
	if c.ha.eventLease != 0 && c.now().Sub(c.ha.eventAt) < time.Hour {
		return c.ha.eventLease, nil
	}
	g, err := c.cf.Grant(ctx, int64(c.cfg.HA.EventTTL.Seconds()))
	if err != nil {
		return 0, fmt.Errorf("%w: grant host event lease: %w", state.ErrUnavailable, err)
	}
	c.ha.eventLease, c.ha.eventAt = g.ID, c.now()
	return g.ID, nil
}

// fenceResult starts host's fence command if it is configured and not running, and
// reports whether it succeeded and its failures since the last call.
func (c *Controller) fenceResult(ctx context.Context, host string) (bool, []string) {
	if len(c.cfg.HA.FenceCommand) == 0 {
		return false, nil
	}
	c.ha.mu.Lock()
	f := c.ha.fencers[host]
	if f == nil {
		fctx, cancel := context.WithCancel(ctx)
		f = &fencer{cancel: cancel}
		c.ha.fencers[host] = f
		c.ha.wg.Go(func() { c.runFencer(fctx, host, f) })
	}
	c.ha.mu.Unlock()
	return f.result()
}

// runFencer runs the fence command for host until it exits 0 (backoff 1 s doubling to
// 30 s between failures) or ctx ends.
func (c *Controller) runFencer(ctx context.Context, host string, f *fencer) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := c.fenceOnce(ctx, host)
		if ctx.Err() != nil {
			return
		}
		f.mu.Lock()
		if err == nil {
			f.ok = true
		} else {
			f.failures = append(f.failures, err.Error())
		}
		f.mu.Unlock()
		if err == nil {
			c.metrics.fenceCommands.WithLabelValues("ok").Inc()
			c.log.Info("fence command succeeded", "host", host)
			return
		}
		c.metrics.fenceCommands.WithLabelValues("failed").Inc()
		c.log.Warn("fence command failed", "host", host, "err", err, "retry_in", backoff)
		sleep(ctx, backoff)
		backoff = min(2*backoff, 30*time.Second)
	}
}

// fenceOnce runs the fence command once for host; the error carries the exit status and
// the last line of its output.
func (c *Controller) fenceOnce(ctx context.Context, host string) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.HA.FenceCommandTimeout)
	defer cancel()
	argv := make([]string, len(c.cfg.HA.FenceCommand))
	for i, a := range c.cfg.HA.FenceCommand {
		argv[i] = strings.ReplaceAll(a, "{host}", host)
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(cmd.Environ(), "PLASMAVMC_FENCE_HOST="+host)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Run(); err != nil {
		if last := lastLine(out.String()); last != "" {
			return fmt.Errorf("%v: %s", err, last)
		}
		return err
	}
	return nil
}

// lastLine is the last non-empty line of s (at most 256 bytes).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	l := strings.TrimSpace(lines[len(lines)-1])
	if len(l) > 256 {
		l = l[:253] + "..."
	}
	return l
}
