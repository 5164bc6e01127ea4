package agent_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/driver"
)

// fakeNet connects the fake hosts of a test: Migrate finds the destination by its
// migration URI.
type fakeNet struct {
	mu    sync.Mutex
	hosts map[string]*fakeHV // by migration URI
}

func newFakeNet() *fakeNet { return &fakeNet{hosts: map[string]*fakeHV{}} }

// host returns a new fake hypervisor reachable at uri, keeping VM files under stateDir.
func (n *fakeNet) host(name, uri, stateDir string) *fakeHV {
	h := &fakeHV{name: name, uri: uri, stateDir: stateDir, net: n, doms: map[string]*fakeDom{}, connected: true}
	n.mu.Lock()
	n.hosts[uri] = h
	n.mu.Unlock()
	return h
}

func (n *fakeNet) lookup(uri string) *fakeHV {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.hosts[uri]
}

// fakeHV is an in-memory hypervisor (agent.Hypervisor and driver.Migrator) of one fake
// host. A running domain's "guest" appends heartbeat lines (PLASMA-HB) to its serial log
// every 100 ms, so the agent's heartbeat monitor sees boots, boot ids and sequence
// numbers as with QEMU; a live migration moves the guest with its boot id and sequence.
// Safe for concurrent use.
type fakeHV struct {
	name, uri, stateDir string
	net                 *fakeNet

	mu        sync.Mutex
	doms      map[string]*fakeDom
	subs      []chan driver.Event
	connected bool
	calls     []string
	// migrate, when set, runs inside Migrate before the switch (after the incoming
	// domain exists on the target): an error fails the migration, blocking delays it.
	migrate func(ctx context.Context, id string) error
}

type fakeDom struct {
	meta    driver.Metadata
	state   driver.State
	reason  string
	boot    string
	seq     uint64
	started time.Time
	stop    context.CancelFunc // ends the guest's heartbeat writer
	wg      *sync.WaitGroup
	job     bool // a migration job runs
}

var _ agent.Hypervisor = (*fakeHV)(nil)
var _ driver.Migrator = (*fakeHV)(nil)

func (h *fakeHV) Accel() driver.Accel { return driver.AccelTCG }

func (h *fakeHV) Connected() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.connected
}

func (h *fakeHV) Paths(id string) driver.Paths {
	dir := filepath.Join(h.stateDir, id)
	return driver.Paths{Dir: dir, SerialLog: filepath.Join(dir, "serial.log"), HeartbeatSocket: filepath.Join(dir, "hb.sock")}
}

func (h *fakeHV) Close() error { return nil }

// record notes a mutating call (tests check what the agent did).
func (h *fakeHV) record(format string, args ...any) {
	h.calls = append(h.calls, fmt.Sprintf(format, args...))
}

// Calls returns the mutating calls so far ("start <id>", "destroy <id>", ...).
func (h *fakeHV) Calls() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.calls...)
}

func (h *fakeHV) emit(ev driver.Event) {
	ev.Time = time.Now()
	for _, s := range h.subs {
		select {
		case s <- ev:
		default:
		}
	}
}

func (h *fakeHV) Events(ctx context.Context) <-chan driver.Event {
	ch := make(chan driver.Event, 256)
	h.mu.Lock()
	h.subs = append(h.subs, ch)
	h.mu.Unlock()
	go func() {
		<-ctx.Done()
		h.mu.Lock()
		defer h.mu.Unlock()
		for i, s := range h.subs {
			if s == ch {
				h.subs = append(h.subs[:i], h.subs[i+1:]...)
				break
			}
		}
		close(ch)
	}()
	return ch
}

func (h *fakeHV) Define(_ context.Context, spec driver.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.record("define %s", spec.ID)
	meta := driver.Metadata{ID: spec.ID, Name: spec.Name, Generation: spec.Generation, Labels: copyLabels(spec.Labels)}
	if d := h.doms[spec.ID]; d != nil {
		d.meta = meta // the running domain keeps its live metadata in libvirt; close enough
		return nil
	}
	h.doms[spec.ID] = &fakeDom{meta: meta, state: driver.StateShutoff, reason: "unknown"}
	h.emit(driver.Event{Type: driver.EventDefined, ID: spec.ID, Reason: "added"})
	return nil
}

