package node

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
)

// defaultRequestTimeout bounds a proposal or read barrier whose context has no deadline.
const defaultRequestTimeout = 10 * time.Second

// Propose replicates cmd through raft and returns its result once this member has applied it.
// On a follower the command is forwarded to the leader. Errors: a deterministic failure of the
// command (mvcc sentinels), ErrNoLeader (not applied; retry), ErrResultUnknown (may have been
// applied), ErrStopped, or a *connect.Error relayed from the leader.
func (n *Node) Propose(ctx context.Context, cmd *peerv1.Command) (*peerv1.Result, error) {
	return n.propose(ctx, cmd, true)
}

// ProposeLocal is Propose for a request forwarded by another member: it never forwards again
// and answers ErrNotLeader when this member is not the leader.
func (n *Node) ProposeLocal(ctx context.Context, cmd *peerv1.Command) (*peerv1.Result, error) {
	return n.propose(ctx, cmd, false)
}

func (n *Node) propose(ctx context.Context, cmd *peerv1.Command, forward bool) (*peerv1.Result, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultRequestTimeout)
		defer cancel()
	}
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("chainfire: encode command: %w", err)
	}
	for {
		if n.stopping.Load() {
			return nil, ErrStopped
		}
		if n.raft.State() == raft.Leader {
			res, err := n.applyLocal(ctx, data)
			if !errors.Is(err, raft.ErrNotLeader) && !errors.Is(err, raft.ErrLeadershipTransferInProgress) {
				return res, err
			}
		} else if !forward {
			return nil, ErrNotLeader
		} else if url := n.leaderClientURL(); url != "" {
			n.metrics.proposalsForwarded.Inc()
			req := forwardHeader(connect.NewRequest(&peerv1.ProposeRequest{Command: cmd}))
			req.Header().Set(ForwardDeadlineHeader, strconv.FormatInt(deadline(ctx).UnixNano(), 10))
			resp, err := n.peers.get(url).peer.Propose(ctx, req)
			if err == nil {
				return resp.Msg.Result, nil
			}
			if !retryableForward(err) {
				if connect.IsWireError(err) {
					return nil, err
				}
				n.metrics.proposalsFailed.Inc()
				return nil, fmt.Errorf("%w: forwarding to the leader failed: %v", ErrResultUnknown, err)
			}
		}
		if err := n.pause(ctx); err != nil {
			n.metrics.proposalsFailed.Inc()
			return nil, err
		}
	}
}

// pause waits a little before looking for the leader again; it returns ErrNoLeader when ctx
// ends first.
func (n *Node) pause(ctx context.Context) error {
	select {
	case <-time.After(10 * time.Millisecond):
		return nil
	case <-n.stopCh:
		return ErrStopped
	case <-ctx.Done():
		return fmt.Errorf("%w: %v", ErrNoLeader, context.Cause(ctx))
	}
}

// applyLocal proposes on the leader and waits for the local FSM to apply the entry.
func (n *Node) applyLocal(ctx context.Context, data []byte) (*peerv1.Result, error) {
	timeout := time.Until(deadline(ctx))
	if timeout <= 0 {
		return nil, fmt.Errorf("%w: %v", ErrNoLeader, context.DeadlineExceeded)
	}
	f := n.raft.Apply(data, timeout)
	if err := f.Error(); err != nil {
		switch {
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			return nil, err
		case errors.Is(err, raft.ErrEnqueueTimeout):
			n.metrics.proposalsFailed.Inc()
			return nil, fmt.Errorf("%w: %v", ErrNoLeader, err)
		default: // lost leadership, restored snapshot or shutdown after the entry was queued
			n.metrics.proposalsFailed.Inc()
			return nil, fmt.Errorf("%w: %v", ErrResultUnknown, err)
		}
	}
	n.metrics.proposalsCommitted.Inc()
	res, _ := f.Response().(mvcc.ApplyResult)
	if res.Err != nil {
		return nil, res.Err
	}
	if res.Result == nil {
		return &peerv1.Result{Resp: &peerv1.Result_Empty{Empty: &peerv1.Empty{}}}, nil
	}
	return res.Result, nil
}

func deadline(ctx context.Context) time.Time {
	if d, ok := ctx.Deadline(); ok {
		return d
	}
	return time.Now().Add(defaultRequestTimeout)
}

// leaderClientURL is the leader's first advertised client URL, "" when no leader is known or
// it has not published its URLs yet.
func (n *Node) leaderClientURL() string {
	id := n.LeaderID()
	if id == 0 || id == n.id {
		return ""
	}
	m := n.member(id)
	if m == nil || len(m.ClientUrls) == 0 {
		return ""
	}
	return m.ClientUrls[0]
}
