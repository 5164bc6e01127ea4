package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"plasmacloud.dev/plasmavmc/internal/driver"
)

// The watchdog (`plasmavmc-agent watchdog`, one per host, like Proxmox's watchdog-mux) is
// the self-fence that does not depend on the agent: the agent pets it after every lease
// renewal with how long the lease is still safely valid; when that runs out without a
// newer pet (the agent hung, was SIGSTOPped, crashed and did not come back, or is cut
// off from ChainFire) it destroys every HA domain of its host on its libvirtd. It runs
// apart from the agent (started detached, or by its own service unit), so restarting
// the agent never fences: the new agent pets it before the old validity runs out.
//
// Files in the state directory: watchdog.sock (the pet socket), watchdog.pid (its pid,
// flock'ed: one watchdog per state directory), fenced (one JSON line per self-fence,
// appended by the watchdog and the agent: time, by, reason, destroyed domains).

// Watchdog file names in the state directory.
const (
	WatchdogSocketName = "watchdog.sock"
	WatchdogPIDName    = "watchdog.pid"
	WatchdogLogName    = "watchdog.log"
	FencedFileName     = "fenced"
)

// ErrWatchdogRunning is returned by [RunWatchdog] when another watchdog holds the state
// directory's pid file.
var ErrWatchdogRunning = errors.New("agent: a watchdog already runs for this state directory")

// WatchdogConfig configures [RunWatchdog].
type WatchdogConfig struct {
	// StateDir is the agent's state directory (absolute; the socket path must fit in 107
	// bytes). Required.
	StateDir string
	// LibvirtSocket is libvirtd's socket (default DefaultLibvirtSocket).
	LibvirtSocket string
	// HostName: only HA domains of this host (HostLabel, or LabelMigrationTarget while
	// coming in) are destroyed, so fake hosts may share a libvirtd. Required.
	HostName string
	// Hypervisor, when set, is used instead of connecting to LibvirtSocket (tests).
	Hypervisor Hypervisor
	// Logger receives everything (nil discards).
	Logger *slog.Logger
}

// wdTimer is the watchdog's timing logic, without clocks or goroutines: a pet at now
// with remaining validity r arms it to expire at now+r (a later pet always replaces the
// deadline, shorter or longer: the agent's latest word is the truth); Check at now says
// whether it expired, which disarms it until the next pet. Not safe for concurrent use.
type wdTimer struct {
	armed    bool
	deadline time.Time
	lastPet  time.Time
	pets     int64
}

// Pet arms the timer to expire remaining after now (at once when remaining <= 0) and
// returns the time left.
func (t *wdTimer) Pet(now time.Time, remaining time.Duration) time.Duration {
	t.armed, t.deadline, t.lastPet = true, now.Add(max(remaining, 0)), now
	t.pets++
	return max(remaining, 0)
}

// Check reports whether the timer expired by now (disarming it) and otherwise how long
// until it does (0 and false when disarmed: nothing to wait for).
func (t *wdTimer) Check(now time.Time) (expired bool, left time.Duration) {
	if !t.armed {
		return false, 0
	}
	if !now.Before(t.deadline) {
		t.armed = false
		return true, 0
	}
	return false, t.deadline.Sub(now)
}

// Remaining is the time left before expiry (0 when disarmed or expired).
func (t *wdTimer) Remaining(now time.Time) time.Duration {
	if !t.armed {
		return 0
	}
	return max(t.deadline.Sub(now), 0)
}

// wdRequest is one line an agent sends to the watchdog: a pet (PetMS set: remaining
// validity in milliseconds) or a status query.
type wdRequest struct {
	PetMS    *int64 `json:"pet_ms,omitempty"`
	Instance string `json:"instance,omitempty"`
	Status   bool   `json:"status,omitempty"`
}

// WatchdogStatus is the watchdog's answer to every request.
type WatchdogStatus struct {
	// State: "idle" (no pet since start or since the last fence), "armed", "fencing".
	State       string `json:"state"`
	RemainingMS int64  `json:"remaining_ms"`
	Pets        int64  `json:"pets"`
	Fences      int64  `json:"fences"`
	LastFence   string `json:"last_fence,omitempty"`
	PID         int    `json:"pid"`
	Instance    string `json:"instance,omitempty"` // of the last pet
}

// FenceRecord is one line of the fenced file.
type FenceRecord struct {
	Time      time.Time `json:"time"`
	By        string    `json:"by"` // "watchdog" or "agent"
	Host      string    `json:"host"`
	Reason    string    `json:"reason"`
	Destroyed []string  `json:"destroyed"`
	TookMS    int64     `json:"took_ms"`
}