func copyLabels(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// boot starts d's guest (new boot id unless continuing a migrated one). h.mu held.
func (h *fakeHV) boot(id string, d *fakeDom, keepBoot bool) {
	if !keepBoot {
		d.boot, d.seq = newID(), 0
	}
	d.state, d.reason, d.started = driver.StateRunning, "booted", time.Now()
	p := h.Paths(id)
	_ = os.MkdirAll(p.Dir, 0o755)
	_ = os.WriteFile(p.SerialLog, nil, 0o644) // QEMU truncates the serial log at start
	ctx, cancel := context.WithCancel(context.Background())
	d.stop = cancel
	var wg sync.WaitGroup
	d.wg = &wg
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			h.mu.Lock()
			d.seq++
			line := fmt.Sprintf("PLASMA-HB seq=%d boot=%s up=%.2f\n", d.seq, d.boot, time.Since(d.started).Seconds())
			h.mu.Unlock()
			f, err := os.OpenFile(p.SerialLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
			if err == nil {
				_, _ = f.WriteString(line)
				f.Close()
			}
		}
	}()
}

// halt stops d's guest. h.mu held; the writer is waited for outside the lock.
func (h *fakeHV) halt(d *fakeDom, reason string) func() {
	d.state, d.reason = driver.StateShutoff, reason
	stop, wg := d.stop, d.wg
	d.stop, d.wg = nil, nil
	if stop != nil {
		stop()
	}
	return func() {
		if wg != nil {
			wg.Wait()
		}
	}
}

func (h *fakeHV) Start(_ context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.doms[id]
	if d == nil {
		return fmt.Errorf("fake start %s: %w", id, driver.ErrNotFound)
	}
	h.record("start %s", id)
	if d.state == driver.StateRunning || d.state == driver.StatePaused {
		return nil
	}
	h.boot(id, d, false)
	h.emit(driver.Event{Type: driver.EventStarted, ID: id, Reason: "booted"})
	return nil
}

func (h *fakeHV) stopDom(id, reason string, unexpected bool) error {
	h.mu.Lock()
	d := h.doms[id]
	if d == nil {
		h.mu.Unlock()
		return fmt.Errorf("fake %s %s: %w", reason, id, driver.ErrNotFound)
	}
	h.record("%s %s", reason, id)
	if d.state != driver.StateRunning && d.state != driver.StatePaused {
		h.mu.Unlock()
		return nil
	}
	wait := h.halt(d, reason)
	h.emit(driver.Event{Type: driver.EventStopped, ID: id, Reason: reason, Unexpected: unexpected})
	h.mu.Unlock()
	wait()
	return nil
}

func (h *fakeHV) Shutdown(_ context.Context, id string, _ time.Duration) (bool, error) {
	return false, h.stopDom(id, "shutdown", false)
}

func (h *fakeHV) Destroy(_ context.Context, id string) error {
	return h.stopDom(id, "destroyed", false)
}

// Crash kills VM id's "QEMU" (an unexpected stop).
func (h *fakeHV) Crash(id string) error { return h.stopDom(id, "crashed", true) }

func (h *fakeHV) Reboot(_ context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.doms[id]
	if d == nil {
		return driver.ErrNotFound
	}
	if d.state != driver.StateRunning {
		return driver.ErrNotRunning
	}
	d.boot, d.seq, d.started = newID(), 0, time.Now()
	h.emit(driver.Event{Type: driver.EventReboot, ID: id})
	return nil
}

func (h *fakeHV) Reset(ctx context.Context, id string) error { return h.Reboot(ctx, id) }

func (h *fakeHV) Undefine(_ context.Context, id string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.doms[id]
	if d != nil && (d.state == driver.StateRunning || d.state == driver.StatePaused) {
		return fmt.Errorf("fake undefine %s: %w", id, driver.ErrRunning)
	}
	if d != nil {
		h.record("undefine %s", id)
		delete(h.doms, id)
		h.emit(driver.Event{Type: driver.EventUndefined, ID: id, Reason: "removed"})
	}
	return os.RemoveAll(h.Paths(id).Dir)
}

