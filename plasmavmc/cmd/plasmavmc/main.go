// Command plasmavmc is PlasmaVMC's controller binary: `plasmavmc server` runs a
// (stateless) controller replica; every other subcommand is a client of running
// replicas (vm, host, image, operation).
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "plasmavmc",
		Short:         "PlasmaVMC: virtual machines on PlasmaCloud hosts",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serverCommand())
	root.AddCommand(clientCommands()...)
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
