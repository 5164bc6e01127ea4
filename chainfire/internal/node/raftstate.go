package node

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"plasmacloud.dev/chainfire/internal/raftlog"
)

// raftState is a member's on-disk raft state: the log and stable store, the snapshot store
// and raft's logger. The server, recover and snapshot restore all open it the same way.
type raftState struct {
	logs   *raftlog.Store
	snaps  *raft.FileSnapshotStore
	logger hclog.Logger
}

func openRaftState(cfg Config) (*raftState, error) {
	dir := filepath.Join(cfg.DataDir, "raft")
	logs, err := raftlog.Open(cfg.LogStore, dir)
	if err != nil {
		return nil, fmt.Errorf("chainfire: %w", err)
	}
	hl := hclog.New(&hclog.LoggerOptions{Name: "raft", Level: hclog.Warn, Output: os.Stderr})
	snaps, err := raft.NewFileSnapshotStoreWithLogger(dir, 2, hl)
	if err != nil {
		logs.Close()
		return nil, fmt.Errorf("chainfire: snapshot store: %w", err)
	}
	return &raftState{logs: logs, snaps: snaps, logger: hl}, nil
}
