// Package audit writes IAM's audit trail: one structured log record per security-relevant
// event (token issued, refused, revoked; any change to users, service accounts, projects,
// roles, bindings or keys). Records go to their own slog logger (stderr by default, its own
// file with --audit-log), always at INFO with "audit"=true, so they can be routed apart
// from operational logs. A Logger is safe for concurrent use.
package audit

import (
	"context"
	"log/slog"
)

// Outcome of an audited action.
const (
	Success = "success"
	Failure = "failure"
)

// Event is one audited action. Action is a dotted verb ("token.issue", "token.refuse",
// "token.revoke", "user.create", "binding.delete", "key.rotate", ...). Actor is the
// principal that asked ("user:alice"), or "" for an unauthenticated caller (logins);
// Target names the object acted on. Reason explains a failure (never a secret: no
// passwords, tokens or hashes go into an Event). Attrs carries anything else.
type Event struct {
	Action  string
	Actor   string
	Target  string
	Outcome string
	Reason  string
	Source  string // caller's address, when known
	Attrs   []slog.Attr
}

// Logger records Events.
type Logger struct {
	log *slog.Logger
}

// New returns a Logger writing to log; a nil log discards.
func New(log *slog.Logger) *Logger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Logger{log: log}
}

// Record writes e as one record.
func (l *Logger) Record(ctx context.Context, e Event) {
	if e.Outcome == "" {
		e.Outcome = Success
	}
	attrs := make([]slog.Attr, 0, 8+len(e.Attrs))
	attrs = append(attrs,
		slog.Bool("audit", true),
		slog.String("action", e.Action),
		slog.String("outcome", e.Outcome),
	)
	for _, kv := range [][2]string{{"actor", e.Actor}, {"target", e.Target}, {"reason", e.Reason}, {"source", e.Source}} {
		if kv[1] != "" {
			attrs = append(attrs, slog.String(kv[0], kv[1]))
		}
	}
	attrs = append(attrs, e.Attrs...)
	l.log.LogAttrs(ctx, slog.LevelInfo, "audit", attrs...)
}
