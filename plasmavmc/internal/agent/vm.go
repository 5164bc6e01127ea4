package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// tick is how often a worker looks at its VM's heartbeat and pending timers.
const tick = 500 * time.Millisecond

// vmWorker converges one VM. Its reconciles run one at a time on its own goroutine (run),
// so everything about one VM is serialized while VMs proceed in parallel. Other
// goroutines talk to it through setDesired, event and poke, which only record and wake.
type vmWorker struct {
	a    *agent
	id   string
	log  *slog.Logger
	wake chan struct{} // capacity 1

	mu        sync.Mutex
	desired   *pb.VM // nil: not (or no longer) assigned here
	stopCause string // why QEMU stopped, from the latest unexpected event
	observed  pb.VMState

	// joinSeen is the latest agent join (agent.joinSeq) this worker reconciled after;
	// exited is set when run returns. Read by join.
	joinSeen atomic.Int64
	exited   atomic.Bool

	// Owned by run's goroutine.
	mon          *guest.Monitor
	exists       bool
	dom          driver.Domain
	wasRunning   bool      // seen running since we last stopped it on purpose
	startedAt    time.Time // when this agent last started QEMU (heartbeats before are stale)
	staleBoot    string    // boot id before that start or reboot: its heartbeats are stale too
	seeded       bool      // status read back from ChainFire
	restarts     int32
	restartTimes []time.Time
	restartAt    time.Time // pending restart after an unexpected stop
	startErrs    int
	retryAt      time.Time // next reconcile after a transient failure
	nextRecon    time.Time
	latchGen     int64 // generation at which the VM was given up (FAILED) or left stopped by policy
	latchState   pb.VMState
	latchReason  string
	rebootDone   string
	finished     map[string]bool // operation ids already enqueued as finished
	deletedGen   int64           // generation whose delete completed (0: none)
	state        pb.VMState
	reason       string
	observedGen  int64
	bootID       string
	bootTime     time.Time
	hb           *pb.Heartbeat
	lastWritten  *pb.VMStatus
	lastWriteAt  time.Time
	// quiet: the VM is not this host's to report (incoming migration, another host
	// named, migrated away): no status is written.
	quiet bool
	// soon asks for the next reconcile within a second (waiting on something external).
	soon bool
	// waitLogged avoids repeating the epoch rule's "record lags" warning.
	waitLogged bool
	// Live migration out (migrate.go): mig is the one running (nil: none); migDone the
	// operations finished (never retried); migratedAway the operation whose switch
	// happened (the VM is the target's now: nothing is started here for it).
	mig          *migration
	migDone      map[string]bool
	migratedAway string
}

func newWorker(a *agent, id string) *vmWorker {
	return &vmWorker{a: a, id: id, log: a.log.With("vm", id), wake: make(chan struct{}, 1), finished: map[string]bool{},
		migDone: map[string]bool{}}
}

func (w *vmWorker) setDesired(vm *pb.VM) {
	w.mu.Lock()
	w.desired = vm
	w.mu.Unlock()
	w.poke()
}

func (w *vmWorker) hasDesired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.desired != nil
}

func (w *vmWorker) getDesired() *pb.VM {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.desired
}

func (w *vmWorker) observedState() pb.VMState {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.observed
}

// poke asks for a reconcile soon.
func (w *vmWorker) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// event records what a driver event says about why QEMU stopped, and wakes the worker.
// A guest panic (crashed) is kept over the stopped event that follows it.
func (w *vmWorker) event(ev driver.Event) {
	var cause string
	switch {
	case ev.Type == driver.EventCrashed:
		cause = "guest " + ev.Reason
	case ev.Type == driver.EventStopped && ev.Unexpected:
		cause = "QEMU stopped: " + ev.Reason
	case ev.Type == driver.EventStopped && ev.Reason == "shutdown":
		cause = "guest powered off"
	case ev.Type == driver.EventStopped:
		cause = "stopped: " + ev.Reason
	}
	if cause != "" {
		w.mu.Lock()
		if ev.Type == driver.EventCrashed || !strings.HasPrefix(w.stopCause, "guest ") {
			w.stopCause = cause
		}
		w.mu.Unlock()
		w.log.Info("domain event", "type", ev.Type, "reason", ev.Reason, "unexpected", ev.Unexpected)
	}
	w.poke()
}

