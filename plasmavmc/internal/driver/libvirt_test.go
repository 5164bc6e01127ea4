package driver_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest"
	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
	"plasmacloud.dev/plasmavmc/internal/storage"
)

// Generous: QEMU TCG shares two cores with other work.
const (
	bootTimeout  = 90 * time.Second
	eventTimeout = 30 * time.Second
)

// lab is one libvirtd, one driver and the guests of TestLibvirt.
type lab struct {
	*eventLog
	t      *testing.T
	d      *driver.Libvirt
	cfg    driver.Config
	g      guestlab.Guest
	prefix string
}

// eventLog records a driver's events for waitEvent.
type eventLog struct {
	mu     sync.Mutex
	events []driver.Event
	cond   chan struct{} // closed and replaced on every event
}

// recordEvents records d's events until the test ends.
func recordEvents(t testing.TB, d *driver.Libvirt) *eventLog {
	e := &eventLog{cond: make(chan struct{})}
	ctx, stop := context.WithCancel(context.Background())
	ch := d.Events(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range ch {
			e.mu.Lock()
			e.events = append(e.events, ev)
			close(e.cond)
			e.cond = make(chan struct{})
			e.mu.Unlock()
		}
	}()
	t.Cleanup(func() { stop(); <-done })
	return e
}

func newLab(t *testing.T) *lab {
	g := guestlab.BuildGuest(t)
	// This package kills the lab libvirtd: no other package may use it meanwhile.
	guestlab.ExclusiveLibvirtd(t)
	sock := guestlab.StartLibvirtd(t)
	// Short: the heartbeat socket lives under it (unix socket paths are limited to 107 bytes).
	state, err := os.MkdirTemp("/tmp", "pvmc-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := driver.Config{
		Socket: sock, StateDir: state, RedialMax: time.Second,
		Log: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})),
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	d, err := driver.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, d: d, cfg: cfg, g: g, prefix: fmt.Sprintf("t%d-", time.Now().UnixNano()%1e6)}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		doms, _ := l.d.List(ctx)
		for _, dom := range doms {
			if strings.HasPrefix(dom.ID, l.prefix) {
				l.d.Destroy(ctx, dom.ID)
				l.d.Undefine(ctx, dom.ID)
			}
		}
		d.Close()
		os.RemoveAll(state)
	})
	// Registered after the cleanup above, so it runs first: the recorder stops before Close.
	l.eventLog = recordEvents(t, d)
	return l
}

func (l *lab) ctx(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(l.t.Context(), d)
	l.t.Cleanup(cancel)
	return ctx
}

// mark returns the index of the next event, for waitEvent.
func (e *eventLog) mark() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.events)
}

// waitEvent waits for an event at index >= from that matches.
func (e *eventLog) waitEvent(t testing.TB, from int, what string, match func(driver.Event) bool) driver.Event {
	t.Helper()
	deadline := time.After(eventTimeout)
	for {
		e.mu.Lock()
		evs, cond := e.events[from:], e.cond
		e.mu.Unlock()
		for _, ev := range evs {
			if match(ev) {
				return ev
			}
		}
		select {
		case <-cond:
		case <-deadline:
			t.Fatalf("no %s event in %v; events since: %+v", what, eventTimeout, evs)
		}
	}
}

func (l *lab) spec(id string, knobs ...string) driver.Spec {
	return driver.Spec{
		ID: l.prefix + id, Name: id, Generation: 1, VCPUs: 1, MemoryMiB: 96,
		Kernel: l.g.Kernel, Initrd: l.g.Initrd,
		Cmdline: strings.Join(append([]string{guestlab.Cmdline}, knobs...), " "),
	}
}

// monitor follows id's serial log until the test ends.
func (l *lab) monitor(t *testing.T, id string) *guest.Monitor {
	return follow(t, guest.NewFileMonitor(l.d.Paths(id).SerialLog, 50*time.Millisecond, nil))
}

