package agent

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/pkg/resilience/chainfiresource"
	plasmaserver "plasmacloud.dev/pkg/server"
	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	"plasmacloud.dev/plasmavmc/internal/storage"
	"plasmacloud.dev/proto/mvccpb"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// agent is one running agent: the wiring of Run. Its maps are guarded by mu; everything
// else is set before the goroutines start and read-only afterwards.
type agent struct {
	cfg Config
	log *slog.Logger

	cf     *chainfire.Client
	st     *state.Store
	drv    Hypervisor
	mig    driver.Migrator // drv's live-migration side; nil when the driver has none
	store  *storage.Store
	writer *writer
	m      *metrics
	inf    *resilience.Informer[*pb.VM]
	pet    *petter // nil with Config.NoWatchdog

	// drvReady and infReady publish drv and inf to the HTTP handlers (readiness,
	// metrics), which run while Run is still setting them up.
	drvReady atomic.Pointer[hvBox]
	infReady atomic.Pointer[resilience.Informer[*pb.VM]]
	// watchErr is the error that stopped the informer's watch (one the informer does not
	// retry: Unauthenticated, PermissionDenied), until the next watch delivers a batch or
	// bookmark; nil while the watch is healthy. /readyz reports it.
	watchErr atomic.Pointer[error]

	// instance is the current agent instance id, the value of /alive/<host>: drawn at
	// start and again after every self-fence.
	instance atomic.Pointer[string]
	// leaseValidUntil is when the heartbeat lease could expire unless renewed (unix ns,
	// counted from when the grant or renewal was sent); the fence deadline is
	// FenceMargin earlier.
	leaseValidUntil atomic.Int64
	// joined is set once the current instance has joined (join: relisted after its
	// lease) and cleared by a self-fence; starts need it (mayStart).
	joined atomic.Bool
	// fenceReason is the reason of the latest self-fence (nil: none yet).
	fenceReason atomic.Pointer[string]
	// joinSeq counts joins; a worker records in joinSeen the latest it reconciled after.
	joinSeq atomic.Int64
	// rejoined is the instance whose join completed; hostWritten the rejoined_instance
	// of the last host record written.
	rejoined, hostWritten atomic.Pointer[string]
	// hostKick wakes hostLoop; relist makes runInformer list again (capacity 1 each).
	hostKick, relist chan struct{}

	ctx context.Context // Run's; ends at shutdown

	mu      sync.Mutex
	workers map[string]*vmWorker
	wg      sync.WaitGroup
}

// Run runs the agent of one host until ctx ends: it serves /healthz, /readyz and /metrics,
// connects to libvirtd (retrying), registers the host, holds its heartbeat lease, follows
// the VMs assigned to it and converges each through the driver, writing their status back.
//
// When ctx ends Run returns without touching the VMs: they keep running, and the next
// agent re-adopts them (so canceling ctx is the same as a SIGKILL for the VMs). The lease
// is not revoked; it expires after its TTL unless a new agent takes over first.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, cancelRun := context.WithCancel(ctx) // also ends the goroutines on an early return
	defer cancelRun()
	a := &agent{cfg: cfg, log: cfg.Logger.With("host", cfg.HostName), ctx: ctx,
		workers: map[string]*vmWorker{}, hostKick: make(chan struct{}, 1), relist: make(chan struct{}, 1)}
	a.newInstance()

	cf, err := chainfire.New(chainfire.Config{Endpoints: cfg.ChainFireEndpoints, TLS: cfg.ChainFireTLS,
		Logger: a.log.With("component", "chainfire"), RequestTimeout: 5 * time.Second, Retry: cfg.Backoff})
	if err != nil {
		return err
	}
	defer cf.Close()
	a.cf, a.st = cf, state.New(cf, nil)
	a.writer = newWriter(a.st, cfg.HostName, a.log.With("component", "writer"))

	if a.store, err = storage.New(storage.Config{Pools: cfg.Pools, Log: a.log.With("component", "storage")}); err != nil {
		return err
	}

	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	a.m = newMetrics(reg, a)
	a.writer.mx = a.m

	srv := plasmaserver.New(plasmaserver.Config{Addr: cfg.Listen, Listener: cfg.Listener, Logger: a.log,
		Registry: reg, Ready: a.ready, DrainTimeout: time.Second})
	srvCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(srvCtx) }()

	// The watchdog first (pets are queued until the first lease), then libvirtd: without
	// it there is nothing to converge.
	var bg sync.WaitGroup
	goBG := func(f func()) {
		bg.Add(1)
		go func() { defer bg.Done(); f() }()
	}
	defer func() { cancelRun(); bg.Wait() }()
	if !cfg.NoWatchdog && len(cfg.WatchdogCommand) == 0 {
		if exe, err := os.Executable(); err != nil || !strings.HasPrefix(filepath.Base(exe), "plasmavmc-agent") {
			a.log.Warn("no watchdog: this executable is not plasmavmc-agent and Config.WatchdogCommand is empty",
				"executable", exe)
			cfg.NoWatchdog, a.cfg.NoWatchdog = true, true
		}
	}
	if !cfg.NoWatchdog {
		a.pet = newPetter(a)
		goBG(func() { a.pet.run(ctx) })
	}
	if cfg.Hypervisor != nil {
		a.drv = cfg.Hypervisor
	} else {
		d, err := driver.Open(ctx, driver.Config{Socket: cfg.LibvirtSocket, StateDir: cfg.StateDir,
			Log: a.log.With("component", "driver")})
		if err != nil {
			stopServing()
			<-serveErr
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("agent: libvirt: %w", err)
		}
		defer d.Close()
		a.drv = d
	}
	a.mig, _ = a.drv.(driver.Migrator)
	a.drvReady.Store(&hvBox{a.drv})

	if a.inf, err = a.newInformer(); err != nil {
		return err
	}
	a.infReady.Store(a.inf)

	events := a.drv.Events(ctx) // subscribe before listing: nothing falls in between
	goBG(func() { a.writer.run(ctx) })
	goBG(func() { a.hostLoop(ctx) })
	goBG(func() { a.holdLease(ctx) })
	goBG(func() { a.runInformer(ctx) })
	goBG(func() { a.followEvents(ctx, events) })
	goBG(func() { a.sweepLoop(ctx) })
	a.log.Info("agent started", "instance", a.instanceID(), "accel", a.drv.Accel(), "pools", a.store.Pools(),
		"watchbus", len(cfg.WatchBusEndpoints) > 0, "migration_uri", cfg.MigrationURI,
		"fence_margin", cfg.FenceMargin, "watchdog", !cfg.NoWatchdog, "live_migration", a.mig != nil)
	_ = plasmaserver.Notify("READY=1")

	select {
	case <-ctx.Done():
	case err = <-serveErr:
		a.log.Error("health endpoint failed", "err", err)
	}
	_ = plasmaserver.Notify("STOPPING=1")
	cancelRun()
	bg.Wait()
	a.wg.Wait() // workers end with ctx
	stopServing()
	if err == nil {
		err = <-serveErr
	}
	a.log.Info("agent stopped; VMs keep running")
	return err
}

func newInstanceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// ready backs /readyz: the informer has listed the assigned VMs, libvirtd is connected and
// the host is not self-fenced (from a self-fence until the rejoin's relist).
func (a *agent) ready(context.Context) error {
	drv := a.drvReady.Load()
	switch {
	case drv == nil || drv.Hypervisor == nil:
		return errors.New("connecting to libvirtd")
	case !drv.Connected():
		return errors.New("libvirtd disconnected; reconnecting")
	case !a.synced():
		return errors.New("assigned VMs not listed yet (ChainFire/WatchBus)")
	}
	if err := a.watchErr.Load(); err != nil {
		return fmt.Errorf("watch of assigned VMs failing: %w", *err)
	}
	if r := a.fenceReason.Load(); r != nil && !a.joined.Load() {
		return fmt.Errorf("self-fenced (%s); rejoining", *r)
	}
	return nil
}

// Informer restart pacing after an error the informer does not retry itself.
const (
	informerRetryMin = time.Second
	informerRetryMax = 30 * time.Second
)

// runInformer runs the informer until ctx ends. Errors the informer gives up on (the
// service account's secret refused, its role lacking events.watch) are retried here
// with exponential backoff, as credentials get fixed and bindings propagate; meanwhile
// watchErr makes /readyz fail, so a host that cannot follow its VMs does not look
// healthy. Called once, on its own goroutine.
func (a *agent) runInformer(ctx context.Context) {
	wait := informerRetryMin
	for {
		began := time.Now()
		ictx, cancel := context.WithCancel(ctx)
		var relisting atomic.Bool
		go func() {
			select {
			case <-a.relist:
				relisting.Store(true)
				cancel()
			case <-ictx.Done():
			}
		}()
		err := a.inf.Run(ictx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if relisting.Load() {
			a.log.Debug("relisting the assigned VMs")
			continue
		}
		if err == nil {
			err = errors.New("informer ended")
		}
		a.watchErr.Store(&err)
		if time.Since(began) > informerRetryMax {
			wait = informerRetryMin
		}
		a.log.Error("watch of assigned VMs failed; retrying", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return
		case <-a.relist:
		case <-time.After(wait):
		}
		wait = min(2*wait, informerRetryMax)
	}
}

func (a *agent) synced() bool {
	inf := a.infReady.Load()
	return inf != nil && inf.HasSynced()
}

// newInformer follows /plasmavmc/assigned/<host>/: listed from ChainFire, watched through
// WatchBus when configured, else ChainFire directly.
func (a *agent) newInformer() (*resilience.Informer[*pb.VM], error) {
	var watcher resilience.Watcher = chainfiresource.Watcher{Client: a.cf}
	if len(a.cfg.WatchBusEndpoints) > 0 {
		watcher = resilience.WatchBusWatcher(resilience.SubscriberConfig{
			Endpoints:     a.cfg.WatchBusEndpoints,
			ClientOptions: a.cfg.WatchBusOptions,
			Logger:        a.log.With("component", "watchbus"),
		})
	}
	// Any batch or bookmark shows the watch works again.
	inner := watcher
	watcher = resilience.WatcherFunc(func(ctx context.Context, prefix []byte, rev int64, h resilience.Handler) error {
		return inner.Watch(ctx, prefix, rev, func(ctx context.Context, b resilience.Batch) error {
			if a.watchErr.Load() != nil {
				a.watchErr.Store(nil)
				a.log.Info("watch of assigned VMs working again", "revision", b.Revision)
			}
			return h(ctx, b)
		})
	})
	prefix := state.AssignedPrefix(a.cfg.HostName)
	return resilience.NewInformer(resilience.InformerConfig[*pb.VM]{
		Lister:  chainfiresource.Lister{Client: a.cf},
		Watcher: watcher,
		Prefix:  []byte(prefix),
		Decode: func(kv *mvccpb.KeyValue) (*pb.VM, error) {
			return state.DecodeVM(string(kv.Key), kv.Value)
		},
		ResyncPeriod: 5 * time.Minute,
		Logger:       a.log.With("component", "informer"),
		Handlers: resilience.InformerHandlers[*pb.VM]{
			OnAdd:    func(key string, vm *pb.VM) { a.assign(state.LastSegment(key), vm) },
			OnUpdate: func(key string, _, vm *pb.VM) { a.assign(state.LastSegment(key), vm) },
			OnDelete: func(key string, _ *pb.VM) { a.assign(state.LastSegment(key), nil) },
		},
	})
}

// assign hands a VM's desired state (nil: no longer assigned here) to its worker.
func (a *agent) assign(id string, vm *pb.VM) {
	if vm == nil {
		if w := a.worker(id, false); w != nil {
			w.setDesired(nil)
		}
		return
	}
	a.worker(id, true).setDesired(vm)
}

// worker returns VM id's worker, starting one when create is set.
func (a *agent) worker(id string, create bool) *vmWorker {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w := a.workers[id]; w != nil || !create {
		return w
	}
	if a.ctx.Err() != nil {
		return nil
	}
	w := newWorker(a, id)
	a.workers[id] = w
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		w.run(a.ctx)
	}()
	return w
}

