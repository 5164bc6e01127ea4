package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"plasmacloud.dev/chainfire/internal/backup"
	"plasmacloud.dev/chainfire/internal/node"
	"plasmacloud.dev/chainfire/internal/server"
	plasmaserver "plasmacloud.dev/pkg/server"
)

// serverCommand is `chainfire server`: etcd's flag names, so an etcd operator's command line
// carries over. Every flag may also come from the environment as CHAINFIRE_<FLAG> (e.g.
// CHAINFIRE_INITIAL_CLUSTER), which a systemd EnvironmentFile uses; flags win.
func serverCommand() *cobra.Command {
	cfg := node.DefaultConfig()
	var (
		electionMs, heartbeatMs int
		logFormat, logLevel     string
		tlsFiles                plasmaserver.TLSFiles
		backups                 backup.Config
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run a ChainFire member",
		Long: `Run a ChainFire member. Static bootstrap: start every member with the same
--initial-cluster and --initial-cluster-state new. To grow a running cluster, call
'chainfire member add NAME --peer-urls URL' and start the new member with
--initial-cluster-state existing.`,
		Example: `  chainfire server --name cf1 --data-dir /var/lib/chainfire \
    --listen-client-urls http://0.0.0.0:2379 --advertise-client-urls http://10.0.0.1:2379 \
    --listen-peer-urls http://0.0.0.0:2380 --initial-advertise-peer-urls http://10.0.0.1:2380 \
    --initial-cluster cf1=http://10.0.0.1:2380,cf2=http://10.0.0.2:2380,cf3=http://10.0.0.3:2380`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			log, err := plasmaserver.NewLogger(os.Stderr, logFormat, logLevel)
			if err != nil {
				return err
			}
			cfg.Logger = log.With("member", cfg.Name)
			cfg.ElectionTimeout = time.Duration(electionMs) * time.Millisecond
			_ = heartbeatMs // raft heartbeats at a tenth of the election timeout
			if !cmd.Flags().Changed("initial-cluster") {
				// A single member by default, as etcd: name=each advertised peer URL.
				cfg.InitialCluster = cfg.SelfCluster()
			}
			if err := cfg.Validate(); err != nil {
				return fmt.Errorf("invalid configuration: %w", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return server.Run(ctx, cfg, server.Options{TLS: tlsFiles, Backup: backups})
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "human-readable name of this member")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for the raft log, snapshots and the store")
	f.StringSliceVar(&cfg.ListenClientURLs, "listen-client-urls", cfg.ListenClientURLs, "URL to serve clients on (etcd v3 API, health, metrics)")
	f.StringSliceVar(&cfg.AdvertiseClientURLs, "advertise-client-urls", cfg.AdvertiseClientURLs, "client URLs of this member as others reach them")
	f.StringSliceVar(&cfg.ListenPeerURLs, "listen-peer-urls", cfg.ListenPeerURLs, "URL to listen on for raft traffic from peers")
	f.StringSliceVar(&cfg.InitialAdvertisePeerURLs, "initial-advertise-peer-urls", cfg.InitialAdvertisePeerURLs, "peer URLs of this member as others reach them")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", cfg.InitialCluster, "initial members: name=peerURL,...")
	f.StringVar(&cfg.InitialClusterState, "initial-cluster-state", cfg.InitialClusterState, "new (bootstrap) or existing (join a running cluster after member add)")
	f.StringVar(&cfg.InitialClusterToken, "initial-cluster-token", cfg.InitialClusterToken, "token distinguishing clusters; members ids derive from it")
	f.IntVar(&electionMs, "election-timeout", int(cfg.ElectionTimeout/time.Millisecond), "milliseconds without a leader's heartbeat before a follower starts an election")
	f.IntVar(&heartbeatMs, "heartbeat-interval", 0, "accepted for etcd compatibility; raft heartbeats at a tenth of --election-timeout")
	f.Uint64Var(&cfg.SnapshotCount, "snapshot-count", cfg.SnapshotCount, "applied entries between raft snapshots")
	f.StringVar(&cfg.LogStore, "log-store", cfg.LogStore, "raft log store: wal (raft-wal, faster appends) or boltdb (raft-boltdb)")
	f.IntVar(&cfg.Limits.MaxKeyBytes, "max-key-bytes", cfg.Limits.MaxKeyBytes, "largest key accepted")
	f.IntVar(&cfg.Limits.MaxValueBytes, "max-value-bytes", cfg.Limits.MaxValueBytes, "largest value accepted")
	f.IntVar(&cfg.Limits.MaxTxnOps, "max-txn-ops", cfg.Limits.MaxTxnOps, "most operations in one txn")
	f.IntVar(&cfg.MaxRequestBytes, "max-request-bytes", cfg.MaxRequestBytes, "request size the limits are sized for (messages over 4x are refused)")
	f.Int64Var(&cfg.QuotaBackendBytes, "quota-backend-bytes", cfg.QuotaBackendBytes, "store size operators are alerted at (alerts fire at 80%); not enforced yet")
	f.DurationVar(&cfg.ProgressNotifyInterval, "experimental-watch-progress-notify-interval", cfg.ProgressNotifyInterval, "interval of watch progress notifications")
	f.StringVar(&tlsFiles.CertFile, "cert-file", "", "client API TLS certificate (PEM)")
	f.StringVar(&tlsFiles.KeyFile, "key-file", "", "client API TLS key (PEM)")
	f.StringVar(&tlsFiles.CAFile, "trusted-ca-file", "", "CA for client certificates (PEM)")
	f.BoolVar(&tlsFiles.ClientCertAuth, "client-cert-auth", false, "require client certificates signed by --trusted-ca-file")
	f.DurationVar(&backups.Interval, "snapshot-interval", 0, "write a snapshot of the store this often (0: never); restore one with 'chainfire snapshot restore'")
	f.StringVar(&backups.Dir, "snapshot-dir", "", "directory for scheduled snapshots (default DATA_DIR/backups)")
	f.IntVar(&backups.Retain, "snapshot-retain", 5, "scheduled snapshots kept, newest first")
	f.StringVar(&logFormat, "log-format", "text", "log format: text or json")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return cmd
}

// applyEnv sets every flag not given on the command line from CHAINFIRE_<FLAG_NAME>
// (pkg/server.ApplyEnvAndConfig; an empty variable counts as unset).
func applyEnv(fs *pflag.FlagSet) error {
	return plasmaserver.ApplyEnvAndConfig(fs, "", plasmaserver.EnvNames("CHAINFIRE", nil))
}
