package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	libvirt "github.com/digitalocean/go-libvirt"
	"github.com/digitalocean/go-libvirt/socket/dialers"
)

// Config configures a Libvirt driver. Zero fields take the defaults named on each.
type Config struct {
	// Socket is libvirtd's unix socket (default /run/libvirt/libvirt-sock). A fake host's is
	// /tmp/plasma-hosts/NAME/run/libvirt-sock (scripts/libvirt.sh host).
	Socket string
	// URI is the libvirt URI opened over the socket (default qemu:///system).
	URI string
	// StateDir holds one directory per VM (serial log, heartbeat socket). Required, absolute,
	// and short: unix socket paths are limited to 107 bytes.
	StateDir string
	// RunDir is libvirt's QEMU run directory, where it keeps <domain>.pid (default
	// /run/libvirt/qemu).
	RunDir string
	// Accel forces the accelerator; empty probes the host (ProbeAccel).
	Accel Accel
	// DialTimeout bounds one connection attempt, including libvirtd's first capability probe
	// (default 30 s).
	DialTimeout time.Duration
	// RedialMin and RedialMax bound the backoff between connection attempts (defaults 100 ms
	// and 5 s).
	RedialMin, RedialMax time.Duration
	// ShutdownRetry is how often Shutdown presses the ACPI button again while waiting (a guest
	// still booting misses it; default 5 s).
	ShutdownRetry time.Duration
	// Log receives connection changes and operations (nil discards).
	Log *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Socket == "" {
		c.Socket = "/run/libvirt/libvirt-sock"
	}
	if c.URI == "" {
		c.URI = string(libvirt.QEMUSystem)
	}
	if c.RunDir == "" {
		c.RunDir = "/run/libvirt/qemu"
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 30 * time.Second
	}
	if c.RedialMin <= 0 {
		c.RedialMin = 100 * time.Millisecond
	}
	if c.RedialMax <= 0 {
		c.RedialMax = 5 * time.Second
	}
	if c.ShutdownRetry <= 0 {
		c.ShutdownRetry = 5 * time.Second
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("driver: state directory %q must be an absolute path", c.StateDir)
	}
	if c.Accel != "" && c.Accel != AccelTCG && c.Accel != AccelKVM {
		return fmt.Errorf("driver: accelerator %q (want %q or %q)", c.Accel, AccelTCG, AccelKVM)
	}
	return nil
}

// Libvirt is the Driver over libvirtd's RPC protocol (go-libvirt).
//
// It owns one connection at a time. When libvirtd goes away (killed, restarted), a supervisor
// goroutine notices through go-libvirt's Disconnected channel, publishes EventDisconnected,
// redials with exponential backoff, re-subscribes to events and publishes EventReconnected.
// Running QEMUs are not touched: libvirtd re-attaches to them when it restarts, and List shows
// them again. Calls made while disconnected fail at once with ErrDisconnected.
type Libvirt struct {
	cfg   Config
	accel Accel
	log   *slog.Logger
	hub   hub

	mu   sync.RWMutex
	conn *libvirt.Libvirt // nil while disconnected

	ctx    context.Context // ends on Close
	cancel context.CancelFunc
	done   chan struct{} // closed when the supervisor has stopped
}

var _ Driver = (*Libvirt)(nil)

// Open connects to libvirtd, retrying with backoff until it answers or ctx ends, and starts the
// supervisor that keeps the connection. Close releases it.
func Open(ctx context.Context, cfg Config) (*Libvirt, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	d := &Libvirt{cfg: cfg, log: cfg.Log.With("libvirt_socket", cfg.Socket), done: make(chan struct{})}
	d.accel = cfg.Accel
	if d.accel == "" {
		var why string
		d.accel, why = ProbeAccel()
		d.log.Info("accelerator chosen", "accel", d.accel, "why", why)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("driver: state directory: %w", err)
	}
	conn, err := d.dialLoop(ctx)
	if err != nil {
		return nil, err
	}
	d.conn = conn
	d.ctx, d.cancel = context.WithCancel(context.Background())
	go d.supervise(conn)
	return d, nil
}

