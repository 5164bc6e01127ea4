package driver

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
)

// Migrator is the optional live-migration side of a Driver. The agent finds it by type
// assertion (*Libvirt implements it; test fakes may).
type Migrator interface {
	// Migrate live-migrates a running domain to another host's hypervisor and returns when the
	// destination runs it. Any error leaves the domain running on the source, except where the
	// error says otherwise (a post-copy migration that failed after the switch, a lost
	// connection to the source's libvirtd).
	Migrate(ctx context.Context, id string, p MigrateParams) (MigrationResult, error)
	// UpdateMeta replaces the domain's PlasmaVMC metadata, in the running domain and in its
	// persistent definition.
	UpdateMeta(ctx context.Context, id string, m Metadata) error
}

var _ Migrator = (*Libvirt)(nil)

// MigrateParams configures one live migration.
type MigrateParams struct {
	// DestURI is the libvirt URI of the destination libvirtd, as the source libvirtd reaches it
	// (peer-to-peer: the source daemon connects, not the driver), e.g. qemu+tls://host/system.
	// For a local socket (qemu+unix:///system?socket=..., the lab's fake hosts) QEMU's
	// migration stream is sent to 127.0.0.1.
	DestURI string
	// DestStateDir is the destination driver's StateDir: paths under this driver's StateDir in
	// the domain's XML (serial log, heartbeat socket) are rewritten to it. "" = the same. The
	// VM's directory there (the destination's Paths(id).Dir) must exist: the target agent
	// creates it.
	DestStateDir string
	// AutoConverge lets QEMU throttle the guest's vCPUs when memory is dirtied faster than it
	// is sent.
	AutoConverge bool
	// PostCopyAfter switches to post-copy once the migration has run this long without
	// converging (the destination runs the guest and pulls the remaining pages on demand).
	// 0 = never.
	PostCopyAfter time.Duration
	// Timeout aborts the migration after this long (the domain keeps running on the source).
	// It cannot abort after the switch to post-copy. 0 = no limit.
	Timeout time.Duration
	// MaxBandwidthMiB caps the migration stream in MiB/s (pre-copy and post-copy). 0 = no cap.
	MaxBandwidthMiB int64
	// MaxDowntime is the pause QEMU aims for at the switch-over: it iterates until what is left
	// can be sent in this time (libvirt's resume on the destination comes on top, ~30 ms here).
	// 0 = adaptive: 50 ms, raised to QEMU's default 300 ms once the guest keeps dirtying memory
	// (the 4th pass over it, or auto-converge throttling). See DefaultMaxDowntime.
	MaxDowntime time.Duration
	// Progress is called about every second while the migration runs, and once with phase
	// "done" after it succeeded; never concurrently and never after Migrate returned. May be
	// nil.
	Progress func(MigrationProgress)
}

// Migration phases in MigrationProgress.Phase.
const (
	PhasePrecopy  = "precopy"
	PhasePostcopy = "postcopy"
	PhaseDone     = "done"
)

// MigrationProgress is a snapshot of a running migration (libvirt's job statistics).
type MigrationProgress struct {
	// Phase is PhasePrecopy, PhasePostcopy or PhaseDone.
	Phase string
	// DataTotal, DataProcessed and DataRemaining are bytes (memory and device state).
	DataTotal, DataProcessed, DataRemaining int64
	// DirtyRatePages is the guest's memory dirty rate in pages per second.
	DirtyRatePages int64
	// Iterations counts pre-copy passes over guest memory.
	Iterations int
	// Elapsed is the time since Migrate started the migration.
	Elapsed time.Duration
}

// MigrationResult describes a finished migration.
type MigrationResult struct {
	// Total is the migration's wall-clock time, from the request to the source libvirtd to the
	// destination running the domain.
	Total time.Duration
	// Downtime is how long the guest was paused: from the source pausing it to the destination
	// resuming it, from libvirt's completed job statistics on the destination (the driver asks
	// the destination at DestURI itself). After post-copy, which leaves none, the switch-over
	// pause timed from the lifecycle events of both sides. 0 when unknown.
	Downtime time.Duration
	// AutoConvergeUsed: auto-convergence throttled the guest at some point (it was enabled and
	// libvirt reported a throttle above 0).
	AutoConvergeUsed bool
	// PostCopyUsed: the migration switched to post-copy.
	PostCopyUsed bool
}

