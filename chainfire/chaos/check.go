package chaos

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"

	"plasmacloud.dev/pkg/chainfire"
)

// maxProblems caps how many violations of one kind a checker reports.
const maxProblems = 20

// problems collects check failures, keeping the first maxProblems of each check.
type problems struct {
	list    []string
	dropped int
}

func (p *problems) add(format string, args ...any) {
	if len(p.list) >= maxProblems {
		p.dropped++
		return
	}
	p.list = append(p.list, fmt.Sprintf(format, args...))
}

func (p *problems) result() []string {
	if p.dropped > 0 {
		return append(p.list, fmt.Sprintf("... and %d more", p.dropped))
	}
	return p.list
}

// ArtifactDir returns the directory failed checks write their files to:
// $PLASMA_TEST_LOG_DIR/chaos when that is set (CI archives it), otherwise a new
// temporary directory that is kept (a test's TempDir is deleted when it ends).
func ArtifactDir() (string, error) {
	if d := os.Getenv("PLASMA_TEST_LOG_DIR"); d != "" {
		d = filepath.Join(d, "chaos")
		return d, os.MkdirAll(d, 0o755)
	}
	return os.MkdirTemp("", "chainfire-chaos-")
}

// LinearizabilityResult is the outcome of CheckLinearizable.
type LinearizabilityResult struct {
	// Problems are the violations found (empty when the history is linearizable).
	Problems []string
	// TimedOut lists the keys whose check ran out of time (neither proven nor refuted).
	TimedOut []string
	// Files are the visualizations and histories written for failing keys.
	Files []string
	// Checked is the number of operations checked; Resolved the number of
	// indeterminate writes the watch streams decided.
	Checked, Resolved int
}

// CheckLinearizable checks ops key by key with porcupine against RegisterModel.
// applied, when not nil, lists every value written (from complete watch streams) and
// resolves indeterminate writes (see ToPorcupine). For a key that is not linearizable
// it writes porcupine's visualization and the key's history (JSON lines) to
// ArtifactDir, named after name, and reports the paths with the offending part of the
// history: the end of the longest linearizable prefix and the operations that could
// not follow it.
func CheckLinearizable(ops []Op, applied map[string]bool, timeout time.Duration, name string) LinearizabilityResult {
	var res LinearizabilityResult
	var end int64
	for _, o := range ops {
		end = max(end, o.Call, o.Return)
		if o.Output.Status == StatusUnknown && applied != nil {
			res.Resolved++
		}
	}
	all := ToPorcupine(ops, end+1, applied)
	res.Checked = len(all)
	model := RegisterModel
	model.Partition = nil
	for _, part := range RegisterModel.Partition(all) {
		key := part[0].Input.(Input).Key
		result, info := porcupine.CheckOperationsVerbose(model, part, timeout)
		switch result {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			res.TimedOut = append(res.TimedOut, key)
			continue
		}
		msg := fmt.Sprintf("history of %s (%d operations) is not linearizable:\n%s", key, len(part), offending(part, info))
		if dir, err := ArtifactDir(); err != nil {
			msg += fmt.Sprintf("\n(no artifact directory: %v)", err)
		} else {
			base := filepath.Join(dir, sanitize(name+"-"+key))
			if err := porcupine.VisualizePath(model, info, base+".html"); err != nil {
				msg += fmt.Sprintf("\n(visualization failed: %v)", err)
			} else {
				res.Files = append(res.Files, base+".html")
				msg += "\nvisualization: " + base + ".html"
			}
			if f, err := os.Create(base + ".jsonl"); err == nil {
				var keyOps []Op
				for _, o := range ops {
					if o.Input.Key == key {
						keyOps = append(keyOps, o)
					}
				}
				WriteJSON(f, keyOps)
				f.Close()
				res.Files = append(res.Files, base+".jsonl")
				msg += "\nhistory (all of the key's operations, failed ones too): " + base + ".jsonl"
			}
		}
		res.Problems = append(res.Problems, msg)
	}
	return res
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == ':' {
			return '_'
		}
		return r
	}, s)
}

