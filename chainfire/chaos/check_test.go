package chaos

import (
	"os"
	"strings"
	"testing"
)

// The checkers must catch what they are meant to catch: these histories are made up,
// no cluster involved.

func put(client int, key, val string, call, ret, rev int64) Op {
	return Op{Client: client, Input: Input{Kind: KindPut, Key: key, Value: val}, Call: call, Return: ret,
		Output: Output{Status: StatusOK, Revision: rev}}
}

func get(client int, key, val string, call, ret, mod, rev int64) Op {
	return Op{Client: client, Input: Input{Kind: KindGet, Key: key}, Call: call, Return: ret,
		Output: Output{Status: StatusOK, Found: val != "", Value: val, ModRevision: mod, Revision: rev}}
}

func cas(client int, key, old, val string, swapped bool, saw string, call, ret, rev int64) Op {
	o := Op{Client: client, Input: Input{Kind: KindCAS, Key: key, Value: val, Old: old}, Call: call, Return: ret,
		Output: Output{Status: StatusOK, Swapped: swapped, Revision: rev}}
	if !swapped {
		o.Output.Found, o.Output.Value = saw != "", saw
	}
	return o
}

func unknown(o Op) Op {
	o.Output = Output{Status: StatusUnknown, Err: "timeout"}
	o.Return = o.Call + 1
	return o
}

func TestCheckLinearizable(t *testing.T) {
	t.Setenv("PLASMA_TEST_LOG_DIR", t.TempDir())
	tests := []struct {
		name    string
		ops     []Op
		applied map[string]bool
		ok      bool
	}{
		{"sequential", []Op{put(0, "k", "a", 0, 1, 2), get(1, "k", "a", 2, 3, 2, 2), put(0, "k", "b", 4, 5, 3), get(1, "k", "b", 6, 7, 3, 3)}, nil, true},
		{"concurrent read may see either", []Op{put(0, "k", "a", 0, 1, 2), put(0, "k", "b", 2, 6, 3), get(1, "k", "a", 3, 4, 2, 2), get(2, "k", "b", 5, 7, 3, 3)}, nil, true},
		{"stale read", []Op{put(0, "k", "a", 0, 1, 2), put(0, "k", "b", 2, 3, 3), get(1, "k", "a", 4, 5, 2, 3)}, nil, false},
		{"read of a value never written", []Op{put(0, "k", "a", 0, 1, 2), get(1, "k", "x", 2, 3, 2, 2)}, nil, false},
		{"read goes back", []Op{put(0, "k", "a", 0, 1, 2), put(0, "k", "b", 2, 10, 3), get(1, "k", "b", 3, 4, 3, 3), get(1, "k", "a", 5, 6, 2, 3)}, nil, false},
		{"unknown put never seen", []Op{put(0, "k", "a", 0, 1, 2), unknown(put(1, "k", "b", 2, 0, 0)), get(2, "k", "a", 10, 11, 2, 2)}, nil, true},
		{"unknown put seen later", []Op{put(0, "k", "a", 0, 1, 2), unknown(put(1, "k", "b", 2, 0, 0)), get(2, "k", "b", 10, 11, 3, 3), get(2, "k", "b", 12, 13, 3, 3)}, nil, true},
		{"unknown put seen, then gone", []Op{put(0, "k", "a", 0, 1, 2), unknown(put(1, "k", "b", 2, 0, 0)), get(2, "k", "b", 10, 11, 3, 3), get(2, "k", "a", 12, 13, 2, 3)}, nil, false},
		{"unknown put resolved as not applied but seen", []Op{put(0, "k", "a", 0, 1, 2), unknown(put(1, "k", "b", 2, 0, 0)), get(2, "k", "b", 10, 11, 3, 3)}, map[string]bool{"a": true}, false},
		{"cas", []Op{put(0, "k", "a", 0, 1, 2), cas(1, "k", "a", "b", true, "", 2, 3, 3), cas(2, "k", "a", "c", false, "b", 4, 5, 3), get(0, "k", "b", 6, 7, 3, 3)}, nil, true},
		{"cas swapped on a stale value", []Op{put(0, "k", "a", 0, 1, 2), put(0, "k", "b", 2, 3, 3), cas(1, "k", "a", "c", true, "", 4, 5, 4)}, nil, false},
		{"cas refused although the value matched", []Op{put(0, "k", "a", 0, 1, 2), cas(1, "k", "a", "c", false, "a", 4, 5, 2)}, nil, false},
		{"unknown cas", []Op{put(0, "k", "a", 0, 1, 2), unknown(cas(1, "k", "a", "b", false, "", 2, 0, 0)), get(2, "k", "b", 10, 11, 3, 3)}, nil, true},
		{"keys are independent", []Op{put(0, "k", "a", 0, 1, 2), put(1, "j", "x", 0, 1, 3), get(2, "j", "x", 2, 3, 3, 3), get(2, "k", "a", 4, 5, 2, 3)}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := CheckLinearizable(tt.ops, tt.applied, 0, t.Name())
			if got := len(res.Problems) == 0; got != tt.ok {
				t.Fatalf("linearizable = %v, want %v; problems: %v", got, tt.ok, res.Problems)
			}
			if !tt.ok {
				if len(res.Files) != 2 {
					t.Fatalf("files %v, want a visualization and a history", res.Files)
				}
				for _, f := range res.Files {
					if st, err := os.Stat(f); err != nil || st.Size() == 0 {
						t.Fatalf("%s: %v", f, err)
					}
				}
				if !strings.Contains(res.Problems[0], "could be linearized next") {
					t.Fatalf("no offending operations in %q", res.Problems[0])
				}
			}
		})
	}
}

