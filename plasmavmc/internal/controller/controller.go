// Package controller is PlasmaVMC's control plane (`plasmavmc server`): the Connect
// handlers of VMService, HostService, ImageService and OperationService over ChainFire
// (through internal/state), leader election, and — on the leader only — the scheduler,
// housekeeping and the HA manager.
//
// # HA manager
//
// The leader also runs the HA manager (health.go, failover.go, migrate.go, drain.go),
// every HAConfig.HealthInterval: each host's health from its agent's lease (UP,
// SUSPECT, DOWN, FENCED after the fence delay or a successful fence command,
// RECOVERED, UP again once the agent reports its rejoin) with a HostEvent per
// transition; failover of the HA VMs of fenced hosts (HOST_DOWN for the others);
// finalization of live migrations; host drains. Its state lives in ChainFire
// (/plasmavmc/health, the operations), so a new leader continues where the last one
// stopped; every move is one compare-and-swap on the VM record, hence exactly once.
//
// # Replicas
//
// Controllers are stateless: any number run over one ChainFire and any of them serves
// any call. One is elected leader (a lease-bound /plasmavmc/leader key, see [Elector]);
// it alone places PENDING VMs and finishes deletes. Every placement is a compare-and-swap
// on the host's ledger /plasmavmc/alloc/<host> and additionally requires the leader key
// to still carry the leader's lease, so neither two schedulers nor a deposed leader can
// overcommit a host.
//
// # Projects
//
// Every call is authorized by pkg/auth with the permission of [Permissions]. Then the
// token's scope decides which VMs and operations the caller sees: a project-scoped token
// sees only its project's (a VM of another project is reported NotFound, exactly as a VM
// that does not exist, so that ids of other projects cannot be probed); an unscoped token
// — which passed authorization only through global bindings, e.g. a global admin — and
// the development identity of --auth none see every project. Hosts and images are
// fleet-wide and visible to any caller holding host.* / image.* permissions.
//
// # Concurrency
//
// A Controller is safe for concurrent use by the HTTP server's goroutines; [Controller.Run]
// runs the election and, while leader, the scheduler loop, until its context ends.
package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/state"
	"plasmacloud.dev/proto/plasmavmc/v1/plasmavmcv1connect"
)

// Config configures a Controller. Store is required.
type Config struct {
	Store *state.Store
	// ID names this replica in /plasmavmc/leader (default: a random UUID).
	ID string
	// Logger (nil: discard).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
	// LeaseTTL is the leader lease's TTL in seconds (default 5): a dead leader is
	// replaced within about this long.
	LeaseTTL int64
	// ScheduleInterval is how often the leader looks for work when no change wakes it
	// (default 500 ms).
	ScheduleInterval time.Duration
	// RequestTTL is how long a create's request id is remembered (default 24 h).
	RequestTTL time.Duration
	// DisableScheduler makes the replica never campaign (API only).
	DisableScheduler bool

	// HA configures the HA manager the leader runs (host health, fencing, failover,
	// migration housekeeping, drains). Zero fields take the defaults of [DefaultHA].
	HA HAConfig
	// Migration holds the defaults of MigrateVM's unset fields (nil: [DefaultMigration]).
	Migration *MigrationDefaults
}