// appendFenceRecord appends r to dir's fenced file (best effort: the log has it too).
func appendFenceRecord(dir string, r FenceRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, FencedFileName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// ReadFenceRecords reads dir's fenced file (none: nil, nil).
func ReadFenceRecords(dir string) ([]FenceRecord, error) {
	f, err := os.Open(filepath.Join(dir, FencedFileName))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []FenceRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r FenceRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err == nil {
			out = append(out, r)
		}
	}
	return out, sc.Err()
}

// fenceDomains destroys every running HA domain of host on hv (see fenceable), listing
// again until a list shows none, retrying with backoff (100 ms to 2 s) on any error,
// until done or ctx ends. It returns the VM ids it destroyed.
//
// Speed matters (the fence must be complete before the controller restarts the VMs
// elsewhere, and libvirt's destroy of a QEMU takes about 2 s): each QEMU is first
// SIGKILLed by its pid when the pid is known and /proc confirms it is that domain's QEMU,
// then every domain is destroyed through libvirt in parallel (the cleanup, and the
// fence itself when the pid is not usable).
func fenceDomains(ctx context.Context, hv Hypervisor, host string, log *slog.Logger) []string {
	var destroyed []string
	seen := map[string]bool{}
	bo := 100 * time.Millisecond
	for attempt := 1; ctx.Err() == nil; attempt++ {
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		doms, err := hv.List(lctx)
		cancel()
		if err == nil {
			var targets []driver.Domain
			for _, d := range doms {
				if fenceable(d, host) {
					targets = append(targets, d)
				}
			}
			if len(targets) == 0 {
				return destroyed
			}
			for _, d := range targets {
				if killQEMU(d) {
					log.Warn("self-fence: QEMU killed", "vm", d.ID, "pid", d.PID)
				}
			}
			errs := make([]error, len(targets))
			var wg sync.WaitGroup
			for i, d := range targets {
				wg.Add(1)
				go func() {
					defer wg.Done()
					dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
					defer cancel()
					began := time.Now()
					if err := hv.Destroy(dctx, d.ID); err != nil && !errors.Is(err, driver.ErrNotFound) {
						errs[i] = err
						return
					}
					log.Warn("self-fence: HA domain destroyed", "vm", d.ID, "name", d.Meta.Name, "took", time.Since(began))
				}()
			}
			wg.Wait()
			for i, d := range targets {
				if errs[i] != nil {
					err = errs[i]
				} else if !seen[d.ID] {
					seen[d.ID] = true
					destroyed = append(destroyed, d.ID)
				}
			}
			if err == nil {
				continue // list again: nothing may have started meanwhile
			}
		}
		if attempt == 1 || attempt%10 == 0 {
			log.Error("self-fence: destroying HA domains failed; retrying", "attempt", attempt, "err", err)
		}
		sleepCtx(ctx, bo)
		bo = min(2*bo, 2*time.Second)
	}
	return destroyed
}

// killQEMU SIGKILLs d's QEMU when d.PID is a process whose command line names d's
// domain (-name guest=<domain>): never another process that reused the pid, nor one of
// a fake hypervisor. It reports whether it sent the signal.
func killQEMU(d driver.Domain) bool {
	if d.PID <= 1 || d.Name == "" {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", d.PID))
	if err != nil || !strings.Contains(string(b), "guest="+d.Name) {
		return false
	}
	return syscall.Kill(d.PID, syscall.SIGKILL) == nil
}

// RunWatchdog runs the watchdog of cfg.StateDir until ctx ends: it takes the pid file
// (ErrWatchdogRunning when another watchdog has it), listens on the socket, connects to
// libvirtd (retrying) and fences when a pet's validity runs out (see the top of this
// file). After a fence it waits for pets again. Each connection may carry any number of
// request lines, each answered with one WatchdogStatus line.
func RunWatchdog(ctx context.Context, cfg WatchdogConfig) error {
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return fmt.Errorf("%w: watchdog state directory %q must be an absolute path", ErrConfig, cfg.StateDir)
	}
	if !nameRE.MatchString(cfg.HostName) {
		return fmt.Errorf("%w: watchdog host name %q", ErrConfig, cfg.HostName)
	}
	if cfg.LibvirtSocket == "" {
		cfg.LibvirtSocket = DefaultLibvirtSocket
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "watchdog", "host", cfg.HostName)
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("agent: watchdog: %w", err)
	}
	pidf, err := os.OpenFile(filepath.Join(cfg.StateDir, WatchdogPIDName), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("agent: watchdog pid file: %w", err)
	}
	defer pidf.Close()
	if err := syscall.Flock(int(pidf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(pidf.Name())
		return fmt.Errorf("%w (pid %s)", ErrWatchdogRunning, string(b))
	}
	_ = pidf.Truncate(0)
	_, _ = pidf.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	defer func() { _ = pidf.Truncate(0) }() // still locked: no stale pid is left behind

	sock := filepath.Join(cfg.StateDir, WatchdogSocketName)
	_ = os.Remove(sock) // stale: we hold the lock, so no watchdog listens on it
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return fmt.Errorf("agent: watchdog socket: %w", err)
	}
	defer func() { _ = os.Remove(sock) }()

	w := &watchdog{cfg: cfg, log: log, pid: os.Getpid(), petted: make(chan struct{}, 1)}
	hv := cfg.Hypervisor
	hvReady := make(chan Hypervisor, 1)
	if hv != nil {
		hvReady <- hv
	} else {
		go func() {
			d, err := driver.Open(ctx, driver.Config{Socket: cfg.LibvirtSocket, StateDir: cfg.StateDir,
				Log: log.With("component", "watchdog-driver")})
			if err != nil {
				if ctx.Err() == nil {
					log.Error("watchdog cannot use libvirtd", "err", err)
				}
				return
			}
			hvReady <- d
			<-ctx.Done()
			d.Close()
		}()
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.serve(ctx, ln)
	}()
	log.Info("watchdog started", "pid", w.pid, "socket", sock, "libvirt_socket", cfg.LibvirtSocket)
	w.loop(ctx, hvReady)
	ln.Close()
	wg.Wait()
	log.Info("watchdog stopped")
	return nil
}

