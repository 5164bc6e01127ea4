package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"plasmacloud.dev/chainfire/internal/node"
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
			if err := node.Recover(cfg); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "recovered %s: the cluster is now %s\n", cfg.DataDir, cfg.InitialCluster)
			return nil
		},
	}
	offlineFlags(cmd, &cfg, "the stopped member's data directory", "the members of the recovered cluster")
	return cmd
}