// HAConfig configures the HA manager. See docs/plasmavmc/README.md, "HA".
type HAConfig struct {
	// HealthInterval is how often the leader checks every host's lease (default 1 s).
	HealthInterval time.Duration
	// SuspectAfter: a host is SUSPECT while its lease's remaining TTL is below
	// granted TTL - SuspectAfter (default 0: a third of the granted TTL, i.e. two
	// keepalives of an agent renewing every TTL/6 missed).
	SuspectAfter time.Duration
	// FenceDelay is how long after the leader observed a host DOWN it declares it FENCED
	// (default 5 s). It must exceed the agents' fence margin plus the time a self-fence
	// takes: by then a host that cannot reach ChainFire has destroyed its HA VMs.
	FenceDelay time.Duration
	// FenceCommand, when set, is run (argv; "{host}" in any argument is replaced by the
	// host name, env PLASMAVMC_FENCE_HOST is set) as soon as a host is DOWN; exit 0
	// fences the host at once. Retried with backoff while the host stays DOWN.
	FenceCommand []string
	// FenceCommandTimeout bounds one run of FenceCommand (default 30 s).
	FenceCommandTimeout time.Duration
	// MigrationGrace: a vm.migrate operation still RUNNING this long after its timeout is
	// failed by the leader ("no progress from agent on <source>") (default 60 s).
	MigrationGrace time.Duration
	// MaxFailoversPerPass bounds the VMs moved per health interval (0: no bound).
	MaxFailoversPerPass int
	// EventTTL is how long host events are kept (default 24 h).
	EventTTL time.Duration
	// OperationTimeout: a vm.create/start/stop/reboot/delete operation still RUNNING this
	// long after it started is failed by the leader with what the VM is waiting for
	// (default 10 min; negative: never).
	OperationTimeout time.Duration
}

// MigrationDefaults are the values of a MigrateVM request's unset options.
type MigrationDefaults struct {
	Timeout         time.Duration
	AutoConverge    bool
	PostCopyAfter   time.Duration // 0: never switch to post-copy
	MaxBandwidthMiB int64         // 0: libvirt's default
}

// DefaultMigration is what --migration-* default to: 120 s timeout, auto-converge on,
// no post-copy, no bandwidth cap.
func DefaultMigration() MigrationDefaults {
	return MigrationDefaults{Timeout: 120 * time.Second, AutoConverge: true}
}

// DefaultHA is the HA manager's defaults (see HAConfig's fields).
func DefaultHA() HAConfig {
	return HAConfig{HealthInterval: time.Second, FenceDelay: 5 * time.Second, FenceCommandTimeout: 30 * time.Second,
		MigrationGrace: 60 * time.Second, EventTTL: 24 * time.Hour, OperationTimeout: 10 * time.Minute}
}

// Controller serves the API and, when elected, schedules. Build it with [New].
type Controller struct {
	cfg   Config
	st    *state.Store
	cf    *chainfire.Client
	log   *slog.Logger
	now   func() time.Time
	kick  chan struct{}
	elect *Elector

	leaseMu      sync.Mutex
	requestLease int64
	leaseGranted time.Time

	metrics *metrics
	// ha is the HA manager's memory of the current leadership term (guarded inside).
	ha *haState
	// lastDeadlineScan is when operationDeadlines last read every operation (unix ns).
	lastDeadlineScan atomic.Int64
}

// New builds a Controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Store == nil {
		return nil, errors.New("controller: Config.Store is required")
	}
	if cfg.ID == "" {
		cfg.ID = newUUID()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 5
	}
	if cfg.ScheduleInterval <= 0 {
		cfg.ScheduleInterval = 500 * time.Millisecond
	}
	if cfg.RequestTTL <= 0 {
		cfg.RequestTTL = 24 * time.Hour
	}
	def := DefaultHA()
	if cfg.HA.HealthInterval <= 0 {
		cfg.HA.HealthInterval = def.HealthInterval
	}
	if cfg.HA.FenceDelay <= 0 {
		cfg.HA.FenceDelay = def.FenceDelay
	}
	if cfg.HA.FenceCommandTimeout <= 0 {
		cfg.HA.FenceCommandTimeout = def.FenceCommandTimeout
	}
	if cfg.HA.MigrationGrace <= 0 {
		cfg.HA.MigrationGrace = def.MigrationGrace
	}
	if cfg.HA.OperationTimeout == 0 {
		cfg.HA.OperationTimeout = def.OperationTimeout
	}
	if cfg.HA.EventTTL <= 0 {
		cfg.HA.EventTTL = def.EventTTL
	}
	if cfg.Migration == nil {
		m := DefaultMigration()
		cfg.Migration = &m
	}
	c := &Controller{
		cfg:     cfg,
		st:      cfg.Store,
		cf:      cfg.Store.Client(),
		log:     cfg.Logger.With("component", "controller", "replica", cfg.ID),
		now:     cfg.Now,
		kick:    make(chan struct{}, 1),
		metrics: newMetrics(),
		ha:      newHAState(),
	}
	c.elect = NewElector(c.cf, cfg.ID, cfg.LeaseTTL, c.log)
	return c, nil
}