// Accel returns the accelerator domains are defined with.
func (d *Libvirt) Accel() Accel { return d.accel }

// Connected reports whether the driver holds a live connection now.
func (d *Libvirt) Connected() bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.conn != nil && d.conn.IsConnected()
}

func (d *Libvirt) dial() (*libvirt.Libvirt, error) {
	l := libvirt.NewWithDialer(dialers.NewLocal(dialers.WithSocket(d.cfg.Socket), dialers.WithLocalTimeout(d.cfg.DialTimeout)))
	errc := make(chan error, 1)
	go func() { errc <- l.ConnectToURI(libvirt.ConnectURI(d.cfg.URI)) }()
	select {
	case err := <-errc:
		if err != nil {
			return nil, err
		}
		return l, nil
	case <-time.After(d.cfg.DialTimeout):
		go func() {
			if <-errc == nil {
				l.Disconnect()
			}
		}()
		return nil, fmt.Errorf("no answer in %v", d.cfg.DialTimeout)
	}
}

// dialLoop dials until it succeeds or ctx ends, backing off between attempts.
func (d *Libvirt) dialLoop(ctx context.Context) (*libvirt.Libvirt, error) {
	wait := d.cfg.RedialMin
	for attempt := 1; ; attempt++ {
		l, err := d.dial()
		if err == nil {
			return l, nil
		}
		if attempt == 1 || attempt%10 == 0 {
			d.log.Warn("libvirtd not reachable, retrying", "attempt", attempt, "err", err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w: %s: %v (last error: %v)", ErrDisconnected, d.cfg.Socket, ctx.Err(), err)
		case <-t.C:
		}
		wait = min(wait*2, d.cfg.RedialMax)
	}
}

// supervise owns the connection: it pumps its events, and when it is lost, redials.
func (d *Libvirt) supervise(conn *libvirt.Libvirt) {
	defer close(d.done)
	for {
		evCtx, stopEvents := context.WithCancel(d.ctx)
		if err := d.subscribe(evCtx, conn); err != nil && conn.IsConnected() {
			d.log.Error("subscribing to libvirt events failed; reconnecting", "err", err)
			conn.Disconnect()
		}
		select {
		case <-d.ctx.Done():
			stopEvents()
			conn.Disconnect()
			return
		case <-conn.Disconnected():
		}
		stopEvents()
		d.mu.Lock()
		d.conn = nil
		d.mu.Unlock()
		lost := time.Now()
		d.log.Warn("libvirtd connection lost; redialing")
		d.hub.publish(Event{Type: EventDisconnected, Time: lost})

		next, err := d.dialLoop(d.ctx)
		if err != nil { // closed
			return
		}
		d.mu.Lock()
		d.conn = next
		d.mu.Unlock()
		conn = next
		d.log.Info("libvirtd reconnected", "after", time.Since(lost).Round(time.Millisecond))
		d.hub.publish(Event{Type: EventReconnected, Time: time.Now()})
	}
}

// subscribe starts the goroutines that turn conn's lifecycle, watchdog and reboot events into
// Events until ctx ends or the connection drops.
func (d *Libvirt) subscribe(ctx context.Context, conn *libvirt.Libvirt) error {
	life, err := conn.LifecycleEvents(ctx)
	if err != nil {
		return fmt.Errorf("lifecycle events: %w", err)
	}
	go func() {
		for m := range life {
			if ev, ok := lifecycleEvent(m, time.Now()); ok {
				d.hub.publish(ev)
			}
		}
	}()
	wd, err := conn.SubscribeEvents(ctx, libvirt.DomainEventIDWatchdog, libvirt.OptDomain{})
	if err != nil {
		return fmt.Errorf("watchdog events: %w", err)
	}
	go func() {
		for m := range wd {
			w, ok := m.(*libvirt.DomainEventCallbackWatchdogMsg)
			if !ok {
				continue
			}
			id, ok := idOf(w.Msg.Dom.Name)
			if !ok {
				continue
			}
			action := "unknown"
			if a := int(w.Msg.Action); a >= 0 && a < len(watchdogActions) {
				action = watchdogActions[a]
			}
			d.hub.publish(Event{Type: EventWatchdog, ID: id, Reason: action, Unexpected: true, Time: time.Now()})
		}
	}()
	rb, err := conn.SubscribeEvents(ctx, libvirt.DomainEventIDReboot, libvirt.OptDomain{})
	if err != nil {
		return fmt.Errorf("reboot events: %w", err)
	}
	go func() {
		for m := range rb {
			r, ok := m.(*libvirt.DomainEventCallbackRebootMsg)
			if !ok {
				continue
			}
			if id, ok := idOf(r.Msg.Dom.Name); ok {
				d.hub.publish(Event{Type: EventReboot, ID: id, Time: time.Now()})
			}
		}
	}()
	return nil
}

// Close stops the supervisor, disconnects and closes every Events channel. VMs keep running.
func (d *Libvirt) Close() error {
	d.cancel()
	<-d.done
	d.mu.Lock()
	d.conn = nil
	d.mu.Unlock()
	d.hub.mu.Lock()
	subs := make([]*subscriber, 0, len(d.hub.subs))
	for s := range d.hub.subs {
		subs = append(subs, s)
	}
	d.hub.mu.Unlock()
	for _, s := range subs {
		d.hub.unsubscribe(s)
	}
	return nil
}

// Events implements Driver.
func (d *Libvirt) Events(ctx context.Context) <-chan Event {
	s := d.hub.subscribe()
	go func() {
		select {
		case <-ctx.Done():
		case <-d.ctx.Done():
		}
		d.hub.unsubscribe(s)
	}()
	return s.ch
}

// Paths implements Driver.
func (d *Libvirt) Paths(id string) Paths {
	dir := filepath.Join(d.cfg.StateDir, id)
	return Paths{Dir: dir, SerialLog: filepath.Join(dir, "serial.log"), HeartbeatSocket: filepath.Join(dir, "hb.sock")}
}

// connection returns the current connection, or ErrClosed / ErrDisconnected.
func (d *Libvirt) connection(op, id string) (*libvirt.Libvirt, error) {
	if d.ctx.Err() != nil {
		return nil, fmt.Errorf("driver: %s %s: %w", op, id, ErrClosed)
	}
	d.mu.RLock()
	l := d.conn
	d.mu.RUnlock()
	if l == nil || !l.IsConnected() {
		return nil, fmt.Errorf("driver: %s %s: %w", op, id, ErrDisconnected)
	}
	return l, nil
}

// call runs fn on the current connection, returning early when ctx ends (fn may then still
// complete in the background), and maps libvirt's errors to the package's.
func (d *Libvirt) call(ctx context.Context, op, id string, fn func(l *libvirt.Libvirt) error) error {
	l, err := d.connection(op, id)
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- fn(l) }()
	select {
	case err = <-errc:
	case <-ctx.Done():
		return fmt.Errorf("driver: %s %s: %w", op, id, ctx.Err())
	}
	return d.mapErr(l, op, id, err)
}