// watchdog is RunWatchdog's state: the timer and counters under mu, read by the
// connection handlers and changed by pets and the fence loop.
type watchdog struct {
	cfg    WatchdogConfig
	log    *slog.Logger
	pid    int
	petted chan struct{} // capacity 1: wakes loop after a pet

	mu        sync.Mutex
	t         wdTimer
	fencing   bool
	fences    int64
	lastFence string
	instance  string
}

func (w *watchdog) status(now time.Time) WatchdogStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	st := WatchdogStatus{State: "idle", RemainingMS: w.t.Remaining(now).Milliseconds(), Pets: w.t.pets,
		Fences: w.fences, LastFence: w.lastFence, PID: w.pid, Instance: w.instance}
	switch {
	case w.fencing:
		st.State = "fencing"
	case w.t.armed:
		st.State = "armed"
	}
	return st
}

// serve accepts connections until ctx ends.
func (w *watchdog) serve(ctx context.Context, ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			w.log.Warn("watchdog accept failed", "err", err)
			sleepCtx(ctx, 100*time.Millisecond)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.handle(ctx, c)
		}()
	}
}

// handle answers one connection's requests.
func (w *watchdog) handle(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	sc := bufio.NewScanner(c)
	enc := json.NewEncoder(c)
	for sc.Scan() {
		var req wdRequest
		if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
			return
		}
		now := time.Now()
		if req.PetMS != nil {
			w.mu.Lock()
			first := !w.t.armed
			w.t.Pet(now, time.Duration(*req.PetMS)*time.Millisecond)
			prev := w.instance
			w.instance = req.Instance
			w.mu.Unlock()
			if first || prev != req.Instance {
				w.log.Info("watchdog armed", "instance", req.Instance, "remaining", time.Duration(*req.PetMS)*time.Millisecond)
			}
			select {
			case w.petted <- struct{}{}:
			default:
			}
		}
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := enc.Encode(w.status(now)); err != nil {
			return
		}
	}
}

