package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/auth"
	plasmaserver "plasmacloud.dev/pkg/server"
	"plasmacloud.dev/plasmavmc/internal/controller"
	"plasmacloud.dev/plasmavmc/internal/state"
)

// serverConfig is `plasmavmc server`'s configuration.
type serverConfig struct {
	Listen       string
	ChainFire    plasmaserver.ChainFireFlags
	TLS          plasmaserver.TLSFiles
	Auth         plasmaserver.AuthFlags
	ReplicaID    string
	LeaseTTL     time.Duration
	DrainTimeout time.Duration

	// HA manager and live migration defaults (controller.HAConfig, MigrationDefaults).
	HealthInterval        time.Duration
	SuspectAfter          time.Duration
	FenceDelay            time.Duration
	FenceCommand          string
	MigrationTimeout      time.Duration
	MigrationAutoConv     bool
	MigrationPostCopy     time.Duration
	MigrationMaxBandwidth int64
	MaxFailoversPerPass   int
	OperationTimeout      time.Duration
}

// serverCommand is `plasmavmc server`. Every flag may also come from the environment as
// PLASMAVMC_<FLAG>; --chainfire-endpoints also from PLASMA_CHAINFIRE_ENDPOINTS and
// --iam-endpoints from PLASMA_IAM_ENDPOINTS; then from --config. Flags win.
func serverCommand() *cobra.Command {
	cfg := serverConfig{Listen: ":7003",
		Auth:     plasmaserver.AuthFlags{Mode: plasmaserver.AuthIAM, Issuer: auth.DefaultIssuer, Audience: auth.DefaultAudience},
		LeaseTTL: 5 * time.Second, DrainTimeout: 10 * time.Second}
	ha, mig := controller.DefaultHA(), controller.DefaultMigration()
	cfg.HealthInterval, cfg.FenceDelay = ha.HealthInterval, ha.FenceDelay
	cfg.MigrationTimeout, cfg.MigrationAutoConv, cfg.MigrationPostCopy, cfg.MigrationMaxBandwidth = mig.Timeout, mig.AutoConverge, mig.PostCopyAfter, mig.MaxBandwidthMiB
	var (
		logFlags            plasmaserver.LogFlags
		configFile, dataDir string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a PlasmaVMC controller replica",
		Long: `Run a PlasmaVMC controller replica: the VM, host, image and operation API over ChainFire.
Replicas are stateless; run several over one ChainFire. One is elected leader (a lease on
/plasmavmc/leader) and alone schedules PENDING VMs and finishes deletes, and runs the HA
manager: host health from the agents' leases (up, suspect, down, fenced, recovered),
fencing (--fence-delay, --fence-command), failover of HA VMs off fenced hosts, live
migration housekeeping and host drains.

Callers are authorized with tokens from IAM (--iam-endpoints); --auth none turns that
off, for development only.`,
		Example: `  plasmavmc server --chainfire-endpoints http://10.0.0.1:2379 \
    --iam-endpoints http://10.0.0.1:7001 --iam-client-id plasmavmc --iam-client-secret-file /etc/plasmavmc/secret
  plasmavmc server --chainfire-endpoints http://127.0.0.1:2379 --auth none   # development`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env := plasmaserver.EnvNames("PLASMAVMC", map[string][]string{
				"chainfire-endpoints": {"PLASMA_CHAINFIRE_ENDPOINTS"},
				"iam-endpoints":       {"PLASMA_IAM_ENDPOINTS"},
			})
			if err := plasmaserver.ApplyEnvAndConfig(cmd.Flags(), configFile, env); err != nil {
				return err
			}
			log, err := logFlags.Logger(os.Stderr)
			if err != nil {
				return err
			}
			if cfg.Auth.ClientSecretFile != "" {
				b, err := os.ReadFile(cfg.Auth.ClientSecretFile)
				if err != nil {
					return fmt.Errorf("--iam-client-secret-file: %w", err)
				}
				cfg.Auth.ClientSecret = strings.TrimSpace(string(b))
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return runServer(ctx, cfg, log)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "HOST:PORT to serve the API, health and metrics on")
	cfg.ChainFire.Register(f)
	cfg.Auth.Register(f, "do anything", "the controller's")
	f.StringVar(&cfg.ReplicaID, "replica-id", "", "this replica's name in /plasmavmc/leader (default: hostname:port and a random suffix)")
	f.DurationVar(&cfg.LeaseTTL, "leader-lease-ttl", cfg.LeaseTTL, "TTL of the leader lease: a dead leader is replaced within about this long")
	f.StringVar(&dataDir, "data-dir", "", "accepted for the shared command line; the controller keeps no local state")
	f.StringVar(&configFile, "config", "", "YAML file of flag values (flag name: value); command-line flags and environment variables win")
	logFlags.Register(f)
	cfg.TLS.Register(f)
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long SIGTERM waits for in-flight requests")
	f.DurationVar(&cfg.HealthInterval, "health-interval", cfg.HealthInterval, "how often the leader checks every host's lease (and runs failover, migration housekeeping, drains)")
	f.DurationVar(&cfg.SuspectAfter, "suspect-after", 0, "a host is SUSPECT while its lease's remaining TTL is below TTL minus this (0: a third of the TTL)")
	f.DurationVar(&cfg.FenceDelay, "fence-delay", cfg.FenceDelay, "a DOWN host is FENCED (its HA VMs restarted elsewhere) this long after the leader saw its lease expire; must exceed the agents' --fence-margin plus the time a self-fence takes")
	f.StringVar(&cfg.FenceCommand, "fence-command", "", "command fencing a DOWN host at once when it exits 0 (split on spaces; {host} is replaced by the host name, env PLASMAVMC_FENCE_HOST is set; retried with backoff), e.g. '/usr/local/sbin/fence-ipmi {host}'")
	f.DurationVar(&cfg.MigrationTimeout, "migration-timeout", cfg.MigrationTimeout, "default completion timeout of a live migration (then it is aborted and the VM stays on its source)")
	f.BoolVar(&cfg.MigrationAutoConv, "migration-auto-converge", cfg.MigrationAutoConv, "default: throttle the guest's vCPUs when a migration does not converge")
	f.DurationVar(&cfg.MigrationPostCopy, "migration-post-copy-after", cfg.MigrationPostCopy, "default: switch a migration to post-copy after this long (0: never)")
	f.Int64Var(&cfg.MigrationMaxBandwidth, "migration-max-bandwidth-mib", cfg.MigrationMaxBandwidth, "default bandwidth cap of a migration in MiB/s (0: libvirt's default)")
	f.DurationVar(&cfg.OperationTimeout, "operation-timeout", 10*time.Minute, "a create/start/stop/reboot/delete operation still RUNNING this long is ended FAILED with what its VM is waiting for (the work itself goes on)")
	f.IntVar(&cfg.MaxFailoversPerPass, "max-failovers-per-pass", 0, "at most this many VMs restarted elsewhere per health interval, to pace a failover storm (0: no bound)")
	return cmd
}

// runServer serves until ctx ends, then drains and hands leadership over.
func runServer(ctx context.Context, cfg serverConfig, log *slog.Logger) error {
	if len(cfg.ChainFire.Endpoints) == 0 {
		return errors.New("--chainfire-endpoints (or PLASMA_CHAINFIRE_ENDPOINTS) is required")
	}
	switch cfg.Auth.Mode {
	case plasmaserver.AuthNone:
	case plasmaserver.AuthIAM:
		if len(cfg.Auth.IAMEndpoints) == 0 {
			return errors.New("--iam-endpoints (or PLASMA_IAM_ENDPOINTS) is required unless --auth none (development only)")
		}
	default:
		return fmt.Errorf("--auth %q: must be iam or none", cfg.Auth.Mode)
	}
	cf, err := cfg.ChainFire.Client(log)
	if err != nil {
		return err
	}
	defer cf.Close()

	runCtx, stopRun := context.WithCancel(context.WithoutCancel(ctx))
	var bg sync.WaitGroup
	defer bg.Wait()
	defer stopRun()

	var authNote string
	if cfg.Auth.Mode == plasmaserver.AuthNone {
		authNote = " (AUTH DISABLED: --auth none, development only; every caller may do everything)"
	}
	az, err := cfg.Auth.Setup(log, controller.Permissions())
	if err != nil {
		return err
	}
	defer az.Close()
	interceptor, authReady := az.Interceptor, az.Ready
	bg.Go(func() { _ = az.Run(runCtx) })

	id := cfg.ReplicaID
	if id == "" {
		host, _ := os.Hostname()
		id = fmt.Sprintf("%s%s-%d", host, cfg.Listen, time.Now().UnixNano()%100000)
	}
	ha, mig, err := cfg.haConfig()
	if err != nil {
		return err
	}
	ctrl, err := controller.New(controller.Config{Store: state.New(cf, nil), ID: id, Logger: log,
		LeaseTTL: max(1, int64(cfg.LeaseTTL/time.Second)), HA: ha, Migration: &mig})
	if err != nil {
		return err
	}
	ready := func(ctx context.Context) error {
		// ChainFire reachable (a linearizable read of the leader key).
		rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if _, err := cf.Get(rctx, state.KeyLeader); err != nil {
			return fmt.Errorf("chainfire: %w", err)
		}
		return authReady(ctx)
	}
	srvCfg := plasmaserver.Config{Addr: cfg.Listen, Logger: log, Ready: ready, Services: controller.Services(), DrainTimeout: cfg.DrainTimeout}
	if cfg.TLS.Enabled() {
		if srvCfg.TLS, err = cfg.TLS.ServerConfig(); err != nil {
			return err
		}
	}
	srv := plasmaserver.New(srvCfg)
	if err := ctrl.Register(srv.Registry()); err != nil {
		return err
	}
	for p, h := range ctrl.Handlers(connect.WithInterceptors(interceptor)) {
		srv.Handle(p, h)
	}
	srv.Handle("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		err := ready(r.Context())
		if srv.Draining() {
			err = errors.New("shutting down")
		}
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v%s\n", err, authNote)
			return
		}
		fmt.Fprintf(w, "ok%s\n", authNote)
	}))

	electDone := make(chan struct{})
	bg.Go(func() { defer close(electDone); _ = ctrl.Run(runCtx) })
	errc := make(chan error, 1)
	srvCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	go func() { errc <- srv.Serve(srvCtx) }()
	_ = plasmaserver.Notify("READY=1")
	log.Info("plasmavmc controller started", "replica", id, "listen", cfg.Listen, "auth", cfg.Auth.Mode,
		"health_interval", ha.HealthInterval, "fence_delay", ha.FenceDelay, "fence_command", strings.Join(ha.FenceCommand, " "),
		"migration_timeout", mig.Timeout)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: handing leadership over, draining requests")
	_ = plasmaserver.Notify("STOPPING=1")
	stopRun() // the elector revokes its lease: another replica leads at once
	<-electDone
	stopServing()
	return <-errc
}

