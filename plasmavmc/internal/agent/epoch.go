package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// LabelMigrationTarget is the domain metadata label the source agent adds (UpdateMeta)
// just before a live migration: the host the domain is being migrated to. The incoming
// domain on the target carries it (the target's copy still names the source as
// HostLabel until it is adopted), so the target's self-fence and watchdog destroy an
// incoming HA domain too.
const LabelMigrationTarget = "plasmavmc.io/migration-target"

// domainEpoch is the placement epoch stamped into d's metadata (state.LabelEpoch); 0 when
// absent (a domain defined before epochs existed) or unreadable.
func domainEpoch(d driver.Domain) int64 {
	e, err := strconv.ParseInt(d.Meta.Labels[state.LabelEpoch], 10, 64)
	if err != nil || e < 0 {
		return 0
	}
	return e
}

// isHA reports whether vm fails over to another host when its host is fenced (its
// domains carry state.LabelFailover, and a self-fence destroys them).
func isHA(vm *pb.VM) bool { return vm.GetSpec().GetHa().GetFailover() }

// fenceable reports whether a self-fence of host destroys d: an HA domain
// (state.LabelFailover) that runs and was defined by host's agent or is being migrated
// to host.
func fenceable(d driver.Domain, host string) bool {
	l := d.Meta.Labels
	return d.Running() && l[state.LabelFailover] == "true" && (l[HostLabel] == host || l[LabelMigrationTarget] == host)
}

// verdict is what the epoch rule makes of one domain of a VM assigned to this host.
type verdict int

const (
	// verdictRun: the domain (or its absence) belongs to the record: converge as usual
	// (start, keep, stop, redefine).
	verdictRun verdict = iota
	// verdictAdopt: the domain came in by a live migration that has switched: restamp it
	// to VM.epoch (driver UpdateMeta), then converge as usual.
	verdictAdopt
	// verdictIncoming: a live migration to this host is in flight: prepare the state
	// directory, never start or destroy the domain, write no status.
	verdictIncoming
	// verdictStale: the domain is a stale copy (older epoch): destroy and undefine it,
	// then converge as usual (a fresh start when the VM should run).
	verdictStale
	// verdictElsewhere: the record names another host: destroy any copy here (ours or
	// coming in by an abandoned migration), start nothing, write no status.
	verdictElsewhere
	// verdictWait: the domain is newer than the record (the cache lags): touch nothing
	// until the record catches up.
	verdictWait
)

func (v verdict) String() string {
	return [...]string{"run", "adopt", "incoming", "stale", "elsewhere", "wait"}[v]
}

// epochVerdict applies the split-brain rule to VM vm (the assigned record, non-nil) and
// its domain on this host (dom nil: none). An agent runs a VM only while the record
// names it (host == me) and the domain's epoch equals VM.epoch; the one exception is a
// domain that came in by migration (target == me == host, domain epoch == source_epoch),
// which is adopted. While a migration to this host is in flight (target == me, host the
// source, epoch still source_epoch) the domain is left alone. Anything else of this VM
// id is a stale copy.
//
// A domain without an epoch label counts as epoch 0; a record at epoch 0 or 1 adopts it
// (restamps it without a restart): domains defined by agents from before epochs.
func epochVerdict(me string, vm *pb.VM, dom *driver.Domain) verdict {
	m := vm.GetMigration()
	if vm.GetHost() != me {
		if m != nil && m.GetTargetHost() == me && vm.GetEpoch() == m.GetSourceEpoch() {
			if dom != nil && domainEpoch(*dom) != m.GetSourceEpoch() {
				return verdictStale
			}
			return verdictIncoming
		}
		return verdictElsewhere
	}
	if dom == nil {
		return verdictRun
	}
	de, ve := domainEpoch(*dom), vm.GetEpoch()
	switch {
	case de == ve:
		return verdictRun
	case m != nil && m.GetTargetHost() == me && m.GetSourceHost() != me && de == m.GetSourceEpoch() && ve > de:
		return verdictAdopt
	case dom.Meta.Labels[state.LabelEpoch] == "" && ve <= 1:
		return verdictAdopt
	case de < ve:
		return verdictStale
	default:
		return verdictWait
	}
}

// domainLabels is the metadata label set of vm's domain on host: the record's labels,
// HostLabel, the epoch and the failover mark.
func domainLabels(vm *pb.VM, host string) map[string]string {
	l := map[string]string{}
	for k, v := range vm.GetLabels() {
		l[k] = v
	}
	l[HostLabel] = host
	l[state.LabelEpoch] = strconv.FormatInt(vm.GetEpoch(), 10)
	if isHA(vm) {
		l[state.LabelFailover] = "true"
	} else {
		delete(l, state.LabelFailover)
	}
	delete(l, LabelMigrationTarget)
	return l
}

