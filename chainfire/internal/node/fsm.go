package node

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
)

// fsm adapts the MVCC store to raft. Raft calls ApplyBatch, Apply, Snapshot and Restore from
// its single FSM goroutine; Applied and WaitCh may be called from any goroutine.
type fsm struct {
	store   *mvcc.Store
	metrics *metrics
	// onApply, when set, sees every applied command with its outcome (the lessor learns of
	// grants and revokes from it). Called on the FSM goroutine; it must not block.
	onApply func(cmd *peerv1.Command, res mvcc.ApplyResult)
	// onRestore, when set, runs after a snapshot replaced the state (FSM goroutine).
	onRestore func()

	applied atomic.Uint64 // last raft index handed to the store (commands and configurations)

	mu     sync.Mutex
	waitCh chan struct{} // closed and replaced after every batch
}

var (
	_ raft.BatchingFSM = (*fsm)(nil)
)

func newFSM(store *mvcc.Store, m *metrics) *fsm {
	f := &fsm{store: store, metrics: m, waitCh: make(chan struct{})}
	f.applied.Store(store.AppliedIndex())
	return f
}

// Applied is the last raft index the state machine has fully applied.
func (f *fsm) Applied() uint64 { return f.applied.Load() }

// WaitCh returns a channel closed after the next batch is applied.
func (f *fsm) WaitCh() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.waitCh
}

func (f *fsm) advance(index uint64) {
	if index > f.applied.Load() {
		f.applied.Store(index)
	}
	f.mu.Lock()
	close(f.waitCh)
	f.waitCh = make(chan struct{})
	f.mu.Unlock()
}

// ApplyBatch decodes the commands among logs and applies them in one store batch. The
// returned slice holds one mvcc.ApplyResult per log (zero for configuration entries).
func (f *fsm) ApplyBatch(logs []*raft.Log) []interface{} {
	start := time.Now()
	out := make([]interface{}, len(logs))
	entries := make([]mvcc.Entry, 0, len(logs))
	pos := make([]int, 0, len(logs))
	var decodeErrs map[int]error
	for i, l := range logs {
		if l.Type != raft.LogCommand {
			out[i] = mvcc.ApplyResult{}
			continue
		}
		cmd := new(peerv1.Command)
		if err := proto.Unmarshal(l.Data, cmd); err != nil {
			if decodeErrs == nil {
				decodeErrs = map[int]error{}
			}
			decodeErrs[i] = fmt.Errorf("chainfire: undecodable log entry %d: %w", l.Index, err)
			continue
		}
		entries = append(entries, mvcc.Entry{Index: l.Index, Term: l.Term, Cmd: cmd})
		pos = append(pos, i)
	}
	if len(entries) > 0 {
		results := f.store.Apply(entries)
		for j, r := range results {
			out[pos[j]] = r
			if f.onApply != nil {
				f.onApply(entries[j].Cmd, r)
			}
		}
	}
	for i, err := range decodeErrs {
		out[i] = mvcc.ApplyResult{Err: err}
	}
	if f.metrics != nil {
		f.metrics.applyDuration.Observe(time.Since(start).Seconds())
		f.metrics.applyBatch.Observe(float64(len(logs)))
	}
	f.advance(logs[len(logs)-1].Index)
	return out
}

// Apply applies a single log; raft uses ApplyBatch, this exists for the FSM interface.
func (f *fsm) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// Snapshot captures the store at the current applied index; Persist streams it later,
// concurrently with further applies.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	snap, err := f.store.Snapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{snap: snap}, nil
}

// Restore replaces the whole state with a snapshot sent by the leader.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.store.Restore(rc); err != nil {
		return err
	}
	f.applied.Store(f.store.AppliedIndex())
	if f.onRestore != nil {
		f.onRestore()
	}
	f.advance(f.store.AppliedIndex())
	return nil
}

type fsmSnapshot struct{ snap *mvcc.Snapshot }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.snap.WriteTo(sink); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { s.snap.Release() }
