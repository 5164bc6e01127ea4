package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"plasmacloud.dev/chainfire/internal/node"
	plasmaserver "plasmacloud.dev/pkg/server"
)

// recoverCommand is `chainfire recover`: quorum-loss recovery on a stopped member's data dir.
func recoverCommand() *cobra.Command {
	cfg := node.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "recover",
		Short: "Make a stopped member's data the whole cluster after a loss of quorum (offline)",
		Long: `Recover rewrites the raft configuration in a stopped member's data directory so that the
members listed in --initial-cluster form the cluster, after too many members were lost for
the cluster to elect a leader. Every entry in this member's raft log is taken as committed.

Run it on the survivor with the most recent data (highest raft index in 'chainfire status'
before the outage, or in its log), with --initial-cluster naming only the members that will
run (usually just the survivor), start the member as usual, then add new members with
'chainfire member add' and --initial-cluster-state existing. Never start the lost members
again with their old data.`,
		Example: `  chainfire recover --name cf1 --data-dir /var/lib/chainfire \
    --initial-advertise-peer-urls http://10.0.0.1:2380 --initial-cluster cf1=http://10.0.0.1:2380`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
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
			if err := node.Recover(cfg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "recovered %s: the cluster is now %s\n", cfg.DataDir, cfg.InitialCluster)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", cfg.Name, "this member's name")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "the stopped member's data directory")
	f.StringSliceVar(&cfg.InitialAdvertisePeerURLs, "initial-advertise-peer-urls", cfg.InitialAdvertisePeerURLs, "this member's peer URLs")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", "", "the members of the recovered cluster: name=peerURL,... (default: this member alone)")
	f.StringVar(&cfg.InitialClusterToken, "initial-cluster-token", cfg.InitialClusterToken, "the cluster's token (as the member was started with)")
	f.StringVar(&cfg.LogStore, "log-store", cfg.LogStore, "raft log store the member uses: wal or boltdb")
	return cmd
}
