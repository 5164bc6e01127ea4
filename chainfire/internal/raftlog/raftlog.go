// Package raftlog opens the raft log and stable store a member keeps its consensus state in:
// raft-wal, Consul's segment-file log (the default), or raft-boltdb/v2. Both fsync every
// append. BenchmarkStoreLogs compares them: raft-wal appends 2.6-2.8x faster (one write and
// one fsync per batch, where a bolt transaction fsyncs twice and rewrites B+tree pages);
// docs/chainfire/performance.md has the figures. raft-wal must be v0.4.2 or later: v0.4.0
// could not reopen a log whose tail was truncated (hashicorp/raft-wal#31, found by the chaos
// suite; TestReopenAfterTailTruncation).
package raftlog

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	raftwal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"
)

// Kinds are the accepted store names.
var Kinds = []string{"boltdb", "wal"}

// Store is an open log + stable store; Close releases it.
type Store struct {
	raft.LogStore
	raft.StableStore
	Close func() error
}

// Open opens (creating if needed) the store of the given kind under dir.
func Open(kind, dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("raftlog: %w", err)
	}
	switch kind {
	case "wal":
		walDir := filepath.Join(dir, "wal")
		if err := os.MkdirAll(walDir, 0o700); err != nil {
			return nil, fmt.Errorf("raftlog: %w", err)
		}
		// raft-wal's Close leaves its meta database open (and flock-ed); own it to close it.
		meta := &metadb.BoltMetaDB{}
		w, err := raftwal.Open(walDir, raftwal.WithMetaStore(meta))
		if err != nil {
			meta.Close()
			return nil, fmt.Errorf("raftlog: open raft-wal: %w", err)
		}
		return &Store{LogStore: w, StableStore: w, Close: func() error { return errors.Join(w.Close(), meta.Close()) }}, nil
	case "boltdb", "":
		b, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
		if err != nil {
			return nil, fmt.Errorf("raftlog: open raft-boltdb: %w", err)
		}
		return &Store{LogStore: b, StableStore: b, Close: b.Close}, nil
	default:
		return nil, fmt.Errorf("raftlog: unknown log store %q (want boltdb or wal)", kind)
	}
}