// The adaptive switch-over target (MigrateParams.MaxDowntime 0). Measured here (TCG, idle
// tiny guest): QEMU's 300 ms gave 91 to 175 ms of downtime, 50 ms gave 31 to 49 ms. But a
// short target converges less easily, and under TCG (QEMU 7.2) 50 ms with auto-converge
// corrupted the memory of a dirtying guest on the destination in 5 of 8 migrations (none in 11
// at 300 ms): a guest that keeps dirtying gets 300 ms.
const (
	DefaultMaxDowntime = 50 * time.Millisecond
	RaisedMaxDowntime  = 300 * time.Millisecond
	// raiseAtIteration is the pass over memory from which the target is raised.
	raiseAtIteration = 4
)

const (
	// migratePoll is how often Migrate reads the job's statistics.
	migratePoll = time.Second
	// migrateAbortGrace bounds the wait for the migration to end after an abort (Timeout or
	// ctx) before Migrate gives up with the outcome unknown.
	migrateAbortGrace = 30 * time.Second
	// migrateStatsWait bounds asking the destination for the completed job's statistics.
	migrateStatsWait = 5 * time.Second
)

// Migrate implements Migrator: libvirt peer-to-peer live migration (VIR_MIGRATE_LIVE |
// PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE | UNSAFE [| AUTO_CONVERGE] [| POSTCOPY]) with
// the domain's migratable XML, its StateDir paths rewritten to p.DestStateDir, as the
// destination's live and persistent definition.
//
// UNSAFE: libvirt refuses disks it cannot tell are on shared storage (a directory used as the
// shared pool, as in the lab, or any disk without cache=none). PlasmaVMC's control plane only
// migrates VMs whose disks are all on the shared pool, so the driver skips libvirt's guess.
//
// Migrate polls the job about every second (p.Progress), switches to post-copy after
// p.PostCopyAfter, and aborts the job (DomainAbortJob) when p.Timeout passes or ctx ends; the
// domain then keeps running on the source. An abort that races with completion loses: the
// migration succeeded and Migrate says so. After the switch to post-copy nothing can be
// aborted (the guest's memory is split between the hosts): a failure then leaves the domain
// paused on the source, and the error says so.
//
// Errors before the migration starts keep the package's sentinels (ErrNotFound,
// ErrNotRunning, ErrDisconnected: nothing happened, retry). Once started, errors wrap
// ErrMigration with libvirt's reason and where the domain is now (checked on the source after
// the failure); ctx's error is wrapped too when ctx ended. If the connection to the source's
// libvirtd is lost meanwhile, the error wraps ErrMigration and ErrDisconnected: the outcome is
// unknown, list both hosts. Migrate returns at the latest migrateAbortGrace (30 s) after an
// abort.
func (d *Libvirt) Migrate(ctx context.Context, id string, p MigrateParams) (MigrationResult, error) {
	var res MigrationResult
	if p.DestURI == "" {
		return res, fmt.Errorf("driver: migrate %s: %w: no destination URI", id, ErrInvalidSpec)
	}
	dest, err := url.Parse(p.DestURI)
	if err != nil {
		return res, fmt.Errorf("driver: migrate %s: %w: destination URI %q: %v", id, ErrInvalidSpec, p.DestURI, err)
	}
	if p.MaxBandwidthMiB < 0 || p.Timeout < 0 || p.PostCopyAfter < 0 || p.MaxDowntime < 0 {
		return res, fmt.Errorf("driver: migrate %s: %w: negative bandwidth, timeout, downtime or post-copy delay", id, ErrInvalidSpec)
	}

	downtime, adaptive := p.MaxDowntime, p.MaxDowntime == 0
	if adaptive {
		downtime = DefaultMaxDowntime
	}

	// Prepare: the domain, its XML (live and persistent) with the paths rewritten, the
	// switch-over target.
	var dom libvirt.Domain
	var liveXML, persistXML string
	err = d.call(ctx, "migrate", id, func(l *libvirt.Libvirt) error {
		var err error
		if dom, err = lookup(l, id); err != nil {
			return err
		}
		up, err := running(l, dom)
		if err != nil {
			return err
		}
		if !up {
			return fmt.Errorf("driver: migrate %s: %w", id, ErrNotRunning)
		}
		if liveXML, err = l.DomainGetXMLDesc(dom, libvirt.DomainXMLMigratable); err != nil {
			return err
		}
		persistent, err := l.DomainIsPersistent(dom)
		if err != nil {
			return err
		}
		if persistent == 1 {
			if persistXML, err = l.DomainGetXMLDesc(dom, libvirt.DomainXMLMigratable|libvirt.DomainXMLInactive); err != nil {
				return err
			}
		}
		// QEMU keeps it for the migration libvirt starts next.
		return l.DomainMigrateSetMaxDowntime(dom, uint64(max(downtime.Milliseconds(), 1)), 0)
	})
	if err != nil {
		return res, err
	}
	if p.DestStateDir != "" && p.DestStateDir != d.cfg.StateDir {
		liveXML = rewriteStateDir(liveXML, d.cfg.StateDir, p.DestStateDir)
		persistXML = rewriteStateDir(persistXML, d.cfg.StateDir, p.DestStateDir)
	}

	flags := libvirt.MigrateLive | libvirt.MigratePeer2peer | libvirt.MigratePersistDest |
		libvirt.MigrateUndefineSource | libvirt.MigrateUnsafe
	params := []libvirt.TypedParam{{Field: libvirt.MigrateParamDestXML, Value: *libvirt.NewTypedParamValueString(liveXML)}}
	if persistXML != "" {
		params = append(params, libvirt.TypedParam{Field: libvirt.MigrateParamPersistXML, Value: *libvirt.NewTypedParamValueString(persistXML)})
	}
	if strings.HasSuffix(dest.Scheme, "+unix") {
		// Same machine: QEMU's stream over loopback (the destination would otherwise name
		// itself by host name, and libvirt refuses a loopback migration_host).
		params = append(params,
			libvirt.TypedParam{Field: libvirt.MigrateParamURI, Value: *libvirt.NewTypedParamValueString("tcp://127.0.0.1")},
			libvirt.TypedParam{Field: libvirt.MigrateParamListenAddress, Value: *libvirt.NewTypedParamValueString("127.0.0.1")})
	}
	if p.AutoConverge && d.accel == AccelTCG {
		// Under TCG (QEMU 7.2 here) CPU throttling during a migration corrupted dirtying
		// guests on the destination now and then (e2e: about 1 hop in 10-20 with it, 0 in
		// 30 without; docs/plasmavmc/resilience.md). KVM keeps it.
		d.log.Warn("auto-converge not used: unsafe under TCG", "vm", id)
		p.AutoConverge = false
	}
	if p.AutoConverge {
		flags |= libvirt.MigrateAutoConverge
	}
	if p.PostCopyAfter > 0 {
		flags |= libvirt.MigratePostcopy
	}
	if p.MaxBandwidthMiB > 0 {
		params = append(params, libvirt.TypedParam{Field: libvirt.MigrateParamBandwidth, Value: *libvirt.NewTypedParamValueUllong(uint64(p.MaxBandwidthMiB))})
		if p.PostCopyAfter > 0 {
			params = append(params, libvirt.TypedParam{Field: libvirt.MigrateParamBandwidthPostcopy, Value: *libvirt.NewTypedParamValueUllong(uint64(p.MaxBandwidthMiB))})
		}
	}

	l, err := d.connection("migrate", id)
	if err != nil {
		return res, err
	}
	// Post-copy leaves no completed statistics on the destination: its switch-over pause is
	// timed from the lifecycle events instead.
	var clock switchClock
	if p.PostCopyAfter > 0 {
		stop := clock.watch(d, id, dom.Name, dest)
		defer stop()
	}

	log := d.log.With("vm", id, "dest", p.DestURI)
	log.Info("live migration starting", "auto_converge", p.AutoConverge, "post_copy_after", p.PostCopyAfter,
		"timeout", p.Timeout, "max_bandwidth_mib", p.MaxBandwidthMiB, "max_downtime", downtime, "adaptive", adaptive)
	m := &migration{l: l, dom: dom, p: p, start: time.Now(), log: log, raise: adaptive}
	done := make(chan error, 1)
	go func() {
		_, err := l.DomainMigratePerform3Params(dom, libvirt.OptString{p.DestURI}, params, nil, flags)
		done <- err
	}()
	why, err := m.wait(ctx, done)
	res.Total = time.Since(m.start)
	res.PostCopyUsed = m.switched()
	m.stopProgress()

	if err != nil {
		err = d.migrationFailed(l, m, id, err, why, ctx.Err())
		log.Warn("live migration failed", "after", res.Total.Round(time.Millisecond), "err", err)
		return res, err
	}
	stats, err := destJobStats(dest, dom.Name)
	if v, ok := paramInt(stats, libvirt.DomainJobDowntime); ok {
		res.Downtime = time.Duration(v) * time.Millisecond
	} else if res.PostCopyUsed {
		res.Downtime = clock.pause()
	} else {
		log.Warn("no completed job statistics from the destination; downtime unknown", "err", err)
	}
	m.mu.Lock()
	if v, ok := paramInt(stats, libvirt.DomainJobAutoConvergeThrottle); ok && v > 0 {
		m.throttled = true
	}
	res.AutoConvergeUsed = p.AutoConverge && m.throttled
	if stats == nil {
		stats = m.last
	}
	m.mu.Unlock()
	if p.Progress != nil {
		final := progressOf(stats, PhaseDone, res.Total)
		final.DataRemaining = 0
		p.Progress(final)
	}
	log.Info("live migration done", "total", res.Total.Round(time.Millisecond), "downtime", res.Downtime,
		"auto_converge_used", res.AutoConvergeUsed, "post_copy_used", res.PostCopyUsed)
	return res, nil
}

