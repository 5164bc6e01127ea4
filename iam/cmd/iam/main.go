// Command iam is IAM's single binary: `iam server` runs a (stateless) replica, every other
// subcommand is a client of running replicas.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"plasmacloud.dev/iam/internal/cli"
)

func main() {
	root := &cobra.Command{
		Use:           "iam",
		Short:         "PlasmaCloud IAM: identities, projects, roles, bindings and tokens",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serverCommand())
	root.AddCommand(cli.Commands()...)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