// retire removes w from the map if it has nothing left to do (no desired state); it
// reports whether it did, after which w's goroutine ends.
func (a *agent) retire(w *vmWorker) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w.hasDesired() {
		return false
	}
	if a.workers[w.id] == w {
		delete(a.workers, w.id)
	}
	return true
}

func (a *agent) workerList() []*vmWorker {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]*vmWorker, 0, len(a.workers))
	for _, w := range a.workers {
		out = append(out, w)
	}
	return out
}

// followEvents routes driver events to the workers; a reconnect or a lost event makes
// every VM reconcile and the domains be listed again.
func (a *agent) followEvents(ctx context.Context, events <-chan driver.Event) {
	for ev := range events {
		switch ev.Type {
		case driver.EventReconnected, driver.EventResync:
			a.log.Info("driver " + string(ev.Type) + ": relisting domains")
			a.sweep(ctx)
			for _, w := range a.workerList() {
				w.poke()
			}
		case driver.EventDisconnected:
			a.log.Warn("libvirtd connection lost; the driver reconnects (VMs keep running)")
		default:
			if ev.ID == "" {
				continue
			}
			if w := a.worker(ev.ID, a.assigned(ev.ID)); w != nil {
				w.event(ev)
			}
		}
	}
}

// sweepLoop waits for the informer's first list, then lists the hypervisor's domains
// at once (re-adoption after an agent restart) and every OrphanSweep.
func (a *agent) sweepLoop(ctx context.Context) {
	if err := a.inf.WaitForSync(ctx); err != nil {
		return
	}
	a.log.Info("assigned VMs listed", "count", len(a.inf.Keys()), "revision", a.inf.Revision())
	t := time.NewTicker(a.cfg.OrphanSweep)
	defer t.Stop()
	for {
		a.sweep(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweep lists the domains and gives each a worker: domains of assigned VMs are adopted
// as they are; others (no longer assigned here) are destroyed and undefined by their
// worker. Never before the informer has synced: an empty cache is not "nothing assigned".
func (a *agent) sweep(ctx context.Context) {
	if !a.synced() {
		return
	}
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	doms, err := a.drv.List(lctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			a.log.Warn("listing domains failed", "err", err)
		}
		return
	}
	for _, d := range doms {
		if !a.assigned(d.ID) && !a.ours(d) {
			continue // another host's (or a test's) domain on a shared libvirtd
		}
		if w := a.worker(d.ID, true); w != nil {
			w.poke()
		}
	}
}

// assigned reports whether VM id is in the informer's cache of VMs assigned here.
func (a *agent) assigned(id string) bool {
	_, ok := a.inf.Get(state.AssignedKey(a.cfg.HostName, id))
	return ok
}

// ours reports whether d was defined by an agent of this host.
func (a *agent) ours(d driver.Domain) bool { return d.Meta.Labels[HostLabel] == a.cfg.HostName }
