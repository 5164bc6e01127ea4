package bus

import (
	"bytes"
	"fmt"
	"slices"
	"time"

	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
)

// Limits on a SubscribeRequest.
const (
	MaxPrefixes   = 64
	MaxPrefixSize = 4096
)

// Request is a validated, normalized SubscribeRequest.
type Request struct {
	// Prefixes are sorted, distinct and none is a prefix of another (an event under
	// overlapping prefixes is therefore matched once, and the ranges are disjoint).
	Prefixes         [][]byte
	StartRevision    int64
	PrevKV           bool
	BookmarkInterval time.Duration
	Snapshot         bool
}

// Validate checks a SubscribeRequest and normalizes it. Errors wrap ErrInvalid and name
// the field.
func Validate(req *watchbusv1.SubscribeRequest) (Request, error) {
	if req == nil {
		return Request{}, fmt.Errorf("%w: empty request", ErrInvalid)
	}
	var r Request
	if len(req.GetPrefixes()) == 0 {
		return r, fmt.Errorf("%w: prefixes: at least one is required", ErrInvalid)
	}
	if len(req.GetPrefixes()) > MaxPrefixes {
		return r, fmt.Errorf("%w: prefixes: %d given, at most %d", ErrInvalid, len(req.GetPrefixes()), MaxPrefixes)
	}
	for i, p := range req.GetPrefixes() {
		if len(p) == 0 {
			return r, fmt.Errorf("%w: prefixes[%d]: must not be empty", ErrInvalid, i)
		}
		if len(p) > MaxPrefixSize {
			return r, fmt.Errorf("%w: prefixes[%d]: %d bytes, at most %d", ErrInvalid, i, len(p), MaxPrefixSize)
		}
	}
	if req.GetStartRevision() < 0 {
		return r, fmt.Errorf("%w: start_revision: %d is negative", ErrInvalid, req.GetStartRevision())
	}
	r.BookmarkInterval = DefaultBookmarkInterval
	if bi := req.GetBookmarkInterval(); bi != nil {
		if err := bi.CheckValid(); err != nil {
			return r, fmt.Errorf("%w: bookmark_interval: %v", ErrInvalid, err)
		}
		d := bi.AsDuration()
		if d < MinBookmarkInterval || d > MaxBookmarkInterval {
			return r, fmt.Errorf("%w: bookmark_interval: %s, want between %s and %s", ErrInvalid, d, MinBookmarkInterval, MaxBookmarkInterval)
		}
		r.BookmarkInterval = d
	}
	r.Prefixes = NormalizePrefixes(req.GetPrefixes())
	r.StartRevision = req.GetStartRevision()
	r.PrevKV = req.GetPrevKv()
	r.Snapshot = req.GetSnapshot()
	return r, nil
}

// NormalizePrefixes returns the prefixes sorted, without duplicates and without any
// prefix that another one covers. The input is not modified.
func NormalizePrefixes(in [][]byte) [][]byte {
	ps := slices.Clone(in)
	slices.SortFunc(ps, bytes.Compare)
	out := ps[:0]
	for _, p := range ps {
		// Sorted order puts a covering prefix right before the prefixes it covers.
		if len(out) > 0 && bytes.HasPrefix(p, out[len(out)-1]) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// Match reports whether key is under one of the normalized prefixes.
func (r *Request) Match(key []byte) bool {
	for _, p := range r.Prefixes {
		if bytes.HasPrefix(key, p) {
			return true
		}
	}
	return false
}