// migration is the state of one running Migrate call, shared by its polling goroutines.
type migration struct {
	l     *libvirt.Libvirt
	dom   libvirt.Domain
	p     MigrateParams
	start time.Time
	log   *slog.Logger

	mu        sync.Mutex
	postcopy  bool                 // switched to post-copy
	throttled bool                 // auto-converge throttle seen above 0
	polling   bool                 // a statistics poll is in flight
	last      []libvirt.TypedParam // the latest statistics polled
	raise     bool                 // adaptive downtime target, not raised yet

	progMu  sync.Mutex // held while Progress runs
	stopped bool       // under progMu: Migrate is returning, no more Progress calls
}

func (m *migration) switched() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.postcopy
}

// stopProgress ends Progress calls: it waits for one that runs, and none starts after it.
func (m *migration) stopProgress() {
	m.progMu.Lock()
	defer m.progMu.Unlock()
	m.stopped = true
}

// wait runs the migration's control loop until Perform returns (on done) or, after an abort,
// until migrateAbortGrace passes. why says why Migrate aborted ("" if it did not).
func (m *migration) wait(ctx context.Context, done <-chan error) (why string, err error) {
	tick := time.NewTicker(migratePoll)
	defer tick.Stop()
	var timeout, postcopy, grace <-chan time.Time
	if m.p.Timeout > 0 {
		t := time.NewTimer(m.p.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	if m.p.PostCopyAfter > 0 {
		t := time.NewTimer(m.p.PostCopyAfter)
		defer t.Stop()
		postcopy = t.C
	}
	ctxDone := ctx.Done()
	wantPostcopy := false
	switching := make(chan error, 1) // result of a DomainMigrateStartPostCopy in flight
	inFlight := false
	aborted := make(chan error, 1)
	abort := func(reason string) {
		if why != "" {
			return
		}
		why = reason
		if m.switched() {
			// Nothing to abort: post-copy runs to its end (or fails).
			why += " (in post-copy: not abortable, waiting for it to end)"
			return
		}
		go func() { aborted <- m.l.DomainAbortJob(m.dom) }()
		g := time.NewTimer(migrateAbortGrace)
		grace = g.C
	}
	trySwitch := func() {
		if !wantPostcopy || inFlight || m.switched() || why != "" {
			return
		}
		inFlight = true
		go func() { switching <- m.l.DomainMigrateStartPostCopy(m.dom, 0) }()
	}
	for {
		select {
		case err := <-done:
			return why, err
		case <-tick.C:
			m.poll()
			trySwitch()
		case <-postcopy:
			wantPostcopy = true
			trySwitch()
		case err := <-switching:
			inFlight = false
			if err == nil {
				m.mu.Lock()
				m.postcopy = true
				m.mu.Unlock()
			}
			// Too early (the migration is still setting up): tried again on the next tick.
		case err := <-aborted:
			if err != nil {
				why += fmt.Sprintf(" (abort: %v)", err)
			}
		case <-timeout:
			timeout = nil
			abort(fmt.Sprintf("timed out after %v", m.p.Timeout))
		case <-ctxDone:
			ctxDone = nil
			abort(fmt.Sprintf("cancelled: %v", ctx.Err()))
		case <-grace:
			return why, fmt.Errorf("the migration job did not end %v after the abort: outcome unknown", migrateAbortGrace)
		}
	}
}

// poll reads the job's statistics in the background (one poll at a time: a hung libvirtd
// does not pile them up) and reports them to Progress.
func (m *migration) poll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.polling {
		return
	}
	m.polling = true
	go func() {
		defer func() {
			m.mu.Lock()
			m.polling = false
			m.mu.Unlock()
		}()
		typ, params, err := m.l.DomainGetJobStats(m.dom, 0)
		if err != nil || libvirt.DomainJobType(typ) == libvirt.DomainJobNone {
			return
		}
		m.mu.Lock()
		m.last = params
		if v, ok := paramInt(params, libvirt.DomainJobAutoConvergeThrottle); ok && v > 0 {
			m.throttled = true
		}
		phase := PhasePrecopy
		if m.postcopy {
			phase = PhasePostcopy
		}
		iter, _ := paramInt(params, libvirt.DomainJobMemoryIteration)
		raise := m.raise && !m.postcopy && (m.throttled || iter >= raiseAtIteration)
		if raise {
			m.raise = false
		}
		m.mu.Unlock()
		if raise {
			err := m.l.DomainMigrateSetMaxDowntime(m.dom, uint64(RaisedMaxDowntime.Milliseconds()), 0)
			m.log.Info("guest keeps dirtying memory: switch-over target raised", "iteration", iter,
				"max_downtime", RaisedMaxDowntime, "err", err)
		}
		if m.p.Progress == nil {
			return
		}
		m.progMu.Lock()
		defer m.progMu.Unlock()
		if !m.stopped {
			m.p.Progress(progressOf(params, phase, time.Since(m.start)))
		}
	}()
}

// switchClock times a post-copy switch-over from lifecycle events: the source domain paused
// (this driver's events) to the destination's resumed (a connection of its own to the
// destination). Both are stamped when this process receives them, so delivery delays mostly
// cancel out.
type switchClock struct {
	mu              sync.Mutex
	paused, resumed time.Time
}

// watch starts following both sides; stop ends it (without waiting for a slow destination).
func (c *switchClock) watch(d *Libvirt, id, name string, dest *url.URL) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	stamp := func(t *time.Time, at time.Time) {
		c.mu.Lock()
		defer c.mu.Unlock()
		if t.IsZero() {
			*t = at
		}
	}
	src := d.Events(ctx)
	go func() {
		for ev := range src {
			if ev.ID == id && ev.Type == EventSuspended {
				stamp(&c.paused, ev.Time)
			}
		}
	}()
	go func() {
		l, err := libvirt.ConnectToURI(dest)
		if err != nil {
			return
		}
		defer l.Disconnect()
		evs, err := l.LifecycleEvents(ctx)
		if err != nil {
			return
		}
		for m := range evs {
			if m.Dom.Name == name && libvirt.DomainEventType(m.Event) == libvirt.DomainEventResumed {
				stamp(&c.resumed, time.Now())
			}
		}
	}()
	return cancel
}

