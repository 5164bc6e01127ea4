package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// Live migration, source side. The controller asks for a migration by setting
// VM.migration (source_host = this host) and creating a RUNNING vm.migrate operation;
// the source agent reads the target's host record (migration_uri, state_dir), marks the
// domain with LabelMigrationTarget, runs driver.Migrate on a goroutine of its own while
// the VM's worker reports MIGRATING, writes the progress into the operation about every
// second, and ends the operation: on success the switch txn (state.CompleteMigration:
// host = target, epoch + 1, operation DONE with the figures), on failure FAILED with the
// reason (the VM keeps running here; libvirt resumes it).
//
// A marker file (.migrating-<operation> in the state directory) is written before the
// migration starts, so that an agent restarted meanwhile knows it began: finding the
// domain still running here and no migration job in QEMU, it fails the operation ("agent
// restarted during migration; VM stays on <source>"); finding the domain gone (libvirt
// undefines the source when the destination runs it), it completes the switch.
// Transient driver errors (ErrDisconnected) are retried only before the migration has
// reported any progress; a migration that started and failed is never retried.
//
// The target side lives in the epoch rule (epoch.go): an incoming domain is left alone
// and adopted after the switch.

// Migration defaults when the VM record leaves them 0.
const (
	defaultMigrationTimeout = 120 * time.Second
	migrationStartAttempts  = 5
	// targetPrepareGrace is how long after the request a migration to another machine
	// starts at the earliest: the target agent creates the VM's state directory when its
	// copy of the record arrives, at about the time the source's does.
	targetPrepareGrace = time.Second
)

// migration is one live migration out, run by runMigration on its own goroutine. The
// outcome fields are written by that goroutine before done is closed and read by the
// worker only after.
type migration struct {
	op, target string
	complete   bool            // only complete the switch (the domain already left)
	meta       driver.Metadata // the domain's metadata when the migration was started
	requested  time.Time       // the operation's start time (the controller's request)
	done       chan struct{}

	switched bool   // ownership switched in ChainFire
	refused  string // the domain left but the switch was refused: why (the VM is not restarted here)
	failed   string // the operation was failed with this reason
}

// migrationMarker is the file marking that operation op's migration was started here.
func (a *agent) migrationMarker(op string) string {
	return filepath.Join(a.cfg.StateDir, ".migrating-"+op)
}

