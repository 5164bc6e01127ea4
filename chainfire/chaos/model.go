package chaos

import (
	"fmt"
	"sort"

	"github.com/anishathalye/porcupine"
)

// RegisterModel is the sequential specification the histories are checked against: a
// map of registers, partitioned per key (a history is linearizable iff each key's
// sub-history is), so the state of one partition is the key's current value ("" when
// absent; no write writes "").
//
// Inputs are Input and outputs Output. An indeterminate write (StatusUnknown) is given
// the end of the history as its return time by ToPorcupine, and the model lets it take
// effect or not: porcupine may then place it anywhere after its call — including after
// every other operation, where it changes nothing. Failed operations must be filtered
// out before checking (they had no effect).
var RegisterModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(Input).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		sort.Strings(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		return step(state.(string), input.(Input), output.(Output))
	},
	Equal: func(a, b any) bool { return a.(string) == b.(string) },
	DescribeOperation: func(input, output any) string {
		return describe(input.(Input), output.(Output))
	},
	DescribeState: func(state any) string { return orNone(state.(string)) },
}

// step applies one operation to a register whose value is cur and says whether the
// operation's output is possible.
func step(cur string, in Input, out Output) (bool, string) {
	switch in.Kind {
	case KindGet:
		return out.Status == StatusOK && out.Value == cur, cur
	case KindPut:
		return true, in.Value
	case KindCAS:
		switch {
		case out.Status == StatusUnknown:
			if cur == in.Old {
				return true, in.Value
			}
			return true, cur
		case out.Swapped:
			return cur == in.Old, in.Value
		default:
			// The compare failed and the Else branch read the current value.
			return cur != in.Old && out.Value == cur, cur
		}
	}
	return false, cur
}

// describe renders an operation for porcupine's visualization.
func describe(in Input, out Output) string {
	switch in.Kind {
	case KindGet:
		return fmt.Sprintf("get(%s) → %s", in.Key, orNone(out.Value))
	case KindPut:
		s := fmt.Sprintf("put(%s, %s)", in.Key, in.Value)
		if out.Status == StatusUnknown {
			s += " ?"
		}
		return s
	default:
		s := fmt.Sprintf("cas(%s, %s → %s)", in.Key, orNone(in.Old), in.Value)
		switch {
		case out.Status == StatusUnknown:
			return s + " ?"
		case out.Swapped:
			return s + " ok"
		default:
			return s + " ✗ saw " + orNone(out.Value)
		}
	}
}

// ToPorcupine turns the history's checkable operations into porcupine's form: failed
// operations are dropped (they had no effect), and an indeterminate write gets end as
// its return time (it may take effect at any moment after its call). applied, when not
// nil, resolves indeterminate writes from a complete record of what was written (the
// watchers' streams, keyed by value): a write found there becomes a write that
// happened (still returning at end: when is unknown), one not found is dropped. The
// result is sorted by call time.
func ToPorcupine(ops []Op, end int64, applied map[string]bool) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(ops))
	for _, o := range ops {
		switch o.Output.Status {
		case StatusFailed:
			continue
		case StatusUnknown:
			if applied != nil {
				if !applied[o.Input.Value] {
					continue
				}
				o.Output = Output{Status: StatusOK, Swapped: o.Input.Kind == KindCAS, Err: "resolved: applied"}
			}
			o.Return = end
		}
		out = append(out, porcupine.Operation{ClientId: o.Client, Input: o.Input, Call: o.Call, Output: o.Output, Return: o.Return})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Call < out[j].Call })
	return out
}