// pause is the measured switch-over pause, 0 when unknown.
func (c *switchClock) pause() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.paused.IsZero() || c.resumed.Before(c.paused) {
		return 0
	}
	return c.resumed.Sub(c.paused)
}

// destJobStats asks the destination libvirtd (at dest, the URI the source used) for the
// statistics of the incoming migration that just completed there: libvirt keeps them there,
// with the downtime, while the source domain is gone (UNDEFINE_SOURCE). (libvirt also sends them
// to the source in a job-completed event, but go-libvirt cannot decode events carrying typed
// parameters and drops it.)
func destJobStats(dest *url.URL, name string) ([]libvirt.TypedParam, error) {
	type answer struct {
		params []libvirt.TypedParam
		err    error
	}
	ch := make(chan answer, 1)
	go func() {
		l, err := libvirt.ConnectToURI(dest)
		if err != nil {
			ch <- answer{err: err}
			return
		}
		defer l.Disconnect()
		dom, err := l.DomainLookupByName(name)
		if err != nil {
			ch <- answer{err: err}
			return
		}
		_, params, err := l.DomainGetJobStats(dom, libvirt.DomainJobStatsCompleted)
		ch <- answer{params, err}
	}()
	select {
	case a := <-ch:
		return a.params, a.err
	case <-time.After(migrateStatsWait):
		return nil, fmt.Errorf("no answer in %v", migrateStatsWait)
	}
}

