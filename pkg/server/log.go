package server

import (
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/pflag"
)

// NewLogger builds the structured logger every binary uses: format "json" (production) or
// "text" (a terminal), level "debug", "info", "warn" or "error".
func NewLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("server: log level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("server: log format %q: want text or json", format)
	}
}

// LogFlags are the logging flags every binary shares: --log-format (text or json, default
// text) and --log-level (debug, info, warn or error, default info). Register binds the
// fields; Logger builds the logger once the flags are parsed.
type LogFlags struct {
	Format, Level string
}

// Register adds --log-format and --log-level to fs, bound to l's fields.
func (l *LogFlags) Register(fs *pflag.FlagSet) {
	fs.StringVar(&l.Format, "log-format", "text", "log format: text or json")
	fs.StringVar(&l.Level, "log-level", "info", "log level: debug, info, warn or error")
}

// Logger is [NewLogger] for w with l's format and level.
func (l LogFlags) Logger(w io.Writer) (*slog.Logger, error) { return NewLogger(w, l.Format, l.Level) }