// reconcileMigrationSource handles a live migration of vm away from this host (no-op
// otherwise). handled reports that the worker's reconcile ends here (the migration is
// running, being resolved, or done: the VM is the target's).
func (w *vmWorker) reconcileMigrationSource(ctx context.Context, vm *pb.VM) (handled bool, err error) {
	me := w.a.cfg.HostName
	m := vm.GetMigration()
	if m == nil || m.GetSourceHost() != me || vm.GetHost() != me || vm.GetEpoch() != m.GetSourceEpoch() {
		return false, nil
	}
	op := m.GetOperationId()
	if op == w.migratedAway {
		w.quiet = true // switched: waiting for the assignment to go
		return true, nil
	}
	if w.migDone[op] {
		return false, nil
	}
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	rec, _, err := w.a.st.GetOperation(gctx, op)
	cancel()
	switch {
	case errors.Is(err, state.ErrNotFound):
		w.migDone[op] = true
		return false, nil
	case err != nil:
		return true, fmt.Errorf("migration operation %s: %w", op, err) // retried
	case rec.GetState() != pb.OperationState_OPERATION_STATE_RUNNING:
		w.migDone[op] = true
		_ = os.Remove(w.a.migrationMarker(op))
		return false, nil
	}
	fail := func(reason string) {
		w.log.Warn("live migration failed", "operation", op, "target", m.GetTargetHost(), "reason", reason)
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := w.a.st.FailMigration(fctx, op, reason, nil); err != nil && // nil: keeps the last progress
			!errors.Is(err, state.ErrMigrationGone) {
			handled, w.soon = true, true // retried at the next reconcile
			return
		}
		w.a.m.migrations.WithLabelValues("failed").Inc()
		w.migDone[op] = true
		w.lastWritten = nil // the status is rewritten at once (RUNNING again)
		_ = os.Remove(w.a.migrationMarker(op))
	}
	if !w.exists {
		// The domain left: a migration started by a previous agent switched in libvirt
		// (the source is undefined only then). Complete the switch.
		w.startMigration(ctx, vm, true, rec.GetStartTime().AsTime())
		return true, nil
	}
	if _, err := os.Stat(w.a.migrationMarker(op)); err == nil {
		active, err := w.migrationJobActive(ctx)
		if err != nil {
			return true, err
		}
		if active {
			w.setState(pb.VMState_VM_STATE_MIGRATING, "live migration started by a previous agent still running")
			w.soon = true
			return true, nil
		}
		fail("agent restarted during migration; VM stays on " + me)
		return handled, nil
	}
	if !w.dom.Running() {
		fail(fmt.Sprintf("VM is not running on %s (domain %s: %s)", me, w.dom.State, w.dom.Reason))
		return handled, nil
	}
	if w.a.mig == nil {
		fail("host " + me + "'s driver cannot live-migrate")
		return handled, nil
	}
	if !w.a.mayStart() {
		return false, nil // not while fenced: the VM runs on as it is; tried again after the rejoin
	}
	w.startMigration(ctx, vm, false, rec.GetStartTime().AsTime())
	w.setState(pb.VMState_VM_STATE_MIGRATING, "live migration to "+m.GetTargetHost()+" in progress")
	w.quiet = false
	w.publish(true)
	return true, nil
}

// startMigration runs vm's migration (or, with complete, only its switch) on a new
// goroutine; the worker collects the outcome in migrationFinished. requested is when the
// controller asked for it.
func (w *vmWorker) startMigration(ctx context.Context, vm *pb.VM, complete bool, requested time.Time) {
	m := vm.GetMigration()
	mg := &migration{op: m.GetOperationId(), target: m.GetTargetHost(), complete: complete, requested: requested,
		done: make(chan struct{})}
	mg.meta = w.dom.Meta
	mg.meta.Labels = map[string]string{}
	for k, v := range w.dom.Meta.Labels {
		mg.meta.Labels[k] = v
	}
	mg.meta.Labels[LabelMigrationTarget] = mg.target
	w.mig = mg
	w.a.wg.Add(1)
	go func() {
		defer w.a.wg.Done()
		defer w.poke()
		defer close(mg.done)
		w.runMigration(ctx, vm, mg)
	}()
}

// migrationFinished takes in the outcome of the migration goroutine that just ended.
func (w *vmWorker) migrationFinished(vm *pb.VM) {
	mg := w.mig
	w.mig = nil
	switch {
	case mg.switched:
		w.migratedAway = mg.op
		w.quiet = true
		w.wasRunning, w.restartAt = false, time.Time{}
		w.takeStopCause()
		w.a.m.migrations.WithLabelValues("done").Inc()
		w.log.Info("live migration done: the VM is the target's now", "operation", mg.op, "target", mg.target)
	case mg.refused != "":
		w.migratedAway = mg.op
		w.a.m.migrations.WithLabelValues("failed").Inc()
		if vm != nil {
			w.latch(vm, pb.VMState_VM_STATE_FAILED, mg.refused)
		}
	case mg.failed != "":
		w.migDone[mg.op] = true
		w.lastWritten = nil // the status is rewritten at once (RUNNING again)
		w.a.m.migrations.WithLabelValues("failed").Inc()
	}
}