// migrationFailed builds Migrate's error after a failed or aborted migration, checking (and
// if need be resuming) the domain on the source.
func (d *Libvirt) migrationFailed(l *libvirt.Libvirt, m *migration, id string, err error, why string, ctxErr error) error {
	reason := err.Error()
	var lerr libvirt.Error
	if errors.As(err, &lerr) {
		reason = lerr.Message
	}
	if why != "" {
		reason = why + ": " + reason
	}
	var extra []error
	if ctxErr != nil {
		extra = append(extra, ctxErr)
	}
	if !l.IsConnected() {
		extra = append(extra, ErrDisconnected)
		return wrapMigration(id, m.p.DestURI, reason+"; connection to the source's libvirtd lost: outcome unknown", extra)
	}
	where := d.sourceState(l, m)
	return wrapMigration(id, m.p.DestURI, reason+"; "+where, extra)
}

// wrapMigration builds the error of a failed migration: one line, wrapping ErrMigration and
// extra (ctx's error, ErrDisconnected) for errors.Is.
func wrapMigration(id, dest, reason string, extra []error) error {
	return &migrationError{
		msg:    fmt.Sprintf("driver: migrate %s to %s: %v: %s", id, dest, ErrMigration, reason),
		causes: append([]error{ErrMigration}, extra...),
	}
}

