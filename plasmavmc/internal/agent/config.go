package agent

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"regexp"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"

	"plasmacloud.dev/pkg/resilience"
)

// ErrConfig is wrapped by every error of [Config.Validate].
var ErrConfig = errors.New("agent: invalid configuration")

// Defaults of the tunables in [Config].
const (
	DefaultListen            = ":7004"
	DefaultLeaseTTL          = 10 * time.Second
	DefaultReconcileInterval = 10 * time.Second
	DefaultStatusRefresh     = 10 * time.Second
	DefaultHeartbeatMaxAge   = 5 * time.Second
	DefaultRestartBackoff    = 500 * time.Millisecond
	DefaultRestartBackoffMax = 30 * time.Second
	DefaultMaxRestarts       = 5
	DefaultRestartWindow     = 10 * time.Minute
	DefaultStopTimeout       = 60 * time.Second
	DefaultOrphanSweep       = time.Minute
	DefaultFenceMargin       = 2 * time.Second
	// DefaultLibvirtSocket is libvirtd's socket when Config.LibvirtSocket is empty.
	DefaultLibvirtSocket = "/run/libvirt/libvirt-sock"
)

// Config configures one agent ([Run]). Zero tunables take the Default* values.
type Config struct {
	// HostName is this host's name in PlasmaVMC (^[a-z0-9][a-z0-9-]{0,62}$). Required.
	HostName string
	// Listen is HOST:PORT of the health, readiness and metrics endpoint (default :7004);
	// Listener, when set, is used instead (tests).
	Listen   string
	Listener net.Listener

	// ChainFireEndpoints are ChainFire's client URLs. Required.
	ChainFireEndpoints []string
	// ChainFireTLS, when set, is the client TLS (mutual TLS in production) for ChainFire.
	ChainFireTLS *tls.Config
	// WatchBusEndpoints, when set, carry the informer's watch of the assigned VMs; without
	// them the informer watches ChainFire directly. WatchBusOptions are added to the
	// WatchBus client (the bearer-token interceptor of the agent's service account).
	WatchBusEndpoints []string
	WatchBusOptions   []connect.ClientOption

	// LibvirtSocket is libvirtd's unix socket (default DefaultLibvirtSocket).
	LibvirtSocket string
	// Hypervisor, when set, is used instead of connecting to LibvirtSocket (tests: a fake
	// driver). The agent does not close it.
	Hypervisor Hypervisor
	// MigrationURI is where other hosts' libvirtds reach this host's libvirtd for
	// peer-to-peer live migration, registered in the host record (default
	// qemu+unix:///system?socket=<LibvirtSocket>, which only works between libvirtds of
	// one machine; production sets qemu+tls://<host>/system).
	MigrationURI string
	// StateDir holds the driver's per-VM files (serial logs, heartbeat sockets). Required,
	// absolute and short (unix socket paths are limited to 107 bytes).
	StateDir string
	// Pools maps storage pool names ("local", "shared") to directories. At least one.
	Pools map[string]string

	// CapacityVCPUs and CapacityMemoryMiB are what the scheduler may place here (0: the
	// host's CPUs and memory).
	CapacityVCPUs     int32
	CapacityMemoryMiB int64
	// Labels are the host's labels (scheduling filters).
	Labels map[string]string
	// Version is the agent's version, stored in the host record.
	Version string

	// LeaseTTL is the TTL of the heartbeat lease on /plasmavmc/alive/<host> (whole
	// seconds: ChainFire's lease granularity).
	LeaseTTL time.Duration
	// FenceMargin is how long before the lease could expire the host self-fences when it
	// could not renew it: HA domains are destroyed at (last renewal sent + TTL - margin),
	// by the agent and, should the agent be stuck, by the watchdog. Default 2 s (at most
	// a quarter of LeaseTTL when that is shorter); it must be below LeaseTTL/2.
	FenceMargin time.Duration
	// NoWatchdog disables the watchdog process (`plasmavmc-agent watchdog`): the agent
	// still self-fences, but nothing does if the agent itself hangs or dies. For tests
	// and development only.
	NoWatchdog bool
	// WatchdogCommand is the command line that starts the watchdog, to which the agent
	// appends --state-dir, --libvirt-socket and --host-name (default: this executable
	// with the argument "watchdog", when it is plasmavmc-agent; any other executable, a
	// test binary running the agent in-process, runs without a watchdog unless this is
	// set).
	WatchdogCommand []string
	// ReconcileInterval is how often each VM is reconciled against the hypervisor even
	// when nothing happened (a safety net; events and watches trigger reconciles at once).
	ReconcileInterval time.Duration
	// StatusRefresh is how often a VM's status is rewritten when only its heartbeat moved
	// (state changes are written at once).
	StatusRefresh time.Duration
	// HeartbeatMaxAge is how old the latest guest heartbeat may be for the VM to count as
	// healthy.
	HeartbeatMaxAge time.Duration
	// RestartBackoff is the delay before the second restart of a crashed VM within the
	// window (the first is immediate); each further restart doubles it, up to
	// RestartBackoffMax.
	RestartBackoff, RestartBackoffMax time.Duration
	// MaxRestarts and RestartWindow apply when the VM's HA policy leaves them 0.
	MaxRestarts   int
	RestartWindow time.Duration
	// StopTimeout is the ACPI shutdown timeout when the VM record does not name one.
	StopTimeout time.Duration
	// OrphanSweep is how often the agent lists the hypervisor's domains looking for ones
	// no longer assigned to it (also done after every reconnect of the driver).
	OrphanSweep time.Duration

	// Logger receives everything (nil discards). Registry receives the agent's metrics
	// (nil: a private registry with Go and process collectors, served on /metrics).
	Logger   *slog.Logger
	Registry *prometheus.Registry
	// Backoff paces retries of ChainFire writes (zero: resilience's defaults).
	Backoff resilience.Policy
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Validate checks cfg and fills in defaults.
func (c *Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrConfig}, args...)...)
	}
	if !nameRE.MatchString(c.HostName) {
		return bad("host name %q (want ^[a-z0-9][a-z0-9-]{0,62}$)", c.HostName)
	}
	if len(c.ChainFireEndpoints) == 0 {
		return bad("no ChainFire endpoints (--chainfire-endpoints or PLASMA_CHAINFIRE_ENDPOINTS)")
	}
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return bad("state directory %q must be an absolute path", c.StateDir)
	}
	if len(c.Pools) == 0 {
		return bad("no storage pool (--pool-local, --pool-shared)")
	}
	for name, dir := range c.Pools {
		if !filepath.IsAbs(dir) {
			return bad("pool %q: directory %q must be an absolute path", name, dir)
		}
	}
	for k, v := range c.Labels {
		if !nameRE.MatchString(k) {
			return bad("label key %q (want ^[a-z0-9][a-z0-9-]{0,62}$)", k)
		}
		if len(v) > 63 {
			return bad("label %q: value longer than 63", k)
		}
	}
	if c.CapacityVCPUs < 0 || c.CapacityMemoryMiB < 0 {
		return bad("negative capacity")
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.LeaseTTL, DefaultLeaseTTL)
	def(&c.ReconcileInterval, DefaultReconcileInterval)
	def(&c.StatusRefresh, DefaultStatusRefresh)
	def(&c.HeartbeatMaxAge, DefaultHeartbeatMaxAge)
	def(&c.RestartBackoff, DefaultRestartBackoff)
	def(&c.RestartBackoffMax, DefaultRestartBackoffMax)
	def(&c.RestartWindow, DefaultRestartWindow)
	def(&c.StopTimeout, DefaultStopTimeout)
	def(&c.OrphanSweep, DefaultOrphanSweep)
	if c.LeaseTTL < 2*time.Second {
		return bad("lease TTL %v: at least 2 s", c.LeaseTTL)
	}
	if c.LeaseTTL%time.Second != 0 {
		return bad("lease TTL %v: whole seconds", c.LeaseTTL)
	}
	if c.FenceMargin == 0 {
		c.FenceMargin = min(DefaultFenceMargin, c.LeaseTTL/4)
	}
	if c.FenceMargin < 0 || c.FenceMargin >= c.LeaseTTL/2 {
		return bad("fence margin %v: must be positive and below half the lease TTL (%v)", c.FenceMargin, c.LeaseTTL/2)
	}
	if c.LibvirtSocket == "" {
		c.LibvirtSocket = DefaultLibvirtSocket
	}
	if c.MigrationURI == "" {
		c.MigrationURI = DefaultMigrationURI(c.LibvirtSocket)
	}
	if c.MaxRestarts <= 0 {
		c.MaxRestarts = DefaultMaxRestarts
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// DefaultMigrationURI is the migration URI of a host whose libvirtd listens on socket:
// qemu+unix:///system?socket=<socket> (reachable only from the same machine: fake hosts
// in tests and development).
func DefaultMigrationURI(socket string) string {
	return "qemu+unix:///system?socket=" + socket
}