// runMigration performs one migration (see the top of this file). It touches no worker
// state: the outcome goes into mg.
func (w *vmWorker) runMigration(ctx context.Context, vm *pb.VM, mg *migration) {
	a, m := w.a, vm.GetMigration()
	log := w.log.With("operation", mg.op, "target", mg.target)
	if mg.complete {
		log.Warn("the domain left this host during a migration of a previous agent: completing the switch")
		w.completeMigration(ctx, vm, mg, &pb.MigrationProgress{},
			"agent restarted during migration; the domain had left "+a.cfg.HostName)
		return
	}
	marker := a.migrationMarker(mg.op)
	_ = os.WriteFile(marker, []byte(fmt.Sprintf("vm=%s target=%s instance=%s time=%s\n", w.id, mg.target,
		a.instanceID(), time.Now().Format(time.RFC3339Nano))), 0o644)
	fail := func(reason string, p *pb.MigrationProgress) {
		if ctx.Err() != nil {
			return // the agent is stopping: the next one resolves it (marker)
		}
		log.Warn("live migration failed", "reason", reason)
		err := retryUntil(ctx, func(ctx context.Context) error {
			err := a.st.FailMigration(ctx, mg.op, reason, p)
			if errors.Is(err, state.ErrMigrationGone) {
				return nil
			}
			return err
		})
		if err == nil {
			mg.failed = reason
			_ = os.Remove(marker)
		}
	}

	timeout := time.Duration(m.GetTimeoutSeconds()) * time.Second
	if timeout <= 0 {
		timeout = defaultMigrationTimeout
	}
	// The target's record: where its libvirtd listens, where its state directory is.
	var target *pb.Host
	err := retryUntil(ctx, func(ctx context.Context) error {
		rec, err := a.st.GetHost(ctx, mg.target)
		if err != nil {
			if errors.Is(err, state.ErrNotFound) {
				return nil
			}
			return err
		}
		target = rec.Host
		return nil
	})
	if err != nil {
		return // ctx ended
	}
	switch {
	case target == nil:
		fail("target host "+mg.target+" is not registered", nil)
		return
	case target.GetMigrationUri() == "":
		fail("target host "+mg.target+" has no migration_uri (its agent predates live migration)", nil)
		return
	}
	destDir := target.GetStateDir()
	if destDir == a.cfg.StateDir {
		destDir = ""
	}
	// The destination QEMU opens the VM's files in the target's state directory, which
	// the target agent creates when it sees the request. On the same machine (fake hosts)
	// create it here too; elsewhere give the target agent a moment to see the request.
	if strings.HasPrefix(target.GetMigrationUri(), "qemu+unix:") && target.GetStateDir() != "" {
		_ = os.MkdirAll(filepath.Join(target.GetStateDir(), w.id), 0o755)
	} else if wait := time.Until(mg.requested.Add(targetPrepareGrace)); wait > 0 {
		sleepCtx(ctx, wait)
	}

	// Mark the domain as going to the target (its watchdog then fences it too), then
	// migrate; only failures before any progress are retried.
	meta := mg.meta

	var pmu sync.Mutex
	var latest *pb.MigrationProgress
	var started bool
	mctx, cancelMig := context.WithCancel(ctx)
	defer cancelMig()
	params := driver.MigrateParams{
		DestURI: target.GetMigrationUri(), DestStateDir: destDir, AutoConverge: m.GetAutoConverge(),
		PostCopyAfter: time.Duration(m.GetPostCopyAfterSeconds()) * time.Second, Timeout: timeout,
		MaxBandwidthMiB: m.GetMaxBandwidthMib(),
		MaxDowntime:     time.Duration(m.GetMaxDowntimeMs()) * time.Millisecond,
		Progress: func(p driver.MigrationProgress) {
			pmu.Lock()
			latest, started = progressProto(p), true
			pmu.Unlock()
		},
	}
	reporterDone := make(chan struct{})
	go func() {
		defer close(reporterDone)
		w.reportProgress(mctx, mg.op, &pmu, &latest, cancelMig)
	}()
	log.Info("live migration starting", "dest_uri", params.DestURI, "dest_state_dir", params.DestStateDir,
		"timeout", timeout, "auto_converge", params.AutoConverge, "post_copy_after", params.PostCopyAfter)
	var res driver.MigrationResult
	var merr error
	for attempt := 1; ; attempt++ {
		uctx, cancel := context.WithTimeout(mctx, 30*time.Second)
		merr = a.mig.UpdateMeta(uctx, w.id, meta)
		cancel()
		if merr == nil {
			res, merr = a.mig.Migrate(mctx, w.id, params)
		}
		pmu.Lock()
		began := started
		pmu.Unlock()
		retryable := errors.Is(merr, driver.ErrDisconnected) && !errors.Is(merr, driver.ErrMigration) && !began
		if merr == nil || !retryable || attempt >= migrationStartAttempts || mctx.Err() != nil {
			break
		}
		log.Warn("live migration could not start; retrying", "attempt", attempt, "err", merr)
		sleepCtx(mctx, time.Duration(attempt)*500*time.Millisecond)
	}
	cancelMig()
	<-reporterDone
	pmu.Lock()
	figures := latest
	pmu.Unlock()
	if merr == nil {
		if figures == nil {
			figures = &pb.MigrationProgress{}
		}
		figures.Phase = "done"
		figures.TotalMs, figures.DowntimeMs = res.Total.Milliseconds(), res.Downtime.Milliseconds()
		figures.AutoConvergeUsed, figures.PostCopyUsed = res.AutoConvergeUsed, res.PostCopyUsed
		figures.DataRemainingBytes = 0
		log.Info("live migration switched in libvirt", "total", res.Total, "downtime", res.Downtime,
			"auto_converge_used", res.AutoConvergeUsed, "post_copy_used", res.PostCopyUsed)
		w.completeMigration(ctx, vm, mg, figures, "")
		if mg.switched {
			_ = os.Remove(marker)
			if target.GetStateDir() != a.cfg.StateDir || !strings.HasPrefix(target.GetMigrationUri(), "qemu+unix:") {
				_ = os.RemoveAll(a.drv.Paths(w.id).Dir) // the VM's files live on the target now
			}
		}
		return
	}
	if ctx.Err() != nil {
		return
	}
	// Failed, or so it says: the domain may still have left (a connection lost at the
	// end), or the job may still run in libvirtd. Look before reporting.
	deadline := time.Now().Add(timeout + 30*time.Second)
	for {
		gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		d, gerr := a.drv.Get(gctx, w.id)
		cancel()
		switch {
		case errors.Is(gerr, driver.ErrNotFound):
			log.Warn("migration reported an error but the domain left this host: completing the switch", "err", merr)
			if figures == nil {
				figures = &pb.MigrationProgress{}
			}
			figures.Phase = "done"
			w.completeMigration(ctx, vm, mg, figures, "migration reported: "+merr.Error()+"; the domain reached the target")
			if mg.switched {
				_ = os.Remove(marker)
			}
			return
		case gerr != nil:
			if ctx.Err() != nil {
				return
			}
			sleepCtx(ctx, time.Second)
			continue
		}
		if d.Running() && time.Now().Before(deadline) {
			if active, _ := w.migrationJobActive(ctx); active {
				sleepCtx(ctx, time.Second)
				continue
			}
		}
		break
	}
	if errors.Is(merr, context.Canceled) && ctx.Err() == nil {
		if figures == nil {
			figures = &pb.MigrationProgress{}
		}
		figures.Phase = "cancelled"
		fail("live migration to "+mg.target+" cancelled: the operation was finished by the controller; VM stays on "+a.cfg.HostName, figures)
		return
	}
	fail(fmt.Sprintf("live migration to %s failed: %v; VM stays on %s", mg.target, merr, a.cfg.HostName), figures)
}

