package chaos

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"
)

// Kind is the kind of a register operation.
type Kind uint8

// The register operations of the workload.
const (
	// KindGet is a linearizable read of one key.
	KindGet Kind = iota
	// KindPut is an unconditional write of a unique value.
	KindPut
	// KindCAS is Txn(If Value(key) == Old, Then Put(key, Value), Else Get(key)).
	KindCAS
)

// String names the kind in reports.
func (k Kind) String() string {
	switch k {
	case KindGet:
		return "get"
	case KindPut:
		return "put"
	case KindCAS:
		return "cas"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText makes kinds readable in JSON histories.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Status is how an operation ended, as far as the client can tell.
type Status uint8

const (
	// StatusOK means the call succeeded (a CAS whose compare failed is OK too).
	StatusOK Status = iota
	// StatusFailed means the call failed and, by the client's contract, had no effect:
	// a read that failed, or a write the server refused before applying (Unavailable)
	// or that never left the client.
	StatusFailed
	// StatusUnknown means a write failed in a way that leaves its outcome open
	// (chainfire.ErrOutcomeUnknown): it may or may not have taken effect, at any
	// moment after its call.
	StatusUnknown
)

// String names the status in reports.
func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusFailed:
		return "failed"
	case StatusUnknown:
		return "unknown"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// MarshalText makes statuses readable in JSON histories.
func (s Status) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Input is what a client asked for. Values are unique per write across the whole
// history, which is what makes histories checkable in reasonable time.
type Input struct {
	Kind Kind   `json:"kind"`
	Key  string `json:"key"`
	// Value is the value a put or CAS writes.
	Value string `json:"value,omitempty"`
	// Old is the value a CAS expects.
	Old string `json:"old,omitempty"`
}

// Output is what the client was told.
type Output struct {
	Status Status `json:"status"`
	// Swapped says whether a CAS took its Then branch.
	Swapped bool `json:"swapped,omitempty"`
	// Found and Value are what a get, or a CAS whose compare failed, read; Value is ""
	// when the key does not exist (no write ever writes "").
	Found bool   `json:"found,omitempty"`
	Value string `json:"value,omitempty"`
	// ModRevision is the revision of the value read.
	ModRevision int64 `json:"mod_rev,omitempty"`
	// Revision is the response header's revision: a write's own revision, a read's
	// store revision.
	Revision int64 `json:"rev,omitempty"`
	// Err is the error of a failed or indeterminate call.
	Err string `json:"err,omitempty"`
}

// Op is one operation of a history: its client, what was asked and answered, and the
// times of the call and the return in nanoseconds since the history began.
type Op struct {
	Client int    `json:"client"`
	Input  Input  `json:"in"`
	Output Output `json:"out"`
	Call   int64  `json:"call"`
	Return int64  `json:"ret"`
}

// IsWrite reports whether the op asked for a write (put or CAS).
func (o Op) IsWrite() bool { return o.Input.Kind != KindGet }

// Wrote reports whether the op is known to have written its value: an acknowledged
// put, or an acknowledged CAS that swapped.
func (o Op) Wrote() bool {
	return o.Output.Status == StatusOK && (o.Input.Kind == KindPut || o.Input.Kind == KindCAS && o.Output.Swapped)
}

// String describes the op in one line for failure reports.
func (o Op) String() string {
	in, out := o.Input, o.Output
	var s string
	switch in.Kind {
	case KindGet:
		s = fmt.Sprintf("get(%s)", in.Key)
	case KindPut:
		s = fmt.Sprintf("put(%s, %s)", in.Key, in.Value)
	case KindCAS:
		s = fmt.Sprintf("cas(%s, %s -> %s)", in.Key, orNone(in.Old), in.Value)
	}
	switch {
	case out.Status != StatusOK:
		s += " -> " + out.Status.String()
		if out.Err != "" {
			s += " (" + out.Err + ")"
		}
	case in.Kind == KindGet:
		s += fmt.Sprintf(" -> %s @mod %d", orNone(out.Value), out.ModRevision)
	case in.Kind == KindCAS && !out.Swapped:
		s += fmt.Sprintf(" -> not swapped, saw %s @mod %d", orNone(out.Value), out.ModRevision)
	default:
		s += " -> ok"
	}
	return fmt.Sprintf("[client %d %s..%s] %s rev %d", o.Client, ms(o.Call), ms(o.Return), s, out.Revision)
}

func orNone(v string) string {
	if v == "" {
		return "<none>"
	}
	return v
}

// ms formats a history timestamp as seconds with millisecond precision.
func ms(ns int64) string {
	if ns < 0 {
		return "∞"
	}
	return fmt.Sprintf("%.3fs", float64(ns)/1e9)
}

// History records the operations of concurrent clients. It is safe for concurrent
// use; timestamps come from one monotonic clock started by NewHistory.
type History struct {
	start time.Time

	mu  sync.Mutex
	ops []Op
}

// NewHistory starts an empty history whose clock starts now.
func NewHistory() *History { return &History{start: time.Now()} }

// Now returns the history's clock: nanoseconds since NewHistory.
func (h *History) Now() int64 { return int64(time.Since(h.start)) }

// Time converts a history timestamp back to wall-clock time.
func (h *History) Time(ns int64) time.Time { return h.start.Add(time.Duration(ns)) }

// Add records a finished (or given up) operation.
func (h *History) Add(op Op) {
	h.mu.Lock()
	h.ops = append(h.ops, op)
	h.mu.Unlock()
}

// Ops returns a copy of the recorded operations sorted by call time.
func (h *History) Ops() []Op {
	h.mu.Lock()
	out := append([]Op(nil), h.ops...)
	h.mu.Unlock()
	sort.SliceStable(out, func(i, j int) bool { return out[i].Call < out[j].Call })
	return out
}

// Counts summarizes a history: operations by kind and status.
func Counts(ops []Op) string {
	var n [3][3]int
	for _, o := range ops {
		n[o.Input.Kind][o.Output.Status]++
	}
	var s string
	for k := KindGet; k <= KindCAS; k++ {
		if s != "" {
			s += "; "
		}
		s += fmt.Sprintf("%s %d ok/%d failed/%d unknown", k, n[k][StatusOK], n[k][StatusFailed], n[k][StatusUnknown])
	}
	return s
}

// WriteJSON writes ops as JSON lines.
func WriteJSON(w io.Writer, ops []Op) error {
	enc := json.NewEncoder(w)
	for _, o := range ops {
		if err := enc.Encode(o); err != nil {
			return err
		}
	}
	return nil
}