func (h *fakeHV) describe(id string, d *fakeDom) driver.Domain {
	out := driver.Domain{ID: id, Name: driver.DomainName(id), UUID: id, State: d.state, Reason: d.reason,
		Meta: driver.Metadata{ID: d.meta.ID, Name: d.meta.Name, Generation: d.meta.Generation, Labels: copyLabels(d.meta.Labels)}}
	if out.Running() {
		out.PID = 1
	}
	return out
}

func (h *fakeHV) List(context.Context) ([]driver.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.connected {
		return nil, driver.ErrDisconnected
	}
	out := make([]driver.Domain, 0, len(h.doms))
	for id, d := range h.doms {
		out = append(out, h.describe(id, d))
	}
	return out, nil
}

func (h *fakeHV) Get(_ context.Context, id string) (driver.Domain, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.connected {
		return driver.Domain{}, driver.ErrDisconnected
	}
	d := h.doms[id]
	if d == nil {
		return driver.Domain{}, fmt.Errorf("fake get %s: %w", id, driver.ErrNotFound)
	}
	return h.describe(id, d), nil
}

// Domain returns VM id's domain (ok false: none).
func (h *fakeHV) Domain(id string) (driver.Domain, bool) {
	d, err := h.Get(context.Background(), id)
	return d, err == nil
}

// Boot returns the boot id of VM id's running guest ("" when not running).
func (h *fakeHV) Boot(id string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d := h.doms[id]; d != nil && d.state == driver.StateRunning {
		return d.boot
	}
	return ""
}

// Put defines (and with running, starts) a domain directly, as an earlier agent or
// another copy would have: the test's stale copies.
func (h *fakeHV) Put(id string, labels map[string]string, running bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := &fakeDom{meta: driver.Metadata{ID: id, Name: "stale", Generation: 1, Labels: copyLabels(labels)},
		state: driver.StateShutoff, reason: "unknown"}
	h.doms[id] = d
	if running {
		h.boot(id, d, false)
	}
}

func (h *fakeHV) QMP(_ context.Context, id string, cmd json.RawMessage) (json.RawMessage, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.doms[id]
	if d == nil {
		return nil, driver.ErrNotFound
	}
	if d.state != driver.StateRunning && d.state != driver.StatePaused {
		return nil, driver.ErrNotRunning
	}
	var c struct {
		Execute string `json:"execute"`
	}
	_ = json.Unmarshal(cmd, &c)
	if c.Execute == "query-migrate" {
		if d.job {
			return json.RawMessage(`{"status":"active"}`), nil
		}
		return json.RawMessage(`{}`), nil
	}
	return json.RawMessage(`{}`), nil
}

func (h *fakeHV) UpdateMeta(_ context.Context, id string, m driver.Metadata) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.doms[id]
	if d == nil {
		return fmt.Errorf("fake updatemeta %s: %w", id, driver.ErrNotFound)
	}
	h.record("updatemeta %s", id)
	d.meta = driver.Metadata{ID: m.ID, Name: m.Name, Generation: m.Generation, Labels: copyLabels(m.Labels)}
	return nil
}

