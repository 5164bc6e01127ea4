package bus

import (
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	p := func(s ...string) [][]byte {
		var out [][]byte
		for _, x := range s {
			out = append(out, []byte(x))
		}
		return out
	}
	tests := []struct {
		name     string
		req      *watchbusv1.SubscribeRequest
		field    string // error must name it; "" means valid
		prefixes []string
	}{
		{name: "ok", req: &watchbusv1.SubscribeRequest{Prefixes: p("/b/", "/a/")}, prefixes: []string{"/a/", "/b/"}},
		{name: "overlap dropped", req: &watchbusv1.SubscribeRequest{Prefixes: p("/a/x", "/a/", "/a/")}, prefixes: []string{"/a/"}},
		{name: "nil", req: nil, field: "empty request"},
		{name: "no prefixes", req: &watchbusv1.SubscribeRequest{}, field: "prefixes"},
		{name: "empty prefix", req: &watchbusv1.SubscribeRequest{Prefixes: p("/a", "")}, field: "prefixes[1]"},
		{name: "huge prefix", req: &watchbusv1.SubscribeRequest{Prefixes: p(strings.Repeat("x", MaxPrefixSize+1))}, field: "prefixes[0]"},
		{name: "negative revision", req: &watchbusv1.SubscribeRequest{Prefixes: p("/a"), StartRevision: -1}, field: "start_revision"},
		{name: "short interval", req: &watchbusv1.SubscribeRequest{Prefixes: p("/a"), BookmarkInterval: durationpb.New(time.Millisecond)}, field: "bookmark_interval"},
		{name: "invalid duration", req: &watchbusv1.SubscribeRequest{Prefixes: p("/a"), BookmarkInterval: &durationpb.Duration{Seconds: 1, Nanos: -5}}, field: "bookmark_interval"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Validate(tc.req)
			if tc.field != "" {
				if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
					t.Fatalf("err %v, want ErrInvalid naming %q", err, tc.field)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Prefixes) != len(tc.prefixes) {
				t.Fatalf("prefixes %q, want %q", r.Prefixes, tc.prefixes)
			}
			for i := range r.Prefixes {
				if string(r.Prefixes[i]) != tc.prefixes[i] {
					t.Fatalf("prefixes %q, want %q", r.Prefixes, tc.prefixes)
				}
			}
		})
	}
}

// FuzzValidate: any request decodes and validates without panicking; a valid one has
// normalized prefixes that still match exactly the keys the original prefixes match.
func FuzzValidate(f *testing.F) {
	seed, _ := proto.Marshal(&watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte("/a/"), []byte("/a/b")}, StartRevision: 3})
	f.Add(seed, []byte("/a/b/c"))
	f.Add([]byte{}, []byte("x"))
	f.Fuzz(func(t *testing.T, data, key []byte) {
		var req watchbusv1.SubscribeRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		r, err := Validate(&req)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not wrapping ErrInvalid: %v", err)
			}
			return
		}
		orig := Request{Prefixes: req.Prefixes}
		if r.Match(key) != orig.Match(key) {
			t.Fatalf("normalized prefixes %q disagree with %q on key %q", r.Prefixes, req.Prefixes, key)
		}
		if r.BookmarkInterval < MinBookmarkInterval || r.BookmarkInterval > MaxBookmarkInterval {
			t.Fatalf("interval %s out of bounds", r.BookmarkInterval)
		}
	})
}