// offending describes where the linearization of part got stuck: the last operations
// of the longest linearizable prefix porcupine found, with the register's value after
// each, then the first operations (by call time) it could not linearize after it.
func offending(part []porcupine.Operation, info porcupine.LinearizationInfo) string {
	var longest []int
	for _, l := range info.PartialLinearizations()[0] {
		if len(l) > len(longest) {
			longest = l
		}
	}
	var b strings.Builder
	state := ""
	done := make([]bool, len(part))
	for _, id := range longest {
		_, state = step(state, part[id].Input.(Input), part[id].Output.(Output))
		done[id] = true
	}
	fmt.Fprintf(&b, "  longest linearizable prefix: %d of %d operations; its last ones (value after each):\n", len(longest), len(part))
	state = ""
	for i, id := range longest {
		_, state = step(state, part[id].Input.(Input), part[id].Output.(Output))
		if i >= len(longest)-8 {
			fmt.Fprintf(&b, "    %s   => %s\n", opOf(part[id]), orNone(state))
		}
	}
	b.WriteString("  then none of these could be linearized next (first by call time):\n")
	n := 0
	for id := range part {
		if done[id] {
			continue
		}
		fmt.Fprintf(&b, "    %s\n", opOf(part[id]))
		if n++; n == 12 {
			break
		}
	}
	return strings.TrimRight(b.String(), "\n")
}

func opOf(p porcupine.Operation) Op {
	return Op{Client: p.ClientId, Input: p.Input.(Input), Output: p.Output.(Output), Call: p.Call, Return: p.Return}
}

// CheckRevisions checks the revisions in the headers of successful operations:
//
//   - per client, they never decrease, and every write's is above all earlier ones;
//   - across clients, in real time: an operation that began after another returned has
//     a revision at least as high, strictly higher for a write;
//   - no two acknowledged writes share a revision;
//   - a read's value is never newer than the revision it was read at.
func CheckRevisions(ops []Op) []string {
	var p problems
	var okOps []Op
	for _, o := range ops {
		if o.Output.Status == StatusOK {
			okOps = append(okOps, o)
		}
	}
	// Per client (ops is sorted by call time; a client's ops do not overlap).
	last := map[int]Op{}
	for _, o := range okOps {
		if o.Output.Revision <= 0 {
			p.add("no revision in the header: %s", o)
			continue
		}
		if o.Output.Found && o.Output.ModRevision > o.Output.Revision {
			p.add("read a value of revision %d at revision %d: %s", o.Output.ModRevision, o.Output.Revision, o)
		}
		if prev, ok := last[o.Client]; ok {
			if o.Output.Revision < prev.Output.Revision || o.Wrote() && o.Output.Revision == prev.Output.Revision {
				p.add("client %d went back in revisions: %s after %s", o.Client, o, prev)
			}
		}
		last[o.Client] = o
	}
	// Real time, across clients.
	byReturn := append([]Op(nil), okOps...)
	sort.Slice(byReturn, func(i, j int) bool { return byReturn[i].Return < byReturn[j].Return })
	var maxOp *Op
	j := 0
	for _, o := range okOps {
		for j < len(byReturn) && byReturn[j].Return < o.Call {
			if maxOp == nil || byReturn[j].Output.Revision > maxOp.Output.Revision {
				maxOp = &byReturn[j]
			}
			j++
		}
		if maxOp == nil {
			continue
		}
		if o.Output.Revision < maxOp.Output.Revision || o.Wrote() && o.Output.Revision == maxOp.Output.Revision {
			p.add("revision went back in real time: %s began after %s had returned", o, *maxOp)
		}
	}
	// Unique write revisions.
	writes := map[int64]Op{}
	for _, o := range okOps {
		if !o.Wrote() {
			continue
		}
		if prev, ok := writes[o.Output.Revision]; ok {
			p.add("two acknowledged writes at revision %d: %s and %s", o.Output.Revision, prev, o)
		}
		writes[o.Output.Revision] = o
	}
	return p.result()
}

