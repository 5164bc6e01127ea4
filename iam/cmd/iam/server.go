package main

import (
	"errors"

	"github.com/spf13/cobra"
)

// serverCommand is `iam server`. Placeholder until the server lands (part B2).
func serverCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "server",
		Short: "Run an IAM replica",
		RunE:  func(*cobra.Command, []string) error { return errors.New("iam server: not built yet") },
	}
}