// mapErr maps an error of a call on l to the package's sentinels (nil stays nil).
func (d *Libvirt) mapErr(l *libvirt.Libvirt, op, id string, err error) error {
	if err == nil {
		return nil
	}
	var sentinel error
	var lerr libvirt.Error
	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrRunning), errors.Is(err, ErrNotRunning),
		errors.Is(err, ErrQMP), errors.Is(err, ErrInvalidSpec):
		return err
	case libvirt.IsNotFound(err):
		sentinel = ErrNotFound
	case !l.IsConnected():
		sentinel = ErrDisconnected
	case errors.As(err, &lerr) && lerr.Code == uint32(libvirt.ErrOperationInvalid):
		sentinel = ErrNotRunning
	default:
		return fmt.Errorf("driver: %s %s: %w", op, id, err)
	}
	return fmt.Errorf("driver: %s %s: %w: %v", op, id, sentinel, err)
}

func lookup(l *libvirt.Libvirt, id string) (libvirt.Domain, error) {
	dom, err := l.DomainLookupByName(DomainName(id))
	if libvirt.IsNotFound(err) {
		return dom, fmt.Errorf("driver: %s: %w", id, ErrNotFound)
	}
	return dom, err
}

func running(l *libvirt.Libvirt, dom libvirt.Domain) (bool, error) {
	st, _, err := l.DomainGetState(dom, 0)
	if err != nil {
		return false, err
	}
	switch libvirt.DomainState(st) {
	case libvirt.DomainShutoff, libvirt.DomainCrashed, libvirt.DomainNostate:
		return false, nil
	}
	return true, nil
}

