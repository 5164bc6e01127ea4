// Command watchbus is WatchBus's single binary: `watchbus server` runs a (stateless)
// replica; `watchbus subscribe` and `watchbus bench` are clients of running replicas.
package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

func main() {
	root := &cobra.Command{
		Use:           "watchbus",
		Short:         "PlasmaCloud WatchBus: resumable, ordered, loss-evident fan-out of ChainFire watches",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(serverCommand(), subscribeCommand(), benchCommand())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "Error:", err)
		os.Exit(1)
	}
}