// completeMigration switches the VM's ownership to the target (state.CompleteMigration),
// retrying while ChainFire fails; note, when not empty, is the operation's reason.
func (w *vmWorker) completeMigration(ctx context.Context, vm *pb.VM, mg *migration, p *pb.MigrationProgress, note string) {
	a := w.a
	if p.GetPhase() == "" {
		p.Phase = "done"
	}
	var gone error
	err := retryUntil(ctx, func(ctx context.Context) error {
		_, err := a.st.CompleteMigration(ctx, a.cfg.HostName, w.id, p)
		if errors.Is(err, state.ErrMigrationGone) || errors.Is(err, state.ErrNotFound) {
			gone = err
			return nil
		}
		return err
	})
	if err != nil {
		return // ctx ended; the next agent completes it (the domain has left)
	}
	if gone != nil {
		mg.refused = fmt.Sprintf("live migration to %s switched in libvirt but ChainFire refused the switch (%v): not restarted here, so the VM never runs twice", mg.target, gone)
		w.log.Error("live migration: switch refused", "err", gone)
		return
	}
	mg.switched = true
	if note != "" {
		w.log.Info("live migration completed after the fact", "note", note)
	}
}

// reportProgress writes the latest progress into operation op about every second until
// ctx ends. When the operation is no longer RUNNING (the controller gave the migration
// up) it calls cancel, aborting the migration.
func (w *vmWorker) reportProgress(ctx context.Context, op string, mu *sync.Mutex, latest **pb.MigrationProgress, cancel func()) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last *pb.MigrationProgress
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		mu.Lock()
		p := *latest
		mu.Unlock()
		if p == nil || p == last {
			continue
		}
		uctx, c := context.WithTimeout(ctx, 3*time.Second)
		err := w.a.st.UpdateMigrationProgress(uctx, op, p)
		c()
		switch {
		case err == nil:
			last = p
		case errors.Is(err, state.ErrMigrationGone):
			w.log.Warn("migration operation finished by the controller: aborting the migration", "operation", op, "err", err)
			cancel()
			return
		}
	}
}