// Define implements Driver.
func (d *Libvirt) Define(ctx context.Context, spec Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	p := d.Paths(spec.ID)
	if len(p.HeartbeatSocket) > 107 {
		return fmt.Errorf("%w: heartbeat socket path %q is longer than 107 bytes (shorten the state directory)", ErrInvalidSpec, p.HeartbeatSocket)
	}
	x, err := DomainXML(spec, d.accel, p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(p.Dir, 0o755); err != nil {
		return fmt.Errorf("driver: define %s: %w", spec.ID, err)
	}
	return d.call(ctx, "define", spec.ID, func(l *libvirt.Libvirt) error {
		_, err := l.DomainDefineXMLFlags(x, 0)
		return err
	})
}

// Start implements Driver.
func (d *Libvirt) Start(ctx context.Context, id string) error {
	return d.call(ctx, "start", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		if up, err := running(l, dom); err != nil || up {
			return err
		}
		if err := os.MkdirAll(d.Paths(id).Dir, 0o755); err != nil {
			return err
		}
		_, err = l.DomainCreateWithFlags(dom, 0)
		return err
	})
}

// Shutdown implements Driver.
func (d *Libvirt) Shutdown(ctx context.Context, id string, timeout time.Duration) (bool, error) {
	var dom libvirt.Domain
	var up bool
	err := d.call(ctx, "shutdown", id, func(l *libvirt.Libvirt) error {
		var err error
		if dom, err = lookup(l, id); err != nil {
			return err
		}
		if up, err = running(l, dom); err != nil || !up {
			return err
		}
		return l.DomainShutdownFlags(dom, libvirt.DomainShutdownAcpiPowerBtn)
	})
	if err != nil && !errors.Is(err, ErrNotRunning) {
		return false, err
	}
	if !up || errors.Is(err, ErrNotRunning) {
		return false, nil
	}
	deadline := time.Now().Add(timeout)
	lastPress := time.Now()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("driver: shutdown %s: %w", id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		err := d.call(ctx, "shutdown", id, func(l *libvirt.Libvirt) error {
			if up, err = running(l, dom); err != nil || !up {
				return err
			}
			if time.Since(lastPress) >= d.cfg.ShutdownRetry {
				lastPress = time.Now()
				return l.DomainShutdownFlags(dom, libvirt.DomainShutdownAcpiPowerBtn)
			}
			return nil
		})
		switch {
		case errors.Is(err, ErrNotRunning), errors.Is(err, ErrNotFound):
			return false, nil
		case err != nil:
			return false, err
		case !up:
			return false, nil
		}
	}
	d.log.Info("guest ignored ACPI shutdown; destroying", "vm", id, "timeout", timeout)
	if err := d.Destroy(ctx, id); err != nil {
		return true, err
	}
	return true, nil
}

// Destroy implements Driver.
func (d *Libvirt) Destroy(ctx context.Context, id string) error {
	err := d.call(ctx, "destroy", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		return l.DomainDestroyFlags(dom, 0)
	})
	if errors.Is(err, ErrNotRunning) {
		return nil
	}
	return err
}

// Reboot implements Driver.
func (d *Libvirt) Reboot(ctx context.Context, id string) error {
	return d.call(ctx, "reboot", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		return l.DomainReboot(dom, libvirt.DomainRebootAcpiPowerBtn)
	})
}