func TestCheckRevisions(t *testing.T) {
	tests := []struct {
		name string
		ops  []Op
		want string // "" for no problem
	}{
		{"fine", []Op{put(0, "k", "a", 0, 1, 2), get(1, "k", "a", 2, 3, 2, 2), put(1, "k", "b", 4, 5, 3)}, ""},
		{"concurrent ops may come in any order", []Op{put(0, "k", "a", 0, 5, 3), get(1, "k", "x", 1, 2, 2, 2)}, ""},
		{"back in real time", []Op{put(0, "k", "a", 0, 1, 3), get(1, "k", "x", 2, 3, 2, 2)}, "went back in real time"},
		{"write not above", []Op{put(0, "k", "a", 0, 1, 3), put(1, "j", "b", 2, 3, 3)}, "two acknowledged writes"},
		{"client goes back", []Op{get(0, "k", "a", 0, 1, 2, 5), get(0, "k", "a", 2, 3, 2, 4)}, "client 0 went back"},
		{"value from the future", []Op{get(0, "k", "a", 0, 1, 6, 5)}, "read a value of revision 6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := strings.Join(CheckRevisions(tt.ops), "\n")
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Fatalf("problems %q, want %q", got, tt.want)
			}
		})
	}
}

func TestCheckWatches(t *testing.T) {
	ops := []Op{put(0, "k", "a", 0, 1, 2), put(0, "k", "b", 2, 3, 3), unknown(put(1, "k", "c", 4, 0, 0)), get(1, "k", "c", 6, 7, 4, 4)}
	good := []Event{{2, "k", "a", false}, {3, "k", "b", false}, {4, "k", "c", false}}
	tests := []struct {
		name    string
		streams [][]Event
		ops     []Op
		want    string
	}{
		{"fine", [][]Event{good, good}, ops, ""},
		{"acknowledged write missing", [][]Event{{good[0], good[2]}, {good[0], good[2]}}, ops, "acknowledged write lost"},
		{"watchers disagree", [][]Event{good, {good[0], good[2]}}, ops, "differ at event 1"},
		{"duplicate", [][]Event{{good[0], good[1], good[1], good[2]}}, ops, "does not follow"},
		{"gap", [][]Event{{good[0], good[1], {6, "k", "c", false}}}, ops, "revisions 4..5 missing"},
		{"wrong revision", [][]Event{{good[0], {3, "k", "b", false}, good[2]}}, []Op{put(0, "k", "a", 0, 1, 2), put(0, "k", "b", 2, 3, 7)}, "shows up as"},
		{"failed write applied", [][]Event{good}, []Op{put(0, "k", "a", 0, 1, 2), put(0, "k", "b", 2, 3, 3),
			{Client: 1, Input: Input{Kind: KindPut, Key: "k", Value: "c"}, Call: 4, Return: 5, Output: Output{Status: StatusFailed}}}, "reported as not applied"},
		{"unwritten value", [][]Event{good}, ops[:2], "no client wrote"},
		{"read not in stream", [][]Event{good[:2]}, []Op{get(0, "k", "z", 0, 1, 2, 2)}, "not in the watch streams"},
		{"stream stops early", [][]Event{good[:2]}, ops[:2], "stops at revision 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := CheckWatches(tt.streams, 4, true, tt.ops, nil, nil)
			got := strings.Join(res.Problems, "\n")
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Fatalf("problems %q, want %q", got, tt.want)
			}
			if tt.want == "" && (res.Applied == nil || !res.Applied["c"] || res.State["k"].Value != "c") {
				t.Fatalf("applied %v, state %v", res.Applied, res.State)
			}
		})
	}
}
