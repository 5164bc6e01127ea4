package node

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hashicorp/raft"

	"plasmacloud.dev/chainfire/internal/mvcc"
)

// Recover rewrites the raft configuration of a stopped member's data directory after a loss
// of quorum: the members of cfg.InitialCluster become the whole cluster. It is raft's
// RecoverCluster: every entry in this member's log counts as committed, the store is brought
// up to the last of them, a snapshot with the new configuration replaces the log. Start the
// member normally afterwards; it elects itself (or waits for the other listed members, which
// must have been recovered with the same list), and further members join with member add.
//
// The caller must make sure no process uses the data directory (pebble's lock enforces it).
func Recover(cfg Config) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Name == "" || cfg.DataDir == "" {
		return fmt.Errorf("recover needs --name and --data-dir")
	}
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "kv")); err != nil {
		return fmt.Errorf("recover: %s holds no ChainFire store: %w", cfg.DataDir, err)
	}
	members, err := cfg.initialMembers()
	if err != nil {
		return err
	}
	self := false
	for _, m := range members {
		self = self || m.Name == cfg.Name
	}
	conf := raftConfiguration(members)
	if !self {
		return fmt.Errorf("recover: --initial-cluster has no entry for --name %q", cfg.Name)
	}
	store, err := mvcc.Open(filepath.Join(cfg.DataDir, "kv"), mvcc.Options{})
	if err != nil {
		return fmt.Errorf("recover: open store: %w", err)
	}
	defer store.Close()
	rs, err := openRaftState(cfg)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	defer rs.logs.Close()
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(serverID(MemberID(cfg.InitialAdvertisePeerURLs, cfg.InitialClusterToken)))
	rc.Logger = rs.logger
	_, trans := raft.NewInmemTransport("")
	before := store.AppliedIndex()
	if err := raft.RecoverCluster(rc, newFSM(store, nil), rs.logs.LogStore, rs.logs.StableStore, rs.snaps, trans, conf); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	cur, _ := store.Revision()
	cfg.Logger.Info("recovered", "members", len(conf.Servers), "applied_index_before", before, "applied_index", store.AppliedIndex(), "revision", cur)
	return nil
}
