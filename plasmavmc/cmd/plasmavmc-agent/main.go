// Command plasmavmc-agent is PlasmaVMC's per-host agent: it registers the host, holds its
// heartbeat lease in ChainFire, follows the VMs placed on it and runs them through libvirt.
// `plasmavmc-agent` (or `plasmavmc-agent run`) runs it; it serves only /healthz, /readyz
// and /metrics (default :7004).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/iamclient"
	plasmaserver "plasmacloud.dev/pkg/server"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/storage"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func main() {
	root := runCommand("plasmavmc-agent")
	root.SilenceUsage, root.SilenceErrors = true, true
	root.AddCommand(runCommand("run"))
	root.AddCommand(watchdogCommand())
	root.AddCommand(&cobra.Command{Use: "version", Short: "Print the version", Args: cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), version) }})
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}

// runCommand builds the command that runs the agent (the root command and `run` share
// it). Every flag may also come from the environment as PLASMAVMC_AGENT_<FLAG>; the
// endpoints also from PLASMA_CHAINFIRE_ENDPOINTS, PLASMA_WATCHBUS_ENDPOINTS and
// PLASMA_IAM_ENDPOINTS. Command line > environment > --config file > default.
func runCommand(use string) *cobra.Command {
	host, _ := os.Hostname()
	host = strings.ToLower(strings.SplitN(host, ".", 2)[0])
	cfg := agent.Config{HostName: host, Listen: agent.DefaultListen}
	var (
		logFlags              plasmaserver.LogFlags
		configFile            string
		poolLocal, poolShared string
		iamEndpoints          []string
		clientID, secretFile  string
		labels                map[string]string
		chainFire             plasmaserver.ChainFireFlags
		watchdog              bool
	)
	cmd := &cobra.Command{
		Use:   use,
		Short: "Run the PlasmaVMC agent of this host",
		Long: `Run the PlasmaVMC agent of this host: register the host (capacity, pools, labels) in
ChainFire, hold its heartbeat lease (/plasmavmc/alive/<host>, TTL 10 s), follow the VMs
assigned to it (over WatchBus when --watchbus-endpoints is given, else ChainFire directly)
and converge them through libvirtd: define, start, stop, reboot, delete, restart after a
crash by policy, live-migrate. Stopping the agent leaves the VMs running; the next agent
re-adopts them.

Self-fence: when the lease cannot be renewed before it could expire (minus --fence-margin),
the agent destroys the host's HA VMs (spec.ha.failover), starts nothing, and rejoins with a
new lease once ChainFire answers. The watchdog process (started detached on first use,
<state-dir>/watchdog.sock) does the same if the agent itself hangs or dies; restarting the
agent does not fence. Every domain is stamped with its placement epoch: a domain whose
epoch is not the VM's current one on this host is a stale copy and is destroyed.`,
		Example: `  plasmavmc-agent --chainfire-endpoints http://10.0.0.1:2379 \
    --watchbus-endpoints http://10.0.0.1:7002 --iam-endpoints http://10.0.0.1:7001 \
    --client-id agent-node1 --client-secret-file /etc/plasmavmc/agent.secret \
    --pool-local /var/lib/plasmavmc/pools/local --pool-shared /mnt/plasma-shared`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env := plasmaserver.EnvNames("PLASMAVMC_AGENT", map[string][]string{
				"chainfire-endpoints": {"PLASMA_CHAINFIRE_ENDPOINTS"},
				"watchbus-endpoints":  {"PLASMA_WATCHBUS_ENDPOINTS"},
				"iam-endpoints":       {"PLASMA_IAM_ENDPOINTS"},
			})
			if err := plasmaserver.ApplyEnvAndConfig(cmd.Flags(), configFile, env); err != nil {
				return err
			}
			log, err := logFlags.Logger(os.Stderr)
			if err != nil {
				return err
			}
			cfg.ChainFireEndpoints = chainFire.Endpoints
			if tf := chainFire.TLS; tf.CAFile != "" || tf.CertFile != "" || tf.KeyFile != "" {
				if cfg.ChainFireTLS, err = tf.ClientConfig(); err != nil {
					return fmt.Errorf("chainfire TLS: %w", err)
				}
			}
			cfg.Logger, cfg.Version, cfg.Labels = log, version, labels
			cfg.NoWatchdog = !watchdog
			cfg.Pools = map[string]string{}
			if poolLocal != "" {
				cfg.Pools[storage.PoolLocal] = poolLocal
			}
			if poolShared != "" {
				cfg.Pools[storage.PoolShared] = poolShared
			}
			if (clientID == "") != (secretFile == "") {
				return errors.New("--client-id and --client-secret-file go together")
			}
			if clientID != "" {
				if len(iamEndpoints) == 0 {
					return errors.New("--client-id needs --iam-endpoints (or PLASMA_IAM_ENDPOINTS)")
				}
				b, err := os.ReadFile(secretFile)
				if err != nil {
					return fmt.Errorf("--client-secret-file: %w", err)
				}
				ic, err := iamclient.New(iamclient.Config{Endpoints: iamEndpoints, Logger: log.With("component", "iamclient")})
				if err != nil {
					return err
				}
				defer ic.Close()
				ts, err := ic.NewTokenSource(iamclient.TokenSourceConfig{ClientID: clientID,
					ClientSecret: strings.TrimRight(string(b), "\r\n"), Logger: log.With("component", "token")})
				if err != nil {
					return err
				}
				defer ts.Close()
				cfg.WatchBusOptions = append(cfg.WatchBusOptions, connect.WithInterceptors(auth.BearerInterceptor(ts.Token)))
			} else if len(cfg.WatchBusEndpoints) > 0 {
				log.Warn("no service-account credentials (--client-id): WatchBus is called without a token (works only with WatchBus --auth none)")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return agent.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "HOST:PORT of /healthz, /readyz and /metrics")
	f.StringVar(&cfg.HostName, "host-name", cfg.HostName, "this host's name in PlasmaVMC (default: the hostname)")
	chainFire.Register(f)
	f.StringSliceVar(&cfg.WatchBusEndpoints, "watchbus-endpoints", nil, "WatchBus URLs for the watch of assigned VMs (env PLASMA_WATCHBUS_ENDPOINTS; default: watch ChainFire directly)")
	f.StringSliceVar(&iamEndpoints, "iam-endpoints", nil, "IAM URLs, for the service account's tokens (env PLASMA_IAM_ENDPOINTS)")
	f.StringVar(&clientID, "client-id", "", "service account the agent authenticates to WatchBus as")
	f.StringVar(&secretFile, "client-secret-file", "", "file holding the service account's secret")
	f.StringVar(&cfg.LibvirtSocket, "libvirt-socket", "/run/libvirt/libvirt-sock", "libvirtd's unix socket")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/plasmavmc/state", "per-VM files: serial logs, heartbeat sockets (absolute, short)")
	f.StringVar(&poolLocal, "pool-local", "/var/lib/plasmavmc/pools/local", "directory of the local storage pool (empty: none)")
	f.StringVar(&poolShared, "pool-shared", "", "directory of the shared storage pool, mounted on every host (empty: none)")
	f.Int32Var(&cfg.CapacityVCPUs, "capacity-vcpus", 0, "vCPUs the scheduler may place here (0: the host's CPUs)")
	f.Int64Var(&cfg.CapacityMemoryMiB, "capacity-memory-mib", 0, "memory in MiB the scheduler may place here (0: the host's memory)")
	f.StringToStringVar(&labels, "labels", nil, "host labels, key=value,key=value")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", agent.DefaultLeaseTTL, "TTL of the heartbeat lease (whole seconds)")
	f.DurationVar(&cfg.FenceMargin, "fence-margin", agent.DefaultFenceMargin, "self-fence this long before the lease could expire when it was not renewed: HA VMs are destroyed at last renewal + lease TTL - margin (below half the lease TTL)")
	f.StringVar(&cfg.MigrationURI, "migration-uri", "", "libvirt URI other hosts' libvirtds reach this host's libvirtd at for live migration, e.g. qemu+tls://node1/system (default qemu+unix:///system?socket=<--libvirt-socket>, same machine only)")
	f.BoolVar(&watchdog, "watchdog", true, "start (if not running) and pet the self-fence watchdog process (plasmavmc-agent watchdog); disable only for development")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", agent.DefaultStopTimeout, "ACPI shutdown timeout before forcing, when the VM record names none")
	f.StringVar(&configFile, "config", "", "YAML file of flag values (flag name: value); command-line flags and PLASMAVMC_AGENT_* environment variables win")
	logFlags.Register(f)
	return cmd
}

// watchdogCommand is `plasmavmc-agent watchdog`: the self-fence watchdog of one host,
// normally started detached by the agent (or by its own service unit).
func watchdogCommand() *cobra.Command {
	var (
		cfg      agent.WatchdogConfig
		logFlags plasmaserver.LogFlags
	)
	host, _ := os.Hostname()
	cfg.HostName = strings.ToLower(strings.SplitN(host, ".", 2)[0])
	cmd := &cobra.Command{
		Use:   "watchdog",
		Short: "Run the self-fence watchdog of this host (started by the agent when not running)",
		Long: `Run the self-fence watchdog of this host. The agent pets it over <state-dir>/watchdog.sock
after every renewal of the host's heartbeat lease, with how long the lease is still safely
valid. When that time runs out without a newer pet (the agent hung, was paused or killed
and not restarted, or cannot reach ChainFire), the watchdog destroys every running HA
domain of this host (label plasmavmc.io/failover=true) on its libvirtd, retrying until
done, records it in <state-dir>/fenced and its log, and waits for pets again.

One watchdog runs per state directory (<state-dir>/watchdog.pid is locked); a second one
exits at once. It survives agent restarts, so restarting the agent never fences.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := logFlags.Logger(os.Stderr)
			if err != nil {
				return err
			}
			cfg.Logger = log
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			err = agent.RunWatchdog(ctx, cfg)
			if errors.Is(err, agent.ErrWatchdogRunning) {
				log.Info("not starting: " + err.Error())
				return nil
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/plasmavmc/state", "the agent's state directory (socket, pid file, fenced record)")
	f.StringVar(&cfg.LibvirtSocket, "libvirt-socket", agent.DefaultLibvirtSocket, "libvirtd's unix socket")
	f.StringVar(&cfg.HostName, "host-name", cfg.HostName, "this host's name in PlasmaVMC: only its HA domains are destroyed")
	logFlags.Register(f)
	return cmd
}
