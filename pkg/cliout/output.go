package cliout

import (
	"fmt"

	"github.com/spf13/pflag"
)

// JSON is the machine-readable format: one JSON object per line.
const JSON = "json"

// Output is the value of the -o/--output flag. Human names the binary's human format
// ("table", "simple", ...); Format is what the user chose.
type Output struct {
	// Format is "", Human or JSON once valid ("" means Human).
	Format string
	// Human is the name of the human format, also the flag's default.
	Human string
}

// Register adds -o/--output to fs, bound to o.Format, with default o.Human and the help
// text usage.
func (o *Output) Register(fs *pflag.FlagSet, usage string) {
	fs.StringVarP(&o.Format, "output", "o", o.Human, usage)
}

// Validate accepts "", o.Human and JSON; anything else is an error naming the flag and the
// two formats (`--output "x": must be table or json`).
func (o Output) Validate() error {
	switch o.Format {
	case "", o.Human, JSON:
		return nil
	}
	return fmt.Errorf("--output %q: must be %s or json", o.Format, o.Human)
}