// WatchResult is the outcome of CheckWatches.
type WatchResult struct {
	Problems []string
	// Applied holds every value the watch streams saw written: the record that
	// resolves indeterminate writes. It is nil when the streams disagree or are
	// incomplete, so nothing is resolved on their word.
	Applied map[string]bool
	// State is each key's last event up to the final revision: what every member
	// must hold at the end.
	State map[string]Event
	// Events is the number of events in a stream.
	Events int
}

// CheckWatches checks the watchers' event streams, all complete up to revision upTo,
// against each other and against the history:
//
//   - every stream has strictly increasing revisions and no duplicate values;
//   - every stream holds exactly the same events (so none has a gap the others
//     lack); with contiguous, every revision from the first event's on is there
//     (true when every write of the cluster is under the watched prefix);
//   - every acknowledged write (register or append, and extra) is in the stream, at
//     its key and at the revision its response reported — none lost;
//   - no write that failed (definitely not applied) or CAS that did not swap is there;
//   - every value in the stream was written by someone, and every value a client read
//     is in the stream at the key and revision the read reported.
func CheckWatches(streams [][]Event, upTo int64, contiguous bool, ops []Op, appends []Append, extra []Append) WatchResult {
	var p problems
	res := WatchResult{}
	if len(streams) == 0 {
		return WatchResult{Problems: []string{"no watch streams"}}
	}
	for i, s := range streams {
		var prev int64
		seen := map[string]bool{}
		for k, ev := range s {
			if ev.Revision <= prev {
				p.add("watcher %d: event %d (%s) does not follow revision %d", i, k, ev, prev)
			}
			prev = ev.Revision
			if ev.Delete {
				p.add("watcher %d: unexpected delete: %s", i, ev)
			}
			if seen[ev.Value] {
				p.add("watcher %d: value delivered twice: %s", i, ev)
			}
			seen[ev.Value] = true
		}
		if prev < upTo {
			p.add("watcher %d stops at revision %d, before the final revision %d", i, prev, upTo)
		}
	}
	agree := true
	for i := 1; i < len(streams); i++ {
		a, b := streams[0], streams[i]
		for k := 0; k < max(len(a), len(b)); k++ {
			switch {
			case k >= len(a):
				p.add("watcher %d has event %d (%s) that watcher 0 lacks (it stops at %d events)", i, k, b[k], len(a))
			case k >= len(b):
				p.add("watcher 0 has event %d (%s) that watcher %d lacks (it stops at %d events)", k, a[k], i, len(b))
			case a[k] != b[k]:
				p.add("watchers 0 and %d differ at event %d: %s vs %s", i, k, a[k], b[k])
			default:
				continue
			}
			agree = false
			break
		}
	}
	s := streams[0]
	res.Events = len(s)
	if contiguous {
		for k := 1; k < len(s); k++ {
			if s[k].Revision != s[k-1].Revision+1 {
				p.add("revisions %d..%d missing from the watch streams (between %s and %s)", s[k-1].Revision+1, s[k].Revision-1, s[k-1], s[k])
			}
		}
	}
	byValue := map[string]Event{}
	res.State = map[string]Event{}
	for _, ev := range s {
		byValue[ev.Value] = ev
		if ev.Revision <= upTo {
			res.State[ev.Key] = ev
		}
	}
	written := map[string]bool{}
	checkWrite := func(desc, key, value string, status Status, swapped bool, rev int64) {
		written[value] = true
		ev, inStream := byValue[value]
		switch {
		case status == StatusOK && swapped:
			if !inStream {
				p.add("acknowledged write lost (not in the watch streams): %s", desc)
			} else if ev.Key != key || ev.Revision != rev {
				p.add("acknowledged write at revision %d shows up as %s: %s", rev, ev, desc)
			}
		case status == StatusFailed && inStream:
			p.add("write reported as not applied was applied (%s): %s", ev, desc)
		case status == StatusOK && !swapped && inStream:
			p.add("CAS that did not swap wrote its value (%s): %s", ev, desc)
		case inStream && ev.Key != key:
			p.add("indeterminate write shows up under another key (%s): %s", ev, desc)
		}
	}
	for _, o := range ops {
		if o.IsWrite() {
			checkWrite(o.String(), o.Input.Key, o.Input.Value, o.Output.Status, o.Input.Kind == KindPut || o.Output.Swapped, o.Output.Revision)
		}
	}
	for _, a := range append(append([]Append(nil), appends...), extra...) {
		checkWrite(fmt.Sprintf("put(%s, %s) -> %s %s rev %d", a.Key, a.Value, a.Status, a.Err, a.Revision), a.Key, a.Value, a.Status, true, a.Revision)
	}
	for _, ev := range s {
		if !written[ev.Value] {
			p.add("the watch streams hold a value no client wrote: %s", ev)
		}
	}
	for _, o := range ops {
		if o.Output.Status != StatusOK || !o.Output.Found {
			continue
		}
		ev, ok := byValue[o.Output.Value]
		if !ok {
			p.add("read a value that is not in the watch streams: %s", o)
		} else if ev.Key != o.Input.Key || ev.Revision != o.Output.ModRevision {
			p.add("read %s at mod revision %d, but it was written as %s: %s", o.Output.Value, o.Output.ModRevision, ev, o)
		}
	}
	res.Problems = p.result()
	if agree && len(res.Problems) == 0 {
		res.Applied = map[string]bool{}
		for v := range byValue {
			res.Applied[v] = true
		}
	}
	return res
}