type migrationError struct {
	msg    string
	causes []error
}

func (e *migrationError) Error() string   { return e.msg }
func (e *migrationError) Unwrap() []error { return e.causes }

// sourceState says where the domain is after a failed migration, resuming it on the source if
// libvirt left it paused there in pre-copy (libvirt normally resumes it itself).
func (d *Libvirt) sourceState(l *libvirt.Libvirt, m *migration) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type answer struct {
		state, reason int32
		err           error
	}
	ask := func() answer {
		ch := make(chan answer, 1)
		go func() {
			st, r, err := l.DomainGetState(m.dom, 0)
			ch <- answer{st, r, err}
		}()
		select {
		case a := <-ch:
			return a
		case <-ctx.Done():
			return answer{err: ctx.Err()}
		}
	}
	a := ask()
	switch {
	case libvirt.IsNotFound(a.err):
		return "the domain is no longer on the source"
	case a.err != nil:
		return fmt.Sprintf("state on the source unknown (%v)", a.err)
	}
	st, reason := stateOf(a.state, a.reason)
	if st == StatePaused && reason == "migration" && !m.switched() {
		if err := l.DomainResume(m.dom); err != nil {
			return fmt.Sprintf("the domain is paused on the source and could not be resumed: %v", err)
		}
		if a = ask(); a.err == nil {
			st, reason = stateOf(a.state, a.reason)
			return fmt.Sprintf("resumed on the source (%s/%s)", st, reason)
		}
	}
	switch {
	case st == StateRunning:
		return fmt.Sprintf("the domain keeps running on the source (%s/%s)", st, reason)
	case m.switched():
		return fmt.Sprintf("post-copy had started: the domain is %s/%s on the source and cannot run there again (its memory is split between the hosts)", st, reason)
	default:
		return fmt.Sprintf("the domain is %s/%s on the source", st, reason)
	}
}