// progressProto converts the driver's progress report.
func progressProto(p driver.MigrationProgress) *pb.MigrationProgress {
	return &pb.MigrationProgress{
		Phase: p.Phase, DataTotalBytes: p.DataTotal, DataProcessedBytes: p.DataProcessed,
		DataRemainingBytes: p.DataRemaining, MemoryDirtyRatePages: p.DirtyRatePages,
		Iterations: int32(p.Iterations), TotalMs: p.Elapsed.Milliseconds(),
	}
}

// migrationJobActive asks QEMU (query-migrate through libvirt) whether a migration job
// runs on the worker's domain. A monitor that does not answer (libvirt holds the domain
// for a job) counts as active.
func (w *vmWorker) migrationJobActive(ctx context.Context) (bool, error) {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	out, err := w.a.drv.QMP(qctx, w.id, json.RawMessage(`{"execute":"query-migrate"}`))
	switch {
	case errors.Is(err, driver.ErrNotRunning), errors.Is(err, driver.ErrNotFound), errors.Is(err, driver.ErrQMP):
		return false, nil
	case errors.Is(err, driver.ErrDisconnected), errors.Is(err, driver.ErrClosed):
		return false, fmt.Errorf("query migration job: %w", err)
	case err != nil:
		return true, nil
	}
	var r struct {
		Status string `json:"status"`
	}
	_ = json.Unmarshal(out, &r)
	switch r.Status {
	case "", "none", "completed", "failed", "cancelled":
		return false, nil
	}
	return true, nil
}

// retryUntil calls f with a bounded context until it succeeds or ctx ends (returning
// ctx's error), backing off from 100 ms to 5 s.
func retryUntil(ctx context.Context, f func(ctx context.Context) error) error {
	bo := minBackoff
	for {
		cctx, cancel := context.WithTimeout(ctx, writeTimeout)
		err := f(cctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		sleepCtx(ctx, bo)
		bo = min(2*bo, maxBackoff)
	}
}
