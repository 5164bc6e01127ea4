package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
)

// readBatcher shares one read-index round among all linearizable reads that arrive while the
// previous round is in flight: one VerifyLeader (one heartbeat round) or one ReadIndex RPC to
// the leader serves them all. A read never joins a round that started before it arrived,
// which is what keeps it linearizable.
type readBatcher struct {
	n       *Node
	mu      sync.Mutex
	pending []chan readResult
	running bool
}

type readResult struct {
	index uint64
	err   error
}

// index returns a read index obtained after the call began.
func (b *readBatcher) index(ctx context.Context) (uint64, error) {
	ch := make(chan readResult, 1)
	b.mu.Lock()
	b.pending = append(b.pending, ch)
	if !b.running {
		b.running = true
		go b.loop()
	}
	b.mu.Unlock()
	select {
	case r := <-ch:
		return r.index, r.err
	case <-ctx.Done():
		return 0, fmt.Errorf("%w: read barrier: %v", ErrNoLeader, context.Cause(ctx))
	}
}

func (b *readBatcher) loop() {
	for {
		b.mu.Lock()
		batch := b.pending
		b.pending = nil
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 2*b.n.cfg.ElectionTimeout+time.Second)
		start := time.Now()
		idx, err := b.n.readIndexRound(ctx)
		cancel()
		b.n.metrics.readIndexDuration.Observe(time.Since(start).Seconds())
		for _, ch := range batch {
			ch <- readResult{idx, err}
		}
	}
}

// readIndexRound obtains a linearizable read index: on the leader its commit index confirmed
// by a heartbeat round to a quorum, on a follower the leader's answer to ReadIndex.
func (n *Node) readIndexRound(ctx context.Context) (uint64, error) {
	for {
		if n.stopping.Load() {
			return 0, ErrStopped
		}
		if n.raft.State() == raft.Leader {
			idx, err := n.leaderReadIndex()
			if err == nil || !errors.Is(err, raft.ErrNotLeader) {
				return idx, err
			}
		} else if url := n.leaderClientURL(); url != "" {
			// One election timeout per attempt: a leader that hangs or is cut off neither
			// answers nor refuses, and by then another may have been elected.
			actx, cancel := context.WithTimeout(ctx, n.cfg.ElectionTimeout)
			resp, err := n.peers.get(url).peer.ReadIndex(actx, forwardHeader(connect.NewRequest(&peerv1.ReadIndexRequest{})))
			cancel()
			if err == nil {
				return resp.Msg.Index, nil
			}
			if !retryableForward(err) && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				// A read is idempotent: any failure just means "ask again".
				n.log.Debug("read index from leader failed", "err", err)
			}
		}
		if err := n.pause(ctx); err != nil {
			return 0, err
		}
	}
}

// leaderReadIndex is the leader's half: wait until the leader has committed an entry of its
// own term, read the commit index, then confirm leadership with a quorum.
func (n *Node) leaderReadIndex() (uint64, error) {
	if n.leaderReadyTerm.Load() != n.raft.CurrentTerm() {
		return 0, fmt.Errorf("%w: new leader not ready yet", ErrNoLeader)
	}
	idx := n.raft.CommitIndex()
	if err := n.raft.VerifyLeader().Error(); err != nil {
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) {
			return 0, raft.ErrNotLeader
		}
		return 0, fmt.Errorf("%w: %v", ErrNoLeader, err)
	}
	return idx, nil
}

// ReadIndex serves a follower's ReadIndex request: only the leader answers.
func (n *Node) ReadIndex(ctx context.Context) (uint64, uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, 0, ErrNotLeader
	}
	idx, err := n.reads.index(ctx)
	return idx, n.raft.CurrentTerm(), err
}

// LinearizableBarrier returns once this member's store reflects every write acknowledged
// before the call: reads served after it are linearizable.
func (n *Node) LinearizableBarrier(ctx context.Context) error {
	idx, err := n.reads.index(ctx)
	if err != nil {
		return err
	}
	return n.waitApplied(ctx, idx)
}

// waitApplied waits until the store has applied every entry up to idx. Raft never hands
// no-op and barrier entries to the FSM, so entries up to idx that are all of those kinds
// count as applied once raft has dispatched them.
func (n *Node) waitApplied(ctx context.Context, idx uint64) error {
	for {
		ch := n.fsm.WaitCh()
		applied := n.fsm.Applied()
		if applied >= idx {
			return nil
		}
		if n.raft.AppliedIndex() >= idx && n.onlyNonFSMEntries(applied+1, idx) {
			return nil
		}
		select {
		case <-ch:
		case <-time.After(2 * time.Millisecond):
		case <-n.stopCh:
			return ErrStopped
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting to apply index %d (applied %d): %v", ErrNoLeader, idx, applied, context.Cause(ctx))
		}
	}
}

func (n *Node) onlyNonFSMEntries(from, to uint64) bool {
	if to-from > 16 {
		return false
	}
	var l raft.Log
	for i := from; i <= to; i++ {
		if err := n.logs.GetLog(i, &l); err != nil {
			return false
		}
		if l.Type == raft.LogCommand || l.Type == raft.LogConfiguration {
			return false
		}
	}
	return true
}