// loop waits for the timer to expire and fences, until ctx ends.
func (w *watchdog) loop(ctx context.Context, hvReady <-chan Hypervisor) {
	var hv Hypervisor
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := time.Now()
		w.mu.Lock()
		expired, left := w.t.Check(now)
		var since time.Duration
		if expired {
			w.fencing = true
			since = now.Sub(w.t.lastPet)
		}
		w.mu.Unlock()
		if expired {
			if hv == nil {
				w.log.Error("watchdog expired; waiting for libvirtd to fence")
				select {
				case <-ctx.Done():
					return
				case hv = <-hvReady:
				}
			}
			w.fence(ctx, hv, fmt.Sprintf("watchdog expired: no valid pet (last %v ago); the agent could not renew the host's lease in time", since.Round(time.Millisecond)))
			continue
		}
		if left <= 0 {
			left = time.Hour
		}
		timer.Reset(left)
		select {
		case <-ctx.Done():
			return
		case hv = <-hvReady:
			hvReady = nil
		case <-w.petted:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// fence destroys the host's HA domains (retrying until done) and records it.
func (w *watchdog) fence(ctx context.Context, hv Hypervisor, reason string) {
	start := time.Now()
	w.log.Error("SELF-FENCE: destroying this host's HA domains", "reason", reason)
	destroyed := fenceDomains(ctx, hv, w.cfg.HostName, w.log)
	took := time.Since(start)
	rec := FenceRecord{Time: start, By: "watchdog", Host: w.cfg.HostName, Reason: reason, Destroyed: destroyed, TookMS: took.Milliseconds()}
	if err := appendFenceRecord(w.cfg.StateDir, rec); err != nil {
		w.log.Error("cannot record the self-fence", "err", err)
	}
	w.log.Error("SELF-FENCE done; waiting for pets", "destroyed", destroyed, "took", took)
	w.mu.Lock()
	w.fencing = false
	w.fences++
	w.lastFence = start.Format(time.RFC3339Nano) + ": " + reason
	w.mu.Unlock()
}

// ---------------------------------------------------------------------------------------
// The agent's side: pets and starting the watchdog.

// QueryWatchdog asks the watchdog of stateDir for its status (pet: nil) or pets it with
// remaining validity.
func QueryWatchdog(ctx context.Context, stateDir string, pet *time.Duration, instance string) (WatchdogStatus, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", filepath.Join(stateDir, WatchdogSocketName))
	if err != nil {
		return WatchdogStatus{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	return wdCall(c, pet, instance)
}

func wdCall(c net.Conn, pet *time.Duration, instance string) (WatchdogStatus, error) {
	req := wdRequest{Instance: instance, Status: pet == nil}
	if pet != nil {
		ms := pet.Milliseconds()
		req.PetMS = &ms
	}
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return WatchdogStatus{}, err
	}
	var st WatchdogStatus
	line, err := bufio.NewReader(c).ReadBytes('\n')
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(line, &st)
}

// petter pets the host's watchdog with the lease's validity, starting the watchdog when
// it does not answer. set records a new validity; run (one goroutine) sends it.
type petter struct {
	a    *agent
	kick chan struct{}

	mu         sync.Mutex
	validUntil time.Time
	instance   string
}

func newPetter(a *agent) *petter { return &petter{a: a, kick: make(chan struct{}, 1)} }

// set records that the lease of instance is valid until validUntil (the watchdog is
// told validUntil - FenceMargin - now) and wakes run.
func (p *petter) set(validUntil time.Time, instance string) {
	p.mu.Lock()
	p.validUntil, p.instance = validUntil, instance
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// run sends each new validity to the watchdog until ctx ends. A watchdog that does not
// answer is started (detached) and the pet retried.
func (p *petter) run(ctx context.Context) {
	var conn net.Conn
	var lastSpawn time.Time
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	log := p.a.log.With("component", "watchdog-client")
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		for ctx.Err() == nil {
			p.mu.Lock()
			until, inst := p.validUntil, p.instance
			p.mu.Unlock()
			remaining := time.Until(until) - p.a.cfg.FenceMargin
			if conn == nil {
				c, err := net.DialTimeout("unix", filepath.Join(p.a.cfg.StateDir, WatchdogSocketName), time.Second)
				if err != nil {
					if time.Since(lastSpawn) > 5*time.Second {
						lastSpawn = time.Now()
						if err := p.spawn(); err != nil {
							log.Error("cannot start the watchdog", "err", err)
						} else {
							log.Info("watchdog started", "command", p.command())
						}
					}
					failures++
					if failures == 1 || failures%20 == 0 {
						log.Warn("watchdog not answering; retrying", "err", err, "attempt", failures)
					}
					sleepCtx(ctx, 100*time.Millisecond)
					continue
				}
				conn = c
			}
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			st, err := wdCall(conn, &remaining, inst)
			if err != nil {
				conn.Close()
				conn = nil
				failures++
				continue
			}
			if failures > 0 {
				log.Info("watchdog answering", "pid", st.PID, "state", st.State)
			}
			failures = 0
			p.a.m.watchdogPets.Inc()
			break
		}
	}
}

func (p *petter) command() []string {
	argv := p.a.cfg.WatchdogCommand
	if len(argv) == 0 {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		argv = []string{exe, "watchdog"}
	}
	return append(append([]string(nil), argv...), "--state-dir", p.a.cfg.StateDir,
		"--libvirt-socket", p.a.cfg.LibvirtSocket, "--host-name", p.a.cfg.HostName)
}

// spawn starts the watchdog in its own session (it outlives the agent), its output
// appended to watchdog.log in the state directory.
func (p *petter) spawn() error {
	argv := p.command()
	if err := os.MkdirAll(p.a.cfg.StateDir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(p.a.cfg.StateDir, WatchdogLogName), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return err
	}
	defer devnull.Close()
	proc, err := os.StartProcess(argv[0], argv, &os.ProcAttr{
		Dir:   "/",
		Files: []*os.File{devnull, logf, logf},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return err
	}
	go func() { _, _ = proc.Wait() }() // reap it should it exit while we run
	return nil
}