// progressOf reads libvirt job statistics.
func progressOf(params []libvirt.TypedParam, phase string, elapsed time.Duration) MigrationProgress {
	get := func(name string) int64 { v, _ := paramInt(params, name); return v }
	return MigrationProgress{
		Phase:          phase,
		DataTotal:      get(libvirt.DomainJobDataTotal),
		DataProcessed:  get(libvirt.DomainJobDataProcessed),
		DataRemaining:  get(libvirt.DomainJobDataRemaining),
		DirtyRatePages: get(libvirt.DomainJobMemoryDirtyRate),
		Iterations:     int(get(libvirt.DomainJobMemoryIteration)),
		Elapsed:        elapsed,
	}
}

// paramInt returns a numeric typed parameter.
func paramInt(params []libvirt.TypedParam, name string) (int64, bool) {
	for _, p := range params {
		if p.Field != name {
			continue
		}
		switch v := p.Value.I.(type) {
		case int32:
			return int64(v), true
		case uint32:
			return int64(v), true
		case int64:
			return v, true
		case uint64:
			return int64(v), true
		case float64:
			return int64(v), true
		}
	}
	return 0, false
}

// rewriteStateDir moves every path under from (a directory) in a domain XML to the same path
// under to. Only whole attribute values and text nodes that start with the directory change.
func rewriteStateDir(domXML, from, to string) string {
	if domXML == "" {
		return ""
	}
	from, to = strings.TrimSuffix(from, "/"), strings.TrimSuffix(to, "/")
	re := regexp.MustCompile(`(['">])` + regexp.QuoteMeta(xmlEscape(from)) + `/`)
	esc := xmlEscape(to)
	return re.ReplaceAllStringFunc(domXML, func(match string) string { return match[:1] + esc + "/" })
}

// xmlEscape escapes s as libvirt writes attribute values and text.
func xmlEscape(s string) string {
	var b strings.Builder
	xml.EscapeText(&b, []byte(s))
	return strings.ReplaceAll(b.String(), "'", "&apos;")
}

// UpdateMeta implements Migrator: it replaces PlasmaVMC's <metadata> element of VM id's
// domain, live (when it runs) and in its persistent definition (when it has one), in one call.
// m.ID must be id or empty.
func (d *Libvirt) UpdateMeta(ctx context.Context, id string, m Metadata) error {
	if m.ID == "" {
		m.ID = id
	}
	if m.ID != id {
		return fmt.Errorf("driver: update metadata %s: %w: metadata id %q", id, ErrInvalidSpec, m.ID)
	}
	var b strings.Builder
	enc := xml.NewEncoder(&b)
	v := vmMetaXML{ID: m.ID, Name: m.Name, Generation: m.Generation, Labels: labels(m.Labels)}
	if err := enc.EncodeElement(v, xml.StartElement{Name: xml.Name{Local: "vm"}}); err != nil {
		return fmt.Errorf("driver: update metadata %s: %w", id, err)
	}
	return d.call(ctx, "update metadata", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		active, err := l.DomainIsActive(dom)
		if err != nil {
			return err
		}
		persistent, err := l.DomainIsPersistent(dom)
		if err != nil {
			return err
		}
		var flags libvirt.DomainModificationImpact
		if active == 1 {
			flags |= libvirt.DomainAffectLive
		}
		if persistent == 1 {
			flags |= libvirt.DomainAffectConfig
		}
		return l.DomainSetMetadata(dom, int32(libvirt.DomainMetadataElement), libvirt.OptString{b.String()},
			libvirt.OptString{"plasmavmc"}, libvirt.OptString{MetadataNamespace}, flags)
	})
}