// ID is the replica id.
func (c *Controller) ID() string { return c.cfg.ID }

// Elector is the replica's leader election.
func (c *Controller) Elector() *Elector { return c.elect }

// Permissions maps every procedure of the API to the permission it requires.
func Permissions() map[string]string {
	return map[string]string{
		plasmavmcv1connect.VMServiceCreateVMProcedure:              "vm.create",
		plasmavmcv1connect.VMServiceGetVMProcedure:                 "vm.get",
		plasmavmcv1connect.VMServiceListVMsProcedure:               "vm.list",
		plasmavmcv1connect.VMServiceStartVMProcedure:               "vm.start",
		plasmavmcv1connect.VMServiceStopVMProcedure:                "vm.stop",
		plasmavmcv1connect.VMServiceRebootVMProcedure:              "vm.reboot",
		plasmavmcv1connect.VMServiceDeleteVMProcedure:              "vm.delete",
		plasmavmcv1connect.VMServiceMigrateVMProcedure:             "vm.migrate",
		plasmavmcv1connect.HostServiceListHostsProcedure:           "host.list",
		plasmavmcv1connect.HostServiceGetHostProcedure:             "host.get",
		plasmavmcv1connect.HostServiceDrainHostProcedure:           "host.drain",
		plasmavmcv1connect.HostServiceUndrainHostProcedure:         "host.undrain",
		plasmavmcv1connect.HostServiceListHostEventsProcedure:      "host.list",
		plasmavmcv1connect.ImageServiceRegisterImageProcedure:      "image.register",
		plasmavmcv1connect.ImageServiceListImagesProcedure:         "image.list",
		plasmavmcv1connect.OperationServiceGetOperationProcedure:   "operation.get",
		plasmavmcv1connect.OperationServiceListOperationsProcedure: "operation.list",
	}
}

// Services are the gRPC service names served (for health and reflection).
func Services() []string {
	return []string{
		plasmavmcv1connect.VMServiceName,
		plasmavmcv1connect.HostServiceName,
		plasmavmcv1connect.ImageServiceName,
		plasmavmcv1connect.OperationServiceName,
	}
}

// Handlers returns the Connect handlers by mount path; opts carry the interceptors.
func (c *Controller) Handlers(opts ...connect.HandlerOption) map[string]http.Handler {
	out := map[string]http.Handler{}
	add := func(p string, h http.Handler) { out[p] = h }
	add(plasmavmcv1connect.NewVMServiceHandler(vmService{c}, opts...))
	add(plasmavmcv1connect.NewHostServiceHandler(hostService{c}, opts...))
	add(plasmavmcv1connect.NewImageServiceHandler(imageService{c}, opts...))
	add(plasmavmcv1connect.NewOperationServiceHandler(operationService{c}, opts...))
	return out
}

// Run runs the leader election and, while this replica leads, the scheduler and
// housekeeping, until ctx ends. Leadership is released (lease revoked) on return.
func (c *Controller) Run(ctx context.Context) error {
	if c.cfg.DisableScheduler {
		<-ctx.Done()
		return nil
	}
	return c.elect.Run(ctx, func(lctx context.Context, lease int64) {
		c.log.Info("leading: scheduler and housekeeping started")
		c.runLeader(lctx, lease)
		c.log.Info("leadership ended")
	})
}

// Kick wakes the scheduler (a create in this replica).
func (c *Controller) Kick() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// toConnect maps state errors to Connect codes.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	switch {
	case errors.Is(err, state.ErrNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, state.ErrConflict):
		return connect.NewError(connect.CodeAborted, err)
	case errors.Is(err, state.ErrCorrupt):
		return connect.NewError(connect.CodeInternal, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	default:
		return connect.NewError(connect.CodeUnavailable, err)
	}
}

func invalid(field, format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("%s: %s", field, fmt.Sprintf(format, args...)))
}

func notFound(format string, args ...any) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf(format, args...))
}