// applyEpochRule acts on the epoch rule's verdict for the worker's VM (assigned, vm
// non-nil) and its domain: stale copies are destroyed, a migrated domain adopted, an
// incoming one prepared for and left alone. cont reports whether the reconcile goes on
// to converge the VM as this host's (false: it is not, or not yet, this host's to run;
// no status is written then).
func (w *vmWorker) applyEpochRule(ctx context.Context, vm *pb.VM) (cont bool, err error) {
	me := w.a.cfg.HostName
	var dom *driver.Domain
	if w.exists {
		d := w.dom
		dom = &d
	}
	v := epochVerdict(me, vm, dom)
	if v != verdictWait {
		w.waitLogged = false
	}
	switch v {
	case verdictIncoming:
		w.quiet = true
		if err := os.MkdirAll(w.a.drv.Paths(w.id).Dir, 0o755); err != nil {
			return false, fmt.Errorf("incoming migration: state directory: %w", err)
		}
		return false, nil
	case verdictElsewhere:
		w.quiet = true
		if w.exists && (w.a.ours(w.dom) || w.dom.Meta.Labels[LabelMigrationTarget] == me) {
			return false, w.destroyStale(ctx, fmt.Sprintf("the VM's record names host %q", vm.GetHost()))
		}
		return false, nil
	case verdictWait:
		w.quiet = true
		if !w.waitLogged {
			w.waitLogged = true
			w.log.Warn("domain is at a newer epoch than the VM record seen; waiting for the record",
				"domain_epoch", domainEpoch(w.dom), "epoch", vm.GetEpoch())
		}
		return false, nil
	case verdictStale:
		if err := w.destroyStale(ctx, fmt.Sprintf("domain at epoch %d, VM at epoch %d on host %q",
			domainEpoch(w.dom), vm.GetEpoch(), vm.GetHost())); err != nil {
			return false, err
		}
		if vm.GetHost() != me {
			w.quiet = true
			return false, nil
		}
	case verdictAdopt:
		if err := w.adopt(ctx, vm); err != nil {
			return false, err
		}
	}
	w.quiet = false
	return true, nil
}

// destroyStale destroys and undefines the worker's domain, a stale copy by the epoch
// rule (disks stay: they are the VM's, possibly shared).
func (w *vmWorker) destroyStale(ctx context.Context, why string) error {
	w.log.Warn("stale copy of the VM: destroying and undefining it (epoch rule)", "why", why,
		"state", w.dom.State, "domain_epoch", domainEpoch(w.dom))
	dctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := w.a.drv.Destroy(dctx, w.id); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return fmt.Errorf("stale copy: destroy: %w", err)
	}
	if err := w.a.drv.Undefine(dctx, w.id); err != nil && !errors.Is(err, driver.ErrNotFound) {
		return fmt.Errorf("stale copy: undefine: %w", err)
	}
	w.exists, w.dom = false, driver.Domain{}
	w.wasRunning, w.restartAt = false, time.Time{}
	w.takeStopCause()
	w.a.m.stale.Inc()
	return nil
}

// adopt restamps the worker's domain to vm's epoch and this host (driver UpdateMeta,
// live and persistent) without touching QEMU: a domain that came in by a live migration
// whose switch happened, or one defined before epochs existed.
func (w *vmWorker) adopt(ctx context.Context, vm *pb.VM) error {
	from := vm.GetMigration().GetSourceHost()
	if w.a.mig == nil {
		if vm.GetMigration() == nil {
			return nil // pre-epoch domain: run it as it is
		}
		return fmt.Errorf("cannot adopt the migrated domain (epoch %d → %d): the driver has no UpdateMeta",
			domainEpoch(w.dom), vm.GetEpoch())
	}
	labels := map[string]string{}
	for k, v := range w.dom.Meta.Labels {
		labels[k] = v
	}
	for k, v := range domainLabels(vm, w.a.cfg.HostName) {
		labels[k] = v
	}
	if !isHA(vm) {
		delete(labels, state.LabelFailover)
	}
	delete(labels, LabelMigrationTarget)
	meta := driver.Metadata{ID: w.id, Name: vm.GetName(), Generation: w.dom.Meta.Generation, Labels: labels}
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := w.a.mig.UpdateMeta(uctx, w.id, meta); err != nil {
		return fmt.Errorf("adopt: update metadata: %w", err)
	}
	w.log.Info("domain adopted: restamped to this host and epoch", "epoch", vm.GetEpoch(),
		"domain_epoch", domainEpoch(w.dom), "migrated_from", from, "state", w.dom.State)
	w.dom.Meta = meta
	if w.dom.Running() {
		w.wasRunning = true
	}
	return nil
}
