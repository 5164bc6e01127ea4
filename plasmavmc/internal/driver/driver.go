// Package driver is the hypervisor layer of a PlasmaVMC host: the small interface the agent
// converges VMs through, and its production implementation over libvirt (go-libvirt, QEMU
// driver).
//
// The driver only does what it is told. It never restarts a VM by itself — domains are defined
// with on_crash and on_poweroff set to destroy, and a killed QEMU stays dead — so that the agent
// alone decides, by policy, what happens after a crash. Every VM is identified by PlasmaVMC's VM
// id; its libvirt domain is named DomainPrefix+id and carries a <metadata> element with the id,
// name and spec generation, which is how List tells PlasmaVMC's domains from any others and how
// a restarted agent re-adopts what is running.
package driver

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// Errors returned by Driver methods, wrapped with the VM id and the cause.
var (
	// ErrNotFound: no domain for this VM id.
	ErrNotFound = errors.New("driver: domain not found")
	// ErrInvalidSpec: the Spec cannot be turned into a domain; the message names the field.
	ErrInvalidSpec = errors.New("driver: invalid spec")
	// ErrRunning: the operation needs a stopped domain (Undefine).
	ErrRunning = errors.New("driver: domain is running")
	// ErrNotRunning: the operation needs a running domain (Reboot, QMP).
	ErrNotRunning = errors.New("driver: domain is not running")
	// ErrDisconnected: the hypervisor cannot be reached right now; the driver is reconnecting.
	// Callers retry with backoff.
	ErrDisconnected = errors.New("driver: hypervisor disconnected")
	// ErrClosed: Close was called.
	ErrClosed = errors.New("driver: closed")
	// ErrQMP: QEMU answered a QMP command with an error (its class and description follow).
	ErrQMP = errors.New("driver: QMP error")
	// ErrMigration: a live migration started and failed or was aborted; libvirt's reason and
	// where the domain is now follow (Migrator).
	ErrMigration = errors.New("driver: migration failed")
)

// Driver runs VMs on one host. Implementations are safe for concurrent use. Methods that take a
// context return when it ends even if the hypervisor does not answer (the call may still take
// effect later: callers converge again rather than assume either outcome).
//
// Mutating calls are idempotent where that makes sense: Define replaces the definition, Start of a
// running VM, Destroy of a stopped one and Undefine of an unknown one succeed.
type Driver interface {
	// Define creates or replaces the persistent definition of spec.ID. A running domain keeps
	// running; the new definition applies from its next start.
	Define(ctx context.Context, spec Spec) error
	// Start boots a defined domain. It returns once QEMU runs, not once the guest is up (watch
	// its heartbeat for that).
	Start(ctx context.Context, id string) error
	// Shutdown asks the guest to power off (ACPI power button), waits up to timeout for the
	// domain to stop, then destroys it. forced says whether the destroy was needed.
	Shutdown(ctx context.Context, id string, timeout time.Duration) (forced bool, err error)
	// Destroy stops the domain at once (QEMU is killed; the guest gets no say).
	Destroy(ctx context.Context, id string) error
	// Reboot asks the guest to reboot through ACPI; QEMU stays up and the guest boots anew (new
	// boot id). Use Reset when the guest does not cooperate.
	Reboot(ctx context.Context, id string) error
	// Reset is a hard reset of a running domain (like the reset button).
	Reset(ctx context.Context, id string) error
	// Undefine removes a stopped domain's definition (ErrRunning while it runs). The VM's state
	// directory (serial log, sockets) is removed with it; disks are storage's business.
	Undefine(ctx context.Context, id string) error
	// List returns PlasmaVMC's domains (those carrying its metadata), running or not.
	List(ctx context.Context) ([]Domain, error)
	// Get returns one domain, or ErrNotFound.
	Get(ctx context.Context, id string) (Domain, error)
	// Events streams lifecycle events of PlasmaVMC's domains and the driver's connection
	// events until ctx ends or the driver is closed, then closes the channel. Each call gets its
	// own channel. A subscriber that falls behind loses events and is then sent an EventResync:
	// on EventResync and EventReconnected the agent lists again instead of trusting the stream.
	Events(ctx context.Context) <-chan Event
	// QMP sends one QMP command (JSON, e.g. {"execute":"query-status"}) to the domain's QEMU
	// through libvirt and returns QEMU's "return" value. QEMU errors are ErrQMP.
	QMP(ctx context.Context, id string, cmd json.RawMessage) (json.RawMessage, error)
	// Paths returns where the driver keeps VM id's files (serial log, heartbeat socket).
	Paths(id string) Paths
	// Close disconnects and ends every Events channel. VMs keep running.
	Close() error
}