// haConfig checks the HA and migration flags and builds the controller's settings.
func (cfg serverConfig) haConfig() (controller.HAConfig, controller.MigrationDefaults, error) {
	ha := controller.DefaultHA()
	mig := controller.MigrationDefaults{Timeout: cfg.MigrationTimeout, AutoConverge: cfg.MigrationAutoConv,
		PostCopyAfter: cfg.MigrationPostCopy, MaxBandwidthMiB: cfg.MigrationMaxBandwidth}
	switch {
	case cfg.HealthInterval <= 0:
		return ha, mig, fmt.Errorf("--health-interval %v: must be positive", cfg.HealthInterval)
	case cfg.FenceDelay <= 0:
		return ha, mig, fmt.Errorf("--fence-delay %v: must be positive", cfg.FenceDelay)
	case cfg.SuspectAfter < 0:
		return ha, mig, fmt.Errorf("--suspect-after %v: negative", cfg.SuspectAfter)
	case cfg.MigrationTimeout < time.Second:
		return ha, mig, fmt.Errorf("--migration-timeout %v: at least 1s", cfg.MigrationTimeout)
	case cfg.MigrationPostCopy < 0:
		return ha, mig, fmt.Errorf("--migration-post-copy-after %v: negative", cfg.MigrationPostCopy)
	case cfg.MigrationMaxBandwidth < 0:
		return ha, mig, fmt.Errorf("--migration-max-bandwidth-mib %d: negative", cfg.MigrationMaxBandwidth)
	case cfg.OperationTimeout < time.Second:
		return ha, mig, fmt.Errorf("--operation-timeout %v: at least 1s", cfg.OperationTimeout)
	case cfg.MaxFailoversPerPass < 0:
		return ha, mig, fmt.Errorf("--max-failovers-per-pass %d: negative", cfg.MaxFailoversPerPass)
	}
	ha.MaxFailoversPerPass, ha.OperationTimeout = cfg.MaxFailoversPerPass, cfg.OperationTimeout
	ha.HealthInterval, ha.SuspectAfter, ha.FenceDelay = cfg.HealthInterval, cfg.SuspectAfter, cfg.FenceDelay
	ha.FenceCommand = strings.Fields(cfg.FenceCommand)
	return ha, mig, nil
}