// Migrate moves a running domain to the fake host at p.DestURI: the incoming domain
// appears there paused (reason migration) with the source's metadata, h.migrate runs,
// then the guest continues there (same boot id and sequence, serial log under
// p.DestStateDir) and the source is undefined. On failure the incoming domain is
// removed and the source keeps running.
func (h *fakeHV) Migrate(ctx context.Context, id string, p driver.MigrateParams) (driver.MigrationResult, error) {
	start := time.Now()
	dst := h.net.lookup(p.DestURI)
	if dst == nil {
		return driver.MigrationResult{}, fmt.Errorf("fake migrate %s: %w: no host at %s", id, driver.ErrDisconnected, p.DestURI)
	}
	h.mu.Lock()
	d := h.doms[id]
	if d == nil || d.state != driver.StateRunning {
		h.mu.Unlock()
		return driver.MigrationResult{}, fmt.Errorf("fake migrate %s: %w", id, driver.ErrNotRunning)
	}
	h.record("migrate %s %s", id, dst.name)
	d.job = true
	meta := d.meta
	meta.Labels = copyLabels(d.meta.Labels)
	hook := h.migrate
	h.mu.Unlock()

	dst.mu.Lock()
	if _, exists := dst.doms[id]; exists {
		dst.mu.Unlock()
		h.endJob(id)
		return driver.MigrationResult{}, fmt.Errorf("fake migrate %s: %w: domain exists on %s", id, driver.ErrMigration, dst.name)
	}
	in := &fakeDom{meta: meta, state: driver.StatePaused, reason: "migration"}
	dst.doms[id] = in
	dst.emit(driver.Event{Type: driver.EventStarted, ID: id, Reason: "migrated"})
	dst.mu.Unlock()

	fail := func(err error) (driver.MigrationResult, error) {
		dst.mu.Lock()
		if dst.doms[id] == in {
			delete(dst.doms, id)
			dst.emit(driver.Event{Type: driver.EventStopped, ID: id, Reason: "failed"})
		}
		dst.mu.Unlock()
		h.endJob(id)
		return driver.MigrationResult{}, fmt.Errorf("fake migrate %s: %w: %v", id, driver.ErrMigration, err)
	}
	for i := 1; i <= 2; i++ {
		if p.Progress != nil {
			p.Progress(driver.MigrationProgress{Phase: driver.PhasePrecopy, DataTotal: 100 << 20,
				DataProcessed: int64(i) * 40 << 20, DataRemaining: 100<<20 - int64(i)*40<<20, Iterations: i, Elapsed: time.Since(start)})
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	if hook != nil {
		if err := hook(ctx, id); err != nil {
			return fail(err)
		}
	}
	if ctx.Err() != nil {
		return fail(ctx.Err())
	}
	// Switch: pause the source, continue the guest on the target.
	h.mu.Lock()
	wait := h.halt(d, "migrated")
	boot, seq := d.boot, d.seq
	h.mu.Unlock()
	wait()
	downtime := 7 * time.Millisecond
	dst.mu.Lock()
	if dst.doms[id] != in {
		dst.mu.Unlock()
		return driver.MigrationResult{}, fmt.Errorf("fake migrate %s: %w: incoming domain vanished", id, driver.ErrMigration)
	}
	in.boot, in.seq = boot, seq
	dstDir := p.DestStateDir
	if dstDir == "" {
		dstDir = h.stateDir
	}
	if dstDir != dst.stateDir {
		dst.mu.Unlock()
		return fail(errors.New("fake: DestStateDir is not the target's state directory"))
	}
	dst.boot(id, in, true)
	in.reason = "migrated"
	dst.emit(driver.Event{Type: driver.EventResumed, ID: id, Reason: "migrated"})
	dst.mu.Unlock()

	h.mu.Lock()
	delete(h.doms, id)
	h.emit(driver.Event{Type: driver.EventStopped, ID: id, Reason: "migrated"})
	h.emit(driver.Event{Type: driver.EventUndefined, ID: id, Reason: "removed"})
	h.mu.Unlock()
	if p.Progress != nil {
		p.Progress(driver.MigrationProgress{Phase: driver.PhaseDone, DataTotal: 100 << 20, DataProcessed: 100 << 20,
			Iterations: 3, Elapsed: time.Since(start)})
	}
	return driver.MigrationResult{Total: time.Since(start), Downtime: downtime, AutoConvergeUsed: p.AutoConverge}, nil
}

func (h *fakeHV) endJob(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d := h.doms[id]; d != nil {
		d.job = false
	}
}

// SetJob marks a migration job on VM id's domain (as a migration left running by an
// agent that died).
func (h *fakeHV) SetJob(id string, on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if d := h.doms[id]; d != nil {
		d.job = on
	}
}

// StopAll ends every guest's heartbeat writer (test cleanup).
func (h *fakeHV) StopAll() {
	h.mu.Lock()
	var waits []func()
	for _, d := range h.doms {
		if d.stop != nil {
			waits = append(waits, h.halt(d, "destroyed"))
		}
	}
	h.mu.Unlock()
	for _, w := range waits {
		w()
	}
}