// Reset implements Driver.
func (d *Libvirt) Reset(ctx context.Context, id string) error {
	return d.call(ctx, "reset", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		return l.DomainReset(dom, 0)
	})
}

// Undefine implements Driver.
func (d *Libvirt) Undefine(ctx context.Context, id string) error {
	err := d.call(ctx, "undefine", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		if up, err := running(l, dom); err != nil {
			return err
		} else if up {
			return fmt.Errorf("driver: undefine %s: %w", id, ErrRunning)
		}
		return l.DomainUndefineFlags(dom, 0)
	})
	if err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	if err := os.RemoveAll(d.Paths(id).Dir); err != nil {
		return fmt.Errorf("driver: undefine %s: %w", id, err)
	}
	return nil
}

// List implements Driver.
func (d *Libvirt) List(ctx context.Context) ([]Domain, error) {
	var out []Domain
	err := d.call(ctx, "list", "", func(l *libvirt.Libvirt) error {
		doms, _, err := l.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive|libvirt.ConnectListDomainsInactive)
		if err != nil {
			return err
		}
		out = out[:0]
		for _, dom := range doms {
			if !strings.HasPrefix(dom.Name, DomainPrefix) {
				continue
			}
			dd, ok, err := d.describe(l, dom)
			if libvirt.IsNotFound(err) {
				continue // undefined meanwhile
			}
			if err != nil {
				return err
			}
			if ok {
				out = append(out, dd)
			}
		}
		return nil
	})
	return out, err
}

// Get implements Driver.
func (d *Libvirt) Get(ctx context.Context, id string) (Domain, error) {
	var out Domain
	err := d.call(ctx, "get", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		dd, ok, err := d.describe(l, dom)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("driver: %s: %w (domain %s has no PlasmaVMC metadata)", id, ErrNotFound, dom.Name)
		}
		out = dd
		return nil
	})
	return out, err
}

// describe reads a domain's metadata and state; ok is false when it is not PlasmaVMC's.
func (d *Libvirt) describe(l *libvirt.Libvirt, dom libvirt.Domain) (Domain, bool, error) {
	x, err := l.DomainGetXMLDesc(dom, 0)
	if err != nil {
		return Domain{}, false, err
	}
	md, ok, err := parseMetadata(x)
	if err != nil || !ok {
		return Domain{}, false, err
	}
	st, reason, err := l.DomainGetState(dom, 0)
	if err != nil {
		return Domain{}, false, err
	}
	out := Domain{ID: md.ID, Name: dom.Name, UUID: formatUUID(dom.UUID), Meta: md}
	out.State, out.Reason = stateOf(st, reason)
	if out.Running() {
		if b, err := os.ReadFile(filepath.Join(d.cfg.RunDir, dom.Name+".pid")); err == nil {
			out.PID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		}
	}
	return out, true, nil
}

func formatUUID(u libvirt.UUID) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// QMP implements Driver.
func (d *Libvirt) QMP(ctx context.Context, id string, cmd json.RawMessage) (json.RawMessage, error) {
	if !json.Valid(cmd) {
		return nil, fmt.Errorf("driver: qmp %s: %w: command is not JSON", id, ErrQMP)
	}
	var reply string
	err := d.call(ctx, "qmp", id, func(l *libvirt.Libvirt) error {
		dom, err := lookup(l, id)
		if err != nil {
			return err
		}
		reply, err = l.QEMUDomainMonitorCommand(dom, string(cmd), 0)
		return err
	})
	if err != nil {
		return nil, err
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Error  *struct {
			Class string `json:"class"`
			Desc  string `json:"desc"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(reply), &r); err != nil {
		return nil, fmt.Errorf("driver: qmp %s: %w: unreadable reply %q", id, ErrQMP, reply)
	}
	if r.Error != nil {
		return nil, fmt.Errorf("driver: qmp %s: %w: %s: %s", id, ErrQMP, r.Error.Class, r.Error.Desc)
	}
	return r.Return, nil
}
