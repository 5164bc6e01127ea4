// Command chainfire is ChainFire's single binary: `chainfire server` runs a member (flags
// named as etcd's), every other subcommand is a client of a running cluster.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"plasmacloud.dev/chainfire/internal/cli"
)

func main() {
	root := &cobra.Command{
		Use:           "chainfire",
		Short:         "ChainFire: a replicated key-value store speaking etcd's v3 API",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serverCommand(), recoverCommand())
	cmds := cli.Commands()
	cli.Find(cmds, "snapshot").AddCommand(restoreCommand())
	root.AddCommand(cmds...)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