func (w *vmWorker) takeStopCause() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.stopCause
	w.stopCause = ""
	return c
}

// run reconciles until the VM is neither assigned here nor has a domain, or ctx ends.
func (w *vmWorker) run(ctx context.Context) {
	defer w.exited.Store(true)
	mctx, stopMon := context.WithCancel(ctx)
	defer stopMon()
	w.mon = guest.NewFileMonitor(w.a.drv.Paths(w.id).SerialLog, 200*time.Millisecond, nil)
	go w.mon.Run(mctx)

	t := time.NewTicker(tick)
	defer t.Stop()
	woken := true
	for {
		now := time.Now()
		due := woken || !now.Before(w.nextRecon) ||
			(!w.restartAt.IsZero() && !now.Before(w.restartAt)) ||
			(!w.retryAt.IsZero() && !now.Before(w.retryAt))
		if due {
			if done := w.reconcileTimed(ctx); done {
				w.log.Debug("worker retired")
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		w.publish(false)
		woken = false
		select {
		case <-ctx.Done():
			return
		case <-w.wake:
			woken = true
		case <-t.C:
		}
	}
}

func (w *vmWorker) reconcileTimed(ctx context.Context) bool {
	start := time.Now()
	seq := w.a.joinSeq.Load() // before joined: see agent.join
	joined := w.a.joined.Load()
	w.retryAt = time.Time{}
	w.soon = false
	done, err := w.reconcile(ctx)
	if joined {
		w.joinSeen.Store(seq)
	}
	outcome := "ok"
	if err != nil {
		outcome = "error"
		if ctx.Err() == nil {
			w.log.Warn("reconcile failed; retrying", "err", err)
		}
		w.startErrs++
		w.retryAt = time.Now().Add(min(time.Duration(1<<min(w.startErrs, 6))*250*time.Millisecond, 15*time.Second))
	} else {
		w.startErrs = 0
	}
	w.nextRecon = time.Now().Add(w.a.cfg.ReconcileInterval)
	if w.soon || w.mig != nil {
		w.nextRecon = time.Now().Add(time.Second)
	}
	w.a.m.reconcile.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
	return done
}

// setState records the observed state; publish writes it.
func (w *vmWorker) setState(s pb.VMState, reason string) {
	w.state, w.reason = s, reason
	w.mu.Lock()
	w.observed = s
	w.mu.Unlock()
}

// reconcile converges the VM once. done reports that the worker has nothing left to do.
func (w *vmWorker) reconcile(ctx context.Context) (done bool, err error) {
	vm := w.getDesired()
	if err := w.refreshDomain(ctx); err != nil {
		return false, err
	}
	if w.mig != nil {
		select {
		case <-w.mig.done:
			w.migrationFinished(vm)
		default:
			w.quiet = false
			w.setState(pb.VMState_VM_STATE_MIGRATING, "live migration to "+w.mig.target+" in progress")
			return false, nil
		}
	}
	if vm == nil {
		return w.reconcileUnassigned(ctx)
	}
	if cont, err := w.applyEpochRule(ctx, vm); !cont || err != nil {
		return false, err
	}
	w.seed(ctx, vm)
	if handled, err := w.reconcileMigrationSource(ctx, vm); handled || err != nil {
		return false, err
	}
	gen := vm.GetGeneration()
	labels := vm.GetLabels()
	if labels[state.LabelDelete] != "" {
		return false, w.reconcileDelete(ctx, vm)
	}
	w.deletedGen = 0
	if w.exists && w.dom.Running() {
		w.wasRunning = true
	}
	if vm.GetPowerState() == pb.PowerState_POWER_STATE_STOPPED {
		return false, w.reconcileStopped(ctx, vm)
	}

	// Desired: running.
	if w.exists && w.dom.Running() {
		w.restartAt = time.Time{}
		if w.dom.Meta.Generation != gen {
			if err := w.define(ctx, vm); err != nil && !permanent(err) {
				return false, err
			}
		}
		if err := w.maybeReboot(ctx, vm); err != nil {
			return false, err
		}
		w.setState(pb.VMState_VM_STATE_RUNNING, "")
		w.converged(vm, pb.OperationState_OPERATION_STATE_DONE, "", state.LabelCreate, state.LabelStart)
		return false, nil
	}
	if w.latchGen == gen {
		w.setState(w.latchState, w.latchReason)
		return false, nil
	}
	if !w.a.mayStart() {
		// Self-fenced or not joined yet: start nothing. A stop meanwhile (the fence
		// destroyed it) is not a crash: the VM starts afresh once the host has joined.
		w.wasRunning, w.restartAt = false, time.Time{}
		w.takeStopCause()
		w.setState(pb.VMState_VM_STATE_STARTING, w.a.startBlockedReason())
		return false, nil
	}
	cause := w.takeStopCause()
	unexpected := w.wasRunning || (w.exists && (w.dom.Reason == "crashed" || w.dom.Reason == "failed"))
	if unexpected {
		if cause == "" {
			cause = "QEMU stopped: " + w.dom.Reason
		}
		ha := vm.GetSpec().GetHa()
		if ha.GetRestart() == pb.RestartPolicy_RESTART_POLICY_NEVER {
			w.latch(vm, pb.VMState_VM_STATE_STOPPED, cause+"; restart policy NEVER")
			return false, nil
		}
		maxN, window := int(ha.GetMaxRestarts()), time.Duration(ha.GetRestartWindowSeconds())*time.Second
		if maxN <= 0 {
			maxN = w.a.cfg.MaxRestarts
		}
		if window <= 0 {
			window = w.a.cfg.RestartWindow
		}
		now := time.Now()
		kept := w.restartTimes[:0]
		for _, t := range w.restartTimes {
			if now.Sub(t) < window {
				kept = append(kept, t)
			}
		}
		w.restartTimes = kept
		if len(kept) >= maxN {
			w.latch(vm, pb.VMState_VM_STATE_FAILED,
				fmt.Sprintf("restart limit reached: %d restarts within %s; last stop: %s", len(kept), window, cause))
			return false, nil
		}
		if w.restartAt.IsZero() {
			// The first restart in the window is immediate (a crash costs only the boot);
			// a crash loop then backs off: RestartBackoff, doubling up to the max.
			var delay time.Duration
			if len(kept) > 0 {
				delay = min(w.a.cfg.RestartBackoff<<(len(kept)-1), w.a.cfg.RestartBackoffMax)
			}
			w.restartAt = now.Add(delay)
			w.log.Warn("VM stopped unexpectedly; restarting", "cause", cause, "in", delay, "restarts_in_window", len(kept))
			w.setState(pb.VMState_VM_STATE_STARTING, fmt.Sprintf("restarting after unexpected stop (%s)", cause))
			w.stashCause(cause)
			w.publish(true)
		}
		if now.Before(w.restartAt) {
			w.stashCause(cause)
			return false, nil
		}
		// Every attempt counts against the limit, failed ones too: a VM whose QEMU dies
		// while starting must end FAILED, not loop.
		w.restarts++
		w.restartTimes = append(w.restartTimes, now)
		w.restartAt = time.Time{}
		w.a.m.restarts.WithLabelValues(causeLabel(cause)).Inc()
		if err := w.start(ctx, vm); err != nil {
			w.stashCause(cause)
			w.wasRunning = true // still an unexpected stop: the next attempt is a restart
			return false, w.startFailed(vm, err)
		}
		w.log.Info("VM restarted", "cause", cause, "restarts", w.restarts)
		w.setState(pb.VMState_VM_STATE_RUNNING, "restarted after: "+cause)
		w.converged(vm, pb.OperationState_OPERATION_STATE_DONE, "", state.LabelCreate, state.LabelStart)
		return false, nil
	}
	w.setState(pb.VMState_VM_STATE_STARTING, "")
	w.publish(true)
	if err := w.start(ctx, vm); err != nil {
		return false, w.startFailed(vm, err)
	}
	w.setState(pb.VMState_VM_STATE_RUNNING, "")
	w.converged(vm, pb.OperationState_OPERATION_STATE_DONE, "", state.LabelCreate, state.LabelStart)
	return false, nil
}

// stashCause puts back the stop cause for the next attempt.
func (w *vmWorker) stashCause(c string) {
	w.mu.Lock()
	if w.stopCause == "" {
		w.stopCause = c
	}
	w.mu.Unlock()
}

func causeLabel(cause string) string {
	switch {
	case strings.HasPrefix(cause, "guest "):
		return "guest"
	case strings.HasPrefix(cause, "QEMU"):
		return "qemu"
	}
	return "other"
}

// startFailed handles a failed start: permanent failures give the VM up at this
// generation; others are retried.
func (w *vmWorker) startFailed(vm *pb.VM, err error) error {
	if permanent(err) {
		w.latch(vm, pb.VMState_VM_STATE_FAILED, err.Error())
		return nil
	}
	w.setState(pb.VMState_VM_STATE_STARTING, "start failed, retrying: "+err.Error())
	return err
}

// latch gives the VM up (FAILED) or leaves it stopped by policy until its generation
// changes (a start or a new spec), and fails the operations waiting for it to run.
func (w *vmWorker) latch(vm *pb.VM, s pb.VMState, reason string) {
	w.latchGen, w.latchState, w.latchReason = vm.GetGeneration(), s, reason
	w.wasRunning, w.restartAt = false, time.Time{}
	w.log.Warn("VM left "+stateName(s), "reason", reason)
	w.setState(s, reason)
	w.observedGen = vm.GetGeneration()
	w.converged(vm, pb.OperationState_OPERATION_STATE_FAILED, reason, state.LabelCreate, state.LabelStart)
}

// converged marks the VM converged at its generation and finishes the operations named
// by the labels given.
func (w *vmWorker) converged(vm *pb.VM, st pb.OperationState, reason string, labels ...string) {
	w.observedGen = vm.GetGeneration()
	for _, l := range labels {
		w.finish(vm.GetLabels()[l], st, reason)
	}
}

// finish enqueues operation op's result once.
func (w *vmWorker) finish(op string, st pb.OperationState, reason string) {
	if op == "" || w.finished[op] {
		return
	}
	w.finished[op] = true
	w.a.writer.enqueue(&write{kind: writeFinish, op: op, state: st, reason: reason})
}

// refreshDomain reads the domain from the hypervisor.
func (w *vmWorker) refreshDomain(ctx context.Context) error {
	gctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	d, err := w.a.drv.Get(gctx, w.id)
	switch {
	case err == nil:
		w.exists, w.dom = true, d
	case errors.Is(err, driver.ErrNotFound):
		w.exists, w.dom = false, driver.Domain{}
	default:
		return fmt.Errorf("hypervisor: %w", err)
	}
	return nil
}

// seed reads the VM's last status back once (restart count, boot id, a FAILED verdict),
// so that a restarted agent carries on where the previous one stopped. Without ChainFire
// it is retried at the next reconcile; the VM is converged meanwhile.
func (w *vmWorker) seed(ctx context.Context, vm *pb.VM) {
	if w.seeded {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := w.a.cf.Get(sctx, state.StatusKey(w.id))
	if err != nil {
		return
	}
	w.seeded = true
	if len(resp.Kvs) == 0 {
		return
	}
	st, err := state.DecodeStatus(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	migratedFrom := vm.GetMigration().GetSourceHost()
	if err != nil || (st.GetHost() != "" && st.GetHost() != w.a.cfg.HostName && st.GetHost() != migratedFrom) {
		return // another host's: a failover starts afresh; a live migration carries on
	}
	w.restarts = max(w.restarts, st.GetRestarts())
	if w.bootID == "" {
		w.bootID, w.bootTime = st.GetBootId(), st.GetBootTime().AsTime()
		if st.GetBootTime() == nil {
			w.bootTime = time.Time{}
		}
	}
	if st.GetObservedGeneration() == vm.GetGeneration() && vm.GetPowerState() != pb.PowerState_POWER_STATE_STOPPED &&
		(st.GetState() == pb.VMState_VM_STATE_FAILED || st.GetState() == pb.VMState_VM_STATE_STOPPED) {
		w.latchGen, w.latchState, w.latchReason = vm.GetGeneration(), st.GetState(), st.GetReason()
	}
	if r := vm.GetLabels()[state.LabelReboot]; r != "" && st.GetObservedGeneration() >= vm.GetGeneration() {
		w.rebootDone = r
	}
}

// define writes the domain definition for vm (creating its disks when needed).
func (w *vmWorker) define(ctx context.Context, vm *pb.VM) error {
	dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	spec, err := w.a.buildSpec(dctx, vm)
	if err != nil {
		return err
	}
	if err := w.a.drv.Define(dctx, spec); err != nil {
		return err
	}
	w.dom.Meta.Generation = vm.GetGeneration()
	return nil
}

// start defines the domain if it is missing or stale and starts it.
func (w *vmWorker) start(ctx context.Context, vm *pb.VM) error {
	if !w.exists || w.dom.Meta.Generation != vm.GetGeneration() {
		if err := w.define(ctx, vm); err != nil {
			return err
		}
		w.exists = true
	}
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	w.startedAt, w.staleBoot = time.Now(), w.mon.Latest().Boot
	if err := w.a.drv.Start(sctx, w.id); err != nil {
		return err
	}
	if isHA(vm) && !w.a.joined.Load() {
		// A self-fence began while this start was under way (it listed the domains
		// before this one ran, or after: either way it must not keep running).
		_ = w.a.drv.Destroy(sctx, w.id)
		return fmt.Errorf("%w: host self-fenced while the VM was starting", errFenced)
	}
	w.wasRunning, w.restartAt = true, time.Time{}
	w.takeStopCause()
	w.log.Info("VM started", "generation", vm.GetGeneration())
	return nil
}

// maybeReboot performs a reboot the controller asked for with the reboot label, once per
// distinct operation id, and finishes that operation.
func (w *vmWorker) maybeReboot(ctx context.Context, vm *pb.VM) error {
	op := vm.GetLabels()[state.LabelReboot]
	if op == "" || op == w.rebootDone {
		return nil
	}
	gctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	rec, _, err := w.a.st.GetOperation(gctx, op)
	cancel()
	switch {
	case errors.Is(err, state.ErrNotFound):
		w.rebootDone = op
		return nil
	case err != nil:
		return fmt.Errorf("reboot operation %s: %w", op, err) // retried: never reboot blindly
	case rec.GetState() != pb.OperationState_OPERATION_STATE_RUNNING:
		w.rebootDone = op
		return nil
	}
	before := w.mon.Latest()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w.log.Info("rebooting", "operation", op)
	if err := w.a.drv.Reboot(rctx, w.id); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	w.startedAt, w.staleBoot = time.Now(), before.Boot
	w.rebootDone = op
	reason := ""
	if before.Seq > 0 {
		// The guest has heartbeats: wait for a new boot, reset it if ACPI was ignored.
		_, err := w.mon.Wait(rctx, func(o guest.Observation) bool { return o.Boot != before.Boot })
		if err != nil && ctx.Err() == nil {
			w.log.Warn("guest ignored the ACPI reboot; resetting")
			reason = "guest ignored ACPI reboot; reset"
			if err := w.a.drv.Reset(ctx, w.id); err != nil {
				w.finish(op, pb.OperationState_OPERATION_STATE_FAILED, "reset: "+err.Error())
				return nil
			}
		}
	}
	w.finish(op, pb.OperationState_OPERATION_STATE_DONE, reason)
	return nil
}

// reconcileStopped converges a VM whose desired power state is STOPPED.
func (w *vmWorker) reconcileStopped(ctx context.Context, vm *pb.VM) error {
	w.restartAt = time.Time{}
	w.takeStopCause()
	if r := vm.GetLabels()[state.LabelReboot]; r != "" && r != w.rebootDone {
		w.rebootDone = r
		w.finish(r, pb.OperationState_OPERATION_STATE_FAILED, "VM is stopped")
	}
	if w.exists && w.dom.Running() {
		timeout := w.a.cfg.StopTimeout
		if v, ok := vm.GetLabels()[state.LabelStopTimeout]; ok {
			if s, err := strconv.Atoi(v); err == nil && s >= 0 {
				timeout = time.Duration(s) * time.Second
			}
		}
		w.wasRunning = false
		w.setState(pb.VMState_VM_STATE_STOPPING, "")
		w.publish(true)
		sctx, cancel := context.WithTimeout(ctx, timeout+time.Minute)
		defer cancel()
		forced := true
		var err error
		if timeout == 0 {
			err = w.a.drv.Destroy(sctx, w.id)
		} else {
			forced, err = w.a.drv.Shutdown(sctx, w.id, timeout)
		}
		if err != nil && !errors.Is(err, driver.ErrNotRunning) {
			return fmt.Errorf("stop: %w", err)
		}
		reason := "stopped"
		if forced {
			reason = "stopped (forced)"
		}
		w.log.Info("VM "+reason, "timeout", timeout)
		w.setState(pb.VMState_VM_STATE_STOPPED, reason)
	} else {
		if !w.exists || w.dom.Meta.Generation != vm.GetGeneration() {
			// Created stopped, or a new spec: define so that a start is quick.
			if err := w.define(ctx, vm); err != nil {
				if permanent(err) {
					w.latch(vm, pb.VMState_VM_STATE_FAILED, err.Error())
					w.finish(vm.GetLabels()[state.LabelStop], pb.OperationState_OPERATION_STATE_FAILED, err.Error())
					return nil
				}
				return err
			}
			w.exists = true
		}
		if w.state != pb.VMState_VM_STATE_STOPPED {
			w.setState(pb.VMState_VM_STATE_STOPPED, "")
		}
	}
	w.converged(vm, pb.OperationState_OPERATION_STATE_DONE, "", state.LabelCreate, state.LabelStop)
	return nil
}

// reconcileDelete destroys and undefines the domain, deletes the disks and then removes
// the VM's status and assignment (the controller removes the record and finishes the
// operation).
func (w *vmWorker) reconcileDelete(ctx context.Context, vm *pb.VM) error {
	if w.deletedGen == vm.GetGeneration() && !w.exists {
		return nil // done; waiting for the assignment to disappear
	}
	w.setState(pb.VMState_VM_STATE_DELETING, "")
	w.publish(true)
	w.wasRunning, w.restartAt = false, time.Time{}
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if w.exists {
		if err := w.a.drv.Destroy(dctx, w.id); err != nil && !errors.Is(err, driver.ErrNotFound) {
			return fmt.Errorf("delete: destroy: %w", err)
		}
		if err := w.a.drv.Undefine(dctx, w.id); err != nil && !errors.Is(err, driver.ErrNotFound) {
			return fmt.Errorf("delete: undefine: %w", err)
		}
		w.exists = false
	}
	if err := w.a.deleteDisks(dctx, vm); err != nil {
		return fmt.Errorf("delete: disks: %w", err)
	}
	w.deletedGen = vm.GetGeneration()
	w.log.Info("VM deleted from host")
	w.a.writer.enqueue(&write{kind: writeDeleted, vm: w.id})
	return nil
}

// reconcileUnassigned removes a domain of ours whose VM is no longer assigned here, once
// the informer has synced (an empty cache is not "nothing assigned"). Disks stay.
func (w *vmWorker) reconcileUnassigned(ctx context.Context) (bool, error) {
	if !w.a.synced() {
		return false, nil
	}
	if w.a.assigned(w.id) {
		// The informer's cache has the assignment but its handler has not reached this
		// worker yet (a worker made by the first sweep right after the initial list, as
		// after an agent restart): not an orphan; the handler pokes us with the record.
		return false, nil
	}
	if w.exists && w.a.ours(w.dom) {
		dctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		if w.deletedGen == 0 {
			w.log.Warn("domain not assigned to this host: destroying and undefining it", "state", w.dom.State)
			w.a.m.orphans.Inc()
		}
		if err := w.a.drv.Destroy(dctx, w.id); err != nil && !errors.Is(err, driver.ErrNotFound) {
			return false, fmt.Errorf("orphan: destroy: %w", err)
		}
		if err := w.a.drv.Undefine(dctx, w.id); err != nil && !errors.Is(err, driver.ErrNotFound) {
			return false, fmt.Errorf("orphan: undefine: %w", err)
		}
		w.exists = false
	}
	return w.a.retire(w), nil
}

// publish computes the VM's status from the reconcile's verdict and the latest
// heartbeat and hands it to the writer when something material changed, or every
// StatusRefresh (force: at once).
func (w *vmWorker) publish(force bool) {
	vm := w.getDesired()
	if vm == nil || w.quiet || vm.GetHost() != w.a.cfg.HostName || w.state == pb.VMState_VM_STATE_UNSPECIFIED ||
		(w.deletedGen != 0 && w.deletedGen == vm.GetGeneration()) {
		return
	}
	now := time.Now()
	running := w.state == pb.VMState_VM_STATE_RUNNING || w.state == pb.VMState_VM_STATE_MIGRATING
	// Lines of the previous boot may still be read after a start (the monitor stamps
	// them when it reads them): they are recognized by their boot id.
	if o := w.mon.Latest(); o.Seq > 0 && !o.Seen.Before(w.startedAt) && (o.Boot != w.staleBoot || w.staleBoot == "") {
		w.bootID, w.bootTime = o.Boot, o.Seen.Add(-o.Uptime)
		w.hb = &pb.Heartbeat{Seq: int64(o.Seq), BootId: o.Boot, LastSeen: timestamppb.New(o.Seen),
			Healthy: running && o.Fresh(now, w.a.cfg.HeartbeatMaxAge)}
	} else if w.hb != nil {
		w.hb.Healthy = false
	}
	st := &pb.VMStatus{
		State:              w.state,
		Reason:             w.reason,
		Host:               w.a.cfg.HostName,
		BootId:             w.bootID,
		Restarts:           w.restarts,
		Heartbeat:          w.hb,
		ObservedGeneration: w.observedGen,
		Epoch:              vm.GetEpoch(),
	}
	if !w.bootTime.IsZero() {
		st.BootTime = timestamppb.New(w.bootTime)
	}
	if w.hb != nil {
		st.Heartbeat = &pb.Heartbeat{Seq: w.hb.Seq, BootId: w.hb.BootId, LastSeen: w.hb.LastSeen, Healthy: w.hb.Healthy}
	}
	if !force && w.lastWritten != nil && !material(w.lastWritten, st) && now.Sub(w.lastWriteAt) < w.a.cfg.StatusRefresh {
		return
	}
	st.UpdateTime = timestamppb.New(now)
	w.lastWritten, w.lastWriteAt = st, now
	w.a.writer.enqueue(&write{kind: writeStatus, vm: w.id, status: st})
}

// material reports whether b differs from a in anything but the heartbeat's progress.
func material(a, b *pb.VMStatus) bool {
	return a.GetState() != b.GetState() || a.GetReason() != b.GetReason() || a.GetBootId() != b.GetBootId() ||
		a.GetEpoch() != b.GetEpoch() ||
		a.GetRestarts() != b.GetRestarts() || a.GetObservedGeneration() != b.GetObservedGeneration() ||
		a.GetHeartbeat().GetHealthy() != b.GetHeartbeat().GetHealthy() || (a.GetHeartbeat() == nil) != (b.GetHeartbeat() == nil)
}