// Paths are the host files of one VM, under the driver's state directory.
type Paths struct {
	// Dir holds the VM's files.
	Dir string
	// SerialLog is the guest's serial console (ttyS0), written by QEMU, truncated at each start.
	SerialLog string
	// HeartbeatSocket is the host side of the virtio-serial channel org.plasmacloud.hb; QEMU
	// listens, one reader at a time connects.
	HeartbeatSocket string
}

// State is a domain's run state.
type State string

// States, as libvirt reports them.
const (
	StateRunning      State = "running"
	StatePaused       State = "paused"
	StateShuttingDown State = "shutting-down"
	StateShutoff      State = "shutoff"
	StateCrashed      State = "crashed"
	StateSuspended    State = "pm-suspended"
	StateUnknown      State = "unknown"
)

// Domain is what the hypervisor says about one of PlasmaVMC's VMs.
type Domain struct {
	// ID is PlasmaVMC's VM id (from the metadata).
	ID string
	// Name is the libvirt domain name (DomainPrefix + ID).
	Name string
	// UUID is the libvirt domain UUID.
	UUID string
	// State and Reason: e.g. shutoff/crashed after a killed QEMU, shutoff/shutdown after a guest
	// poweroff, running/booted. Reason is libvirt's, in lower case.
	State  State
	Reason string
	// PID is QEMU's process id, when running and readable from libvirt's run directory (0
	// otherwise). On a fake host it is the PID inside the host's namespace.
	PID int
	// Meta is the PlasmaVMC metadata stored with the definition.
	Meta Metadata
}

// Running reports whether QEMU runs (running or paused).
func (d Domain) Running() bool {
	return d.State == StateRunning || d.State == StatePaused || d.State == StateShuttingDown
}

// Metadata is PlasmaVMC's own element in the domain's <metadata>.
type Metadata struct {
	ID         string
	Name       string
	Generation int64
	Labels     map[string]string
}

// EventType says what happened.
type EventType string

// Event types.
const (
	// EventStarted: QEMU started (booted, restored, or the incoming side of a migration).
	EventStarted EventType = "started"
	// EventStopped: QEMU is gone. Reason says why; Unexpected is set for crashed/failed (a
	// killed QEMU, a guest panic with on_crash=destroy).
	EventStopped EventType = "stopped"
	// EventShutdown: the guest powered off (or libvirt is finishing a shutdown); EventStopped
	// follows.
	EventShutdown EventType = "shutdown"
	// EventCrashed: the guest panicked (pvpanic); EventStopped with reason crashed follows.
	EventCrashed EventType = "crashed"
	// EventWatchdog: the guest's i6300esb watchdog fired; Reason is the action taken.
	EventWatchdog EventType = "watchdog"
	// EventReboot: the guest rebooted inside the same QEMU.
	EventReboot EventType = "reboot"
	// EventSuspended and EventResumed: paused and resumed (also around migrations).
	EventSuspended EventType = "suspended"
	EventResumed   EventType = "resumed"
	// EventDefined and EventUndefined: the definition was created/updated or removed.
	EventDefined   EventType = "defined"
	EventUndefined EventType = "undefined"
	// EventDisconnected: the connection to the hypervisor was lost; the driver redials.
	EventDisconnected EventType = "disconnected"
	// EventReconnected: connected again. Events in between were lost: list and reconcile.
	EventReconnected EventType = "reconnected"
	// EventResync: this subscriber fell behind and lost events: list and reconcile.
	EventResync EventType = "resync"
)

// Event is one thing that happened to a domain or to the driver's connection.
type Event struct {
	Type EventType
	// ID is the VM id (empty for connection and resync events).
	ID string
	// Reason details the event, e.g. "crashed", "failed", "destroyed", "shutdown", "panicked",
	// "booted", "migrated", or a watchdog action ("reset", "poweroff").
	Reason string
	// Unexpected marks a stop nobody asked for (QEMU died or the guest crashed).
	Unexpected bool
	// Time is when the driver received it.
	Time time.Time
}