// CheckMembers compares every member's store at revision rev with want (each key's
// last event, from CheckWatches): each member is asked alone, with a serializable
// read at rev once it has applied rev, for every key under prefix, then for the hash
// of its whole key-value store at rev, which must be the same everywhere.
func CheckMembers(ctx context.Context, endpoints []string, prefix string, rev int64, want map[string]Event) []string {
	var p problems
	hashes := map[string]uint32{}
	for _, ep := range endpoints {
		cli, err := chainfire.New(chainfire.Config{Endpoints: []string{ep}, RequestTimeout: 2 * time.Second})
		if err != nil {
			p.add("%s: %v", ep, err)
			continue
		}
		func() {
			defer cli.Close()
			// Wait until the member has applied rev.
			for {
				r, err := cli.Get(ctx, prefix, chainfire.WithPrefix(), chainfire.WithSerializable(), chainfire.WithCountOnly())
				if err == nil && r.GetHeader().GetRevision() >= rev {
					break
				}
				if ctx.Err() != nil {
					p.add("%s did not reach revision %d: last answer %v, error %v", ep, rev, r.GetHeader().GetRevision(), err)
					return
				}
				time.Sleep(50 * time.Millisecond)
			}
			r, err := cli.Get(ctx, prefix, chainfire.WithPrefix(), chainfire.WithSerializable(), chainfire.WithRev(rev))
			if err != nil {
				p.add("%s: read at revision %d: %v", ep, rev, err)
				return
			}
			got := map[string]bool{}
			for _, kv := range r.Kvs {
				k := string(kv.Key)
				got[k] = true
				w, ok := want[k]
				switch {
				case !ok:
					p.add("%s holds %s=%s (mod %d), which the watchers never saw", ep, k, kv.Value, kv.ModRevision)
				case w.Value != string(kv.Value) || w.Revision != kv.ModRevision:
					p.add("%s holds %s=%s (mod %d) at revision %d, the watchers saw %s last", ep, k, kv.Value, kv.ModRevision, rev, w)
				}
			}
			var missing []string
			for k := range want {
				if !got[k] {
					missing = append(missing, k)
				}
			}
			if len(missing) > 0 {
				sort.Strings(missing)
				p.add("%s lacks %d keys at revision %d (acknowledged writes lost?), e.g. %s", ep, len(missing), rev, want[missing[0]])
			}
			h, err := cli.HashKV(ctx, ep, rev)
			if err != nil {
				p.add("%s: hash at revision %d: %v", ep, rev, err)
				return
			}
			hashes[ep] = h.Hash
		}()
	}
	firstEP := ""
	for _, ep := range endpoints {
		h, ok := hashes[ep]
		switch {
		case !ok:
		case firstEP == "":
			firstEP = ep
		case h != hashes[firstEP]:
			p.add("members' stores differ at revision %d: hash %08x at %s, %08x at %s", rev, hashes[firstEP], firstEP, h, ep)
		}
	}
	return p.result()
}
