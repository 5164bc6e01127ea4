package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"plasmacloud.dev/chainfire/internal/node"
)

// restoreCommand is `chainfire snapshot restore`: offline, creates a member's data dir for
// a new cluster from a snapshot file.
func restoreCommand() *cobra.Command {
	cfg := node.DefaultConfig()
	cmd := &cobra.Command{
		Use:   "restore FILE",
		Short: "Create a member's data directory for a new cluster from a snapshot file (offline)",
		Long: `Restore creates --data-dir for one member of a new cluster from a snapshot file written by
'chainfire snapshot save' or by a member's scheduled snapshots (--snapshot-dir). Run it for
every member with the same FILE, --initial-cluster and --initial-cluster-token, then start
each member with 'chainfire server' and --initial-cluster-state new. The new cluster holds
exactly the data at the snapshot's revision. A corrupt or truncated file is refused.`,
		Example: `  chainfire snapshot restore backup.snap --name cf1 --data-dir /var/lib/chainfire \
    --initial-advertise-peer-urls http://10.0.0.1:2380 \
    --initial-cluster cf1=http://10.0.0.1:2380,cf2=http://10.0.0.2:2380,cf3=http://10.0.0.3:2380`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			if err := node.RestoreSnapshot(cfg, f); err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s into %s\n", args[0], cfg.DataDir)
			return nil
		},
	}
	offlineFlags(cmd, &cfg, "data directory to create (must not exist or be empty)", "members of the new cluster")
	return cmd
}
