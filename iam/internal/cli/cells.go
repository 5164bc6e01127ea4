package cli

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// Cell formatters for the table output (cliout prints the tables).

// ts formats a timestamp for tables ("-" when unset).
func ts(t *timestamppb.Timestamp) string {
	if t == nil || (t.GetSeconds() == 0 && t.GetNanos() == 0) {
		return "-"
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

// orDash returns s, or "-" when empty.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// yesNo formats a flag for tables.
func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
