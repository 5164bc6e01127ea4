package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	plasmaserver "plasmacloud.dev/pkg/server"
	"plasmacloud.dev/watchbus/internal/server"
)

// serverCommand is `watchbus server`. Every flag may also come from the environment as
// WATCHBUS_<FLAG> (e.g. WATCHBUS_WINDOW_EVENTS); --chainfire-endpoints also from
// PLASMA_CHAINFIRE_ENDPOINTS and --iam-endpoints from PLASMA_IAM_ENDPOINTS. Flags win.
func serverCommand() *cobra.Command {
	cfg := server.DefaultConfig()
	var (
		logFlags   plasmaserver.LogFlags
		configFile string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a WatchBus replica",
		Long: `Run a WatchBus replica: one upstream ChainFire watch over the whole keyspace, a window
of recent revisions in memory, and WatchBusService.Subscribe for any number of
subscribers. Replicas are stateless (revisions are ChainFire's): run several, and a
subscriber resumes on any of them from its last revision.

Every Subscribe needs the permission events.watch, checked offline with keys and policy
from IAM (--iam-endpoints). --auth none turns that off, for development only.`,
		Example: `  watchbus server --listen :7002 --chainfire-endpoints http://10.0.0.1:2379,http://10.0.0.2:2379 \
    --iam-endpoints http://10.0.0.1:7001 --iam-client-id watchbus --iam-client-secret-file /etc/watchbus/secret
  watchbus server --chainfire-endpoints http://127.0.0.1:2379 --auth none   # development`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env := plasmaserver.EnvNames("WATCHBUS", map[string][]string{
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
			cfg.Logger = log
			if cfg.Auth.ClientSecretFile != "" {
				b, err := os.ReadFile(cfg.Auth.ClientSecretFile)
				if err != nil {
					return fmt.Errorf("--iam-client-secret-file: %w", err)
				}
				cfg.Auth.ClientSecret = strings.TrimRight(string(b), "\r\n")
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return server.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "HOST:PORT to serve the API, health and metrics on")
	cfg.ChainFire.Register(f)
	f.StringVar(&cfg.DataDir, "data-dir", "", "accepted for the shared command line; WatchBus keeps no local state")
	f.StringVar(&configFile, "config", "", "YAML file of flag values (flag name: value); command-line flags and WATCHBUS_* environment variables win")
	logFlags.Register(f)
	cfg.Auth.Register(f, "subscribe to anything", "WatchBus's")
	f.IntVar(&cfg.WindowEvents, "window-events", cfg.WindowEvents, "most events kept in the in-memory window (oldest revisions evicted first)")
	f.DurationVar(&cfg.WindowAge, "window-age", cfg.WindowAge, "how long a revision stays in the window (0: by count only)")
	f.IntVar(&cfg.SubscriberQueue, "subscriber-queue", cfg.SubscriberQueue, "revisions a subscriber may lag behind the head before it counts as slow")
	f.DurationVar(&cfg.SlowConsumerTimeout, "slow-consumer-timeout", cfg.SlowConsumerTimeout, "how long a subscriber may stay at the queue bound before it is cut (ResourceExhausted + resume revision)")
	cfg.TLS.Register(f)
	f.BoolVar(&cfg.Pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ on --listen (profiling; off in production)")
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long SIGTERM waits for streams to end")
	return cmd
}
