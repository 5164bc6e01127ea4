package main

import (
	"os"

	"github.com/spf13/cobra"

	"plasmacloud.dev/chainfire/internal/node"
	plasmaserver "plasmacloud.dev/pkg/server"
)

// offlineFlags are the member flags of the offline commands (recover, snapshot restore),
// named as the server's; it also logs to stderr and defaults --initial-cluster to the
// member alone. Flags may come from CHAINFIRE_<FLAG> as for the server.
func offlineFlags(cmd *cobra.Command, cfg *node.Config, dataDirHelp, clusterHelp string) {
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "the member's name")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, dataDirHelp)
	f.StringSliceVar(&cfg.InitialAdvertisePeerURLs, "initial-advertise-peer-urls", cfg.InitialAdvertisePeerURLs, "the member's peer URLs")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", "", clusterHelp+": name=peerURL,... (default: this member alone)")
	f.StringVar(&cfg.InitialClusterToken, "initial-cluster-token", cfg.InitialClusterToken, "the cluster's token")
	f.StringVar(&cfg.LogStore, "log-store", cfg.LogStore, "raft log store: wal or boltdb")
	cmd.PreRunE = func(cmd *cobra.Command, _ []string) error {
		if err := applyEnv(cmd.Flags()); err != nil {
			return err
		}
		log, err := plasmaserver.NewLogger(os.Stderr, "text", "info")
		if err != nil {
			return err
		}
		cfg.Logger = log
		if !cmd.Flags().Changed("initial-cluster") {
			cfg.InitialCluster = cfg.SelfCluster()
		}
		return nil
	}
}
