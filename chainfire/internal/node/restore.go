package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"

	"plasmacloud.dev/chainfire/internal/mvcc"
)

// keyCurrentTerm is where hashicorp/raft keeps its current term in the stable store.
var keyCurrentTerm = []byte("CurrentTerm")

// RestoreSnapshot creates a member's data directory for a new cluster from a snapshot file
// (written by `chainfire snapshot save` or a scheduled snapshot). Run it for every member of
// the new cluster with the same snapshot and --initial-cluster, then start the members with
// --initial-cluster-state new: they hold exactly the data at the snapshot's revision, and
// the revision continues from there.
//
// The store is restored first (the stream's header and checksum are verified; a corrupt or
// truncated file is refused and nothing is left behind), then a raft snapshot at the
// store's applied index carries the new configuration, so raft resumes its log right after
// it. The data directory must not exist or be empty.
func RestoreSnapshot(cfg Config, r io.Reader) (err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	if entries, err := os.ReadDir(cfg.DataDir); err == nil && len(entries) > 0 {
		return fmt.Errorf("restore: data dir %s is not empty; restore into a new directory", cfg.DataDir)
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("restore: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(cfg.DataDir)
		}
	}()
	store, err := mvcc.Open(filepath.Join(cfg.DataDir, "kv"), mvcc.Options{Sync: true})
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer store.Close()
	if err := store.Restore(r); err != nil {
		return fmt.Errorf("restore: snapshot refused: %w", err)
	}
	index, term := store.AppliedIndex(), store.AppliedTerm()
	rev, _ := store.Revision()
	if index == 0 {
		// An empty store: the members bootstrap as a brand-new cluster.
		cfg.Logger.Info("restored an empty snapshot", "data_dir", cfg.DataDir)
		return nil
	}
	term = max(term, 1)

	members, _ := cfg.initialMembers()
	conf := raftConfiguration(members)
	rs, err := openRaftState(cfg)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer rs.logs.Close()
	if err := rs.logs.SetUint64(keyCurrentTerm, term); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	_, trans := raft.NewInmemTransport("")
	sink, err := rs.snaps.Create(raft.SnapshotVersionMax, index, term, conf, 1, trans)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	snap, err := store.Snapshot()
	if err != nil {
		sink.Cancel()
		return fmt.Errorf("restore: %w", err)
	}
	defer snap.Release()
	if _, err := snap.WriteTo(sink); err != nil {
		sink.Cancel()
		return fmt.Errorf("restore: write raft snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	cfg.Logger.Info("restored snapshot", "data_dir", cfg.DataDir, "revision", rev, "raft_index", index, "members", len(conf.Servers))
	return nil
}