// follow runs m until the test ends.
func follow(t testing.TB, m *guest.Monitor) *guest.Monitor {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { m.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return m
}

func waitHB(t testing.TB, m *guest.Monitor, what string, ok func(guest.Observation) bool) guest.Observation {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), bootTimeout)
	defer cancel()
	o, err := m.Wait(ctx, ok)
	if err != nil {
		t.Fatalf("waiting for heartbeat (%s): %v; latest %+v", what, err, o)
	}
	return o
}

func newBoot(old string) func(guest.Observation) bool {
	return func(o guest.Observation) bool { return o.Boot != old }
}

func (l *lab) get(t *testing.T, id string) driver.Domain {
	t.Helper()
	dom, err := l.d.Get(l.ctx(30*time.Second), id)
	if err != nil {
		t.Fatal(err)
	}
	return dom
}

func libvirtdPID(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(guestlab.PIDFile)
	if err != nil {
		t.Fatalf("libvirtd pidfile: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestLibvirt runs the driver against the real libvirtd and QEMU (TCG) with the tiny guest. The
// steps share one libvirtd and a few guests and depend on each other: they run in order.
func TestLibvirt(t *testing.T) {
	l := newLab(t)
	t.Logf("accelerator %s", l.d.Accel())
	a := l.prefix + "a"
	var ma *guest.Monitor
	var bootA string
	var pidA int

	t.Run("define start first heartbeat", func(t *testing.T) {
		// A qcow2 overlay from the storage layer as the VM's disk.
		pools := filepath.Join(l.cfg.StateDir, "pools") // outlives this subtest
		st, err := storage.New(storage.Config{Pools: map[string]string{storage.PoolLocal: pools}})
		if err != nil {
			t.Fatal(err)
		}
		base := filepath.Join(pools, "base.raw")
		if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := st.RegisterImage(l.ctx(time.Minute), storage.PoolLocal, "base", base); err != nil {
			t.Fatal(err)
		}
		disk, err := st.CreateDisk(l.ctx(time.Minute), storage.PoolLocal, a+"-root", "base", 8<<20)
		if err != nil {
			t.Fatal(err)
		}
		spec := l.spec("a")
		spec.Disks = []driver.Disk{{Path: disk.Path}}
		spec.Labels = map[string]string{"suite": "driver"}
		if err := l.d.Define(l.ctx(time.Minute), spec); err != nil {
			t.Fatal(err)
		}
		ma = l.monitor(l.t, a)
		sock := guest.NewSocketMonitor(l.d.Paths(a).HeartbeatSocket, 100*time.Millisecond, nil)
		sctx, scancel := context.WithCancel(context.Background())
		sdone := make(chan struct{})
		go func() { sock.Run(sctx); close(sdone) }()
		defer func() { scancel(); <-sdone }()

		from := l.mark()
		t0 := time.Now()
		if err := l.d.Start(l.ctx(time.Minute), a); err != nil {
			t.Fatal(err)
		}
		started := time.Since(t0)
		l.waitEvent(t, from, "started", func(ev driver.Event) bool { return ev.ID == a && ev.Type == driver.EventStarted })
		o := waitHB(t, ma, "first", func(o guest.Observation) bool { return true })
		t.Logf("MEASURE start returned after %v; first serial heartbeat after %v (seq %d, guest uptime %v)",
			started.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), o.Seq, o.Uptime)
		bootA = o.Boot
		so := waitHB(t, sock, "virtio-serial", func(o guest.Observation) bool { return true })
		if so.Boot != bootA {
			t.Fatalf("virtio-serial boot %s, serial %s", so.Boot, bootA)
		}
		t.Logf("MEASURE virtio-serial heartbeat after %v", time.Since(t0).Round(time.Millisecond))
		if err := l.d.Start(l.ctx(time.Minute), a); err != nil {
			t.Fatalf("second Start of a running VM: %v", err)
		}

		dom := l.get(t, a)
		if dom.State != driver.StateRunning || dom.PID <= 0 || dom.Meta.Name != "a" || dom.Meta.Generation != 1 || dom.Meta.Labels["suite"] != "driver" {
			t.Fatalf("Get = %+v", dom)
		}
		pidA = dom.PID
		res, err := l.d.QMP(l.ctx(30*time.Second), a, json.RawMessage(`{"execute":"query-status"}`))
		if err != nil || !strings.Contains(string(res), `"running"`) {
			t.Fatalf("QMP query-status = %s, %v", res, err)
		}
		if _, err := l.d.QMP(l.ctx(30*time.Second), a, json.RawMessage(`{"execute":"no-such-command"}`)); !errors.Is(err, driver.ErrQMP) {
			t.Fatalf("bad QMP command: %v, want ErrQMP", err)
		}
		if err := l.d.Undefine(l.ctx(30*time.Second), a); !errors.Is(err, driver.ErrRunning) {
			t.Fatalf("Undefine of a running VM: %v, want ErrRunning", err)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("reboot gives a new boot id", func(t *testing.T) {
		from := l.mark()
		t0 := time.Now()
		if err := l.d.Reboot(l.ctx(30*time.Second), a); err != nil {
			t.Fatal(err)
		}
		o := waitHB(t, ma, "after reboot", newBoot(bootA))
		t.Logf("MEASURE reboot (ACPI) to new boot's heartbeat: %v", time.Since(t0).Round(time.Millisecond))
		l.waitEvent(t, from, "reboot", func(ev driver.Event) bool { return ev.ID == a && ev.Type == driver.EventReboot })
		if dom := l.get(t, a); dom.PID != pidA {
			t.Fatalf("QEMU pid changed across a guest reboot: %d -> %d", pidA, dom.PID)
		}
		bootA = o.Boot
	})

	t.Run("QEMU killed: stopped unexpectedly, Start brings it back", func(t *testing.T) {
		from := l.mark()
		t0 := time.Now()
		if err := syscall.Kill(pidA, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		ev := l.waitEvent(t, from, "stopped", func(ev driver.Event) bool { return ev.ID == a && ev.Type == driver.EventStopped })
		detected := time.Since(t0)
		if !ev.Unexpected {
			t.Fatalf("stop after SIGKILL not unexpected: %+v", ev)
		}
		dom := l.get(t, a)
		if dom.State != driver.StateShutoff || dom.Reason != "crashed" {
			t.Fatalf("after SIGKILL: %s/%s, want shutoff/crashed", dom.State, dom.Reason)
		}
		// libvirt restarts nothing by itself.
		time.Sleep(time.Second)
		if dom := l.get(t, a); dom.Running() {
			t.Fatal("libvirt restarted the killed VM by itself")
		}
		t1 := time.Now()
		if err := l.d.Start(l.ctx(time.Minute), a); err != nil {
			t.Fatal(err)
		}
		o := waitHB(t, ma, "after restart", newBoot(bootA))
		t.Logf("MEASURE SIGKILL -> stopped event (%s) %v; Start -> heartbeat %v; kill -> heartbeat %v",
			ev.Reason, detected.Round(time.Millisecond), time.Since(t1).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
		bootA = o.Boot
		pidA = l.get(t, a).PID
	})

	t.Run("libvirtd killed and restarted: reconnects, VM untouched", func(t *testing.T) {
		from := l.mark()
		t0 := time.Now()
		if err := syscall.Kill(libvirtdPID(t), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		l.waitEvent(t, from, "disconnected", func(ev driver.Event) bool { return ev.Type == driver.EventDisconnected })
		if _, err := l.d.List(l.ctx(10 * time.Second)); !errors.Is(err, driver.ErrDisconnected) {
			t.Fatalf("List while libvirtd is down: %v, want ErrDisconnected", err)
		}
		guestlab.StartLibvirtd(t)
		l.waitEvent(t, from, "reconnected", func(ev driver.Event) bool { return ev.Type == driver.EventReconnected })
		t.Logf("MEASURE libvirtd kill -> driver reconnected %v (includes restarting libvirtd)", time.Since(t0).Round(time.Millisecond))
		doms, err := l.d.List(l.ctx(30 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var found bool
		for _, dom := range doms {
			if dom.ID == a {
				found = true
				if dom.State != driver.StateRunning || dom.PID != pidA {
					t.Fatalf("after libvirtd restart: %+v (pid was %d)", dom, pidA)
				}
			}
		}
		if !found {
			t.Fatalf("VM missing from List after reconnect: %+v", doms)
		}
		seq := ma.Latest().Seq
		o := waitHB(t, ma, "still the same boot", func(o guest.Observation) bool { return o.Seq > seq+1 })
		if o.Boot != bootA {
			t.Fatalf("guest rebooted across libvirtd restart: %s -> %s", bootA, o.Boot)
		}
	})

	t.Run("a new driver (agent restart) re-adopts without restarting", func(t *testing.T) {
		d2, err := driver.Open(l.ctx(time.Minute), l.cfg)
		if err != nil {
			t.Fatal(err)
		}
		dom, err := d2.Get(l.ctx(30*time.Second), a)
		if err != nil {
			t.Fatal(err)
		}
		if dom.State != driver.StateRunning || dom.PID != pidA || dom.Meta.ID != a {
			t.Fatalf("second driver sees %+v (pid was %d)", dom, pidA)
		}
		d2.Close()
		seq := ma.Latest().Seq
		if o := waitHB(t, ma, "after second driver", func(o guest.Observation) bool { return o.Seq > seq }); o.Boot != bootA {
			t.Fatalf("guest rebooted: %s -> %s", bootA, o.Boot)
		}
	})

	t.Run("ACPI shutdown, events flow after reconnect", func(t *testing.T) {
		from := l.mark()
		t0 := time.Now()
		forced, err := l.d.Shutdown(l.ctx(2*time.Minute), a, time.Minute)
		if err != nil || forced {
			t.Fatalf("Shutdown = forced %v, %v", forced, err)
		}
		t.Logf("MEASURE ACPI shutdown %v", time.Since(t0).Round(time.Millisecond))
		ev := l.waitEvent(t, from, "stopped", func(ev driver.Event) bool { return ev.ID == a && ev.Type == driver.EventStopped })
		if ev.Unexpected || ev.Reason != "shutdown" {
			t.Fatalf("stopped event %+v, want reason shutdown", ev)
		}
		if dom := l.get(t, a); dom.State != driver.StateShutoff || dom.Reason != "shutdown" {
			t.Fatalf("after shutdown: %s/%s", dom.State, dom.Reason)
		}
		if forced, err := l.d.Shutdown(l.ctx(time.Minute), a, time.Second); err != nil || forced {
			t.Fatalf("Shutdown of a stopped VM = %v, %v", forced, err)
		}
		if err := l.d.Destroy(l.ctx(time.Minute), a); err != nil {
			t.Fatalf("Destroy of a stopped VM: %v", err)
		}
	})

	// Two guests at once: b ignores ACPI and stops feeding its watchdog; c panics.
	b, c := l.prefix+"b", l.prefix+"c"
	t.Run("watchdog, forced shutdown, guest panic", func(t *testing.T) {
		sb := l.spec("b", "plasma.ignore_acpi=1", "plasma.wdt=2", "plasma.wdt_stop_after=3")
		sb.Watchdog = driver.WatchdogReset
		sc := l.spec("c", "plasma.panic_after=3")
		for _, s := range []driver.Spec{sb, sc} {
			if err := l.d.Define(l.ctx(time.Minute), s); err != nil {
				t.Fatal(err)
			}
		}
		mb, mc := l.monitor(l.t, b), l.monitor(l.t, c)
		from := l.mark()
		for _, id := range []string{b, c} {
			if err := l.d.Start(l.ctx(time.Minute), id); err != nil {
				t.Fatal(err)
			}
		}
		t0 := time.Now()
		ob := waitHB(t, mb, "b boots", func(guest.Observation) bool { return true })
		ev := l.waitEvent(t, from, "watchdog", func(ev driver.Event) bool { return ev.ID == b && ev.Type == driver.EventWatchdog })
		if ev.Reason != "reset" {
			t.Fatalf("watchdog event %+v, want action reset", ev)
		}
		waitHB(t, mb, "b after watchdog reset", newBoot(ob.Boot))
		t.Logf("MEASURE watchdog fired and b rebooted %v after start", time.Since(t0).Round(time.Millisecond))

		ev = l.waitEvent(t, from, "crashed", func(ev driver.Event) bool { return ev.ID == c && ev.Type == driver.EventCrashed })
		if ev.Reason != "panicked" || !ev.Unexpected {
			t.Fatalf("panic event %+v", ev)
		}
		ev = l.waitEvent(t, from, "stopped after panic", func(ev driver.Event) bool { return ev.ID == c && ev.Type == driver.EventStopped })
		if !ev.Unexpected || ev.Reason != "crashed" {
			t.Fatalf("stop after panic %+v", ev)
		}
		if o := mc.Latest(); o.Seq < 3 {
			t.Fatalf("c panicked before its third heartbeat: %+v", o)
		}
		if dom := l.get(t, c); dom.Running() {
			t.Fatalf("libvirt restarted the panicked VM: %+v", dom)
		}

		t1 := time.Now()
		forced, err := l.d.Shutdown(l.ctx(time.Minute), b, 3*time.Second)
		if err != nil || !forced {
			t.Fatalf("Shutdown of a guest ignoring ACPI = forced %v, %v", forced, err)
		}
		t.Logf("MEASURE forced shutdown (3 s timeout) %v", time.Since(t1).Round(time.Millisecond))
		if dom := l.get(t, b); dom.State != driver.StateShutoff || dom.Reason != "destroyed" {
			t.Fatalf("after forced shutdown: %s/%s", dom.State, dom.Reason)
		}
	})

	t.Run("undefine removes domains and their files", func(t *testing.T) {
		for _, id := range []string{a, b, c} {
			from := l.mark()
			if err := l.d.Undefine(l.ctx(time.Minute), id); err != nil {
				t.Fatal(err)
			}
			l.waitEvent(t, from, "undefined", func(ev driver.Event) bool { return ev.ID == id && ev.Type == driver.EventUndefined })
			if _, err := l.d.Get(l.ctx(time.Minute), id); !errors.Is(err, driver.ErrNotFound) {
				t.Fatalf("Get after Undefine: %v", err)
			}
			if _, err := os.Stat(l.d.Paths(id).Dir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("state dir left: %v", err)
			}
			if err := l.d.Undefine(l.ctx(time.Minute), id); err != nil {
				t.Fatalf("second Undefine: %v", err)
			}
		}
		doms, err := l.d.List(l.ctx(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		for _, dom := range doms {
			if strings.HasPrefix(dom.ID, l.prefix) {
				t.Fatalf("left over: %+v", dom)
			}
		}
		if err := l.d.Start(l.ctx(time.Minute), a); !errors.Is(err, driver.ErrNotFound) {
			t.Fatalf("Start of an undefined VM: %v, want ErrNotFound", err)
		}
		if out, err := exec.Command("virsh", "-c", "qemu:///system", "list", "--all", "--name").Output(); err != nil || strings.Contains(string(out), l.prefix) {
			t.Fatalf("virsh still lists test domains: %s %v", out, err)
		}
	})
}
