// Package cli holds IAM's client subcommands. Placeholder until part C lands.
package cli

import "github.com/spf13/cobra"

// Commands returns the client subcommands of the iam binary.
func Commands() []*cobra.Command { return nil }
