package node

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/hashicorp/raft"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// memberTable caches the replicated member metadata (names, URLs) for the hot forwarding
// path; it is rebuilt from the store whenever a member command is applied.
type memberTable = map[uint64]*peerv1.MemberPut

func (n *Node) loadMembers() {
	ms, err := n.store.Members()
	if err != nil {
		n.log.Error("load members", "err", err)
		return
	}
	t := make(memberTable, len(ms))
	for _, m := range ms {
		t[m.Id] = m
	}
	n.members.Store(&t)
}

func (n *Node) member(id uint64) *peerv1.MemberPut {
	t := n.members.Load()
	if t == nil {
		return nil
	}
	return (*t)[id]
}

// observeApply runs on the FSM goroutine after every applied command.
func (n *Node) observeApply(cmd *peerv1.Command, res mvcc.ApplyResult) {
	n.lessor.observe(cmd, res)
	switch cmd.Op.(type) {
	case *peerv1.Command_MemberPut, *peerv1.Command_MemberDelete:
		n.loadMembers()
		select { // a member that published itself may be ready for promotion
		case n.promoteKick <- struct{}{}:
		default:
		}
	}
}

// observeRestore runs on the FSM goroutine after a snapshot replaced the state.
func (n *Node) observeRestore() {
	n.lessor.reload()
	n.loadMembers()
}

func parseServerID(s string) uint64 {
	id, _ := strconv.ParseUint(s, 16, 64)
	return id
}

// MemberList lists the members of the raft configuration with their published metadata.
func (n *Node) MemberList(ctx context.Context) ([]*pb.Member, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrStopped, err)
	}
	var out []*pb.Member
	for _, s := range f.Configuration().Servers {
		id := parseServerID(string(s.ID))
		m := &pb.Member{ID: id, IsLearner: s.Suffrage == raft.Nonvoter, PeerURLs: []string{"http://" + string(s.Address)}}
		if meta := n.member(id); meta != nil {
			// A member added as a voter stays a raft non-voter until it has caught up; it is
			// reported as what it was added as.
			m.IsLearner = meta.IsLearner
			m.Name = meta.Name
			if len(meta.PeerUrls) > 0 {
				m.PeerURLs = meta.PeerUrls
			}
			m.ClientURLs = meta.ClientUrls
		}
		out = append(out, m)
	}
	return out, nil
}

// onLeader runs local on the leader; on a follower it runs remote against the leader's client
// URL, looking the leader up again while the leader answers it is not (or is unreachable
// before the request was sent).
func (n *Node) onLeader(ctx context.Context, local func() error, remote func(c *peerConn) error) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultRequestTimeout)
		defer cancel()
	}
	for {
		if n.stopping.Load() {
			return ErrStopped
		}
		if n.raft.State() == raft.Leader {
			err := local()
			if err != ErrNotLeader {
				return err
			}
		} else if url := n.leaderClientURL(); url != "" {
			err := remote(n.peers.get(url))
			if err == nil || !retryableForward(err) {
				return err
			}
		}
		if err := n.pause(ctx); err != nil {
			return err
		}
	}
}

// MemberAdd adds a member (a learner when isLearner) with the given peer URLs. The new member
// then starts with --initial-cluster-state existing and catches up from the leader.
func (n *Node) MemberAdd(ctx context.Context, req *pb.MemberAddRequest) (*pb.MemberAddResponse, error) {
	var out *pb.MemberAddResponse
	err := n.onLeader(ctx, func() error {
		if len(req.PeerURLs) == 0 {
			return fmt.Errorf("%w: member_add.peer_urls is empty", mvcc.ErrInvalid)
		}
		addr, err := hostPort(req.PeerURLs[0])
		if err != nil {
			return fmt.Errorf("%w: member_add.peer_urls: %v", mvcc.ErrInvalid, err)
		}
		id := MemberID(req.PeerURLs, n.cfg.InitialClusterToken)
		members, err := n.MemberList(ctx)
		if err != nil {
			return err
		}
		for _, m := range members {
			if m.ID == id {
				return fmt.Errorf("%w: %v", ErrMemberExists, req.PeerURLs)
			}
		}
		// Every new member joins raft as a non-voter, so adding one never costs the cluster
		// its quorum while the new process is not up yet (hashicorp/raft applies a
		// configuration when it is appended). A member added as a voter is promoted by
		// promoteCaughtUp once it has caught up and published itself.
		meta := &peerv1.MemberPut{Id: id, PeerUrls: req.PeerURLs, IsLearner: req.IsLearner}
		if _, err := n.Propose(ctx, &peerv1.Command{Op: &peerv1.Command_MemberPut{MemberPut: meta}}); err != nil {
			return err
		}
		if err := n.raft.AddNonvoter(raft.ServerID(serverID(id)), raft.ServerAddress(addr), 0, time.Until(deadline(ctx))).Error(); err != nil {
			return raftErr(err)
		}
		all, err := n.MemberList(ctx)
		if err != nil {
			return err
		}
		out = &pb.MemberAddResponse{Member: &pb.Member{ID: id, PeerURLs: req.PeerURLs, IsLearner: req.IsLearner}, Members: all}
		return nil
	}, func(c *peerConn) error {
		resp, err := c.cluster.MemberAdd(ctx, forwardHeader(connect.NewRequest(req)))
		if err == nil {
			out = resp.Msg
		}
		return err
	})
	return out, err
}

// MemberRemove removes a member from the raft configuration and the member table.
func (n *Node) MemberRemove(ctx context.Context, id uint64) ([]*pb.Member, error) {
	var out []*pb.Member
	err := n.onLeader(ctx, func() error {
		if !n.inConfig(id) {
			return fmt.Errorf("%w: %x", ErrMemberNotFound, id)
		}
		if id == n.id && len(n.votersExceptSelf()) > 0 {
			// A leader removing itself would have no leader left to record the removal
			// with: hand leadership over first, then let the new leader remove us.
			if err := n.raft.LeadershipTransfer().Error(); err != nil {
				return fmt.Errorf("%w: hand over leadership before removing this member: %v", ErrNoLeader, err)
			}
			return ErrNotLeader
		}
		if err := n.raft.RemoveServer(raft.ServerID(serverID(id)), 0, time.Until(deadline(ctx))).Error(); err != nil {
			return raftErr(err)
		}
		if _, err := n.Propose(ctx, &peerv1.Command{Op: &peerv1.Command_MemberDelete{MemberDelete: &peerv1.MemberDelete{Id: id}}}); err != nil {
			return err
		}
		var err error
		out, err = n.MemberList(ctx)
		return err
	}, func(c *peerConn) error {
		resp, err := c.cluster.MemberRemove(ctx, forwardHeader(connect.NewRequest(&pb.MemberRemoveRequest{ID: id})))
		if err == nil {
			out = resp.Msg.Members
		}
		return err
	})
	return out, err
}

// MemberPromote turns a learner into a voter.
func (n *Node) MemberPromote(ctx context.Context, id uint64) ([]*pb.Member, error) {
	var out []*pb.Member
	err := n.onLeader(ctx, func() error {
		var found *raft.Server
		if f := n.raft.GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if parseServerID(string(s.ID)) == id {
					found = &s
				}
			}
		}
		if found == nil {
			return fmt.Errorf("%w: %x", ErrMemberNotFound, id)
		}
		if found.Suffrage == raft.Voter {
			return fmt.Errorf("%w: member %x is not a learner", mvcc.ErrInvalid, id)
		}
		if err := n.raft.AddVoter(found.ID, found.Address, 0, time.Until(deadline(ctx))).Error(); err != nil {
			return raftErr(err)
		}
		if meta := n.member(id); meta != nil {
			up := &peerv1.MemberPut{Id: id, Name: meta.Name, PeerUrls: meta.PeerUrls, ClientUrls: meta.ClientUrls}
			if _, err := n.Propose(ctx, &peerv1.Command{Op: &peerv1.Command_MemberPut{MemberPut: up}}); err != nil {
				return err
			}
		}
		var err error
		out, err = n.MemberList(ctx)
		return err
	}, func(c *peerConn) error {
		resp, err := c.cluster.MemberPromote(ctx, forwardHeader(connect.NewRequest(&pb.MemberPromoteRequest{ID: id})))
		if err == nil {
			out = resp.Msg.Members
		}
		return err
	})
	return out, err
}

// MoveLeader hands leadership to the member with the given id.
func (n *Node) MoveLeader(ctx context.Context, target uint64) error {
	return n.onLeader(ctx, func() error {
		if target == n.id {
			return nil
		}
		var addr raft.ServerAddress
		if f := n.raft.GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if parseServerID(string(s.ID)) == target && s.Suffrage == raft.Voter {
					addr = s.Address
				}
			}
		}
		if addr == "" {
			return fmt.Errorf("%w: %x (or it is a learner)", ErrMemberNotFound, target)
		}
		return raftErr(n.raft.LeadershipTransferToServer(raft.ServerID(serverID(target)), addr).Error())
	}, func(c *peerConn) error {
		_, err := c.maint.MoveLeader(ctx, forwardHeader(connect.NewRequest(&pb.MoveLeaderRequest{TargetID: target})))
		return err
	})
}

func (n *Node) inConfig(id uint64) bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if parseServerID(string(s.ID)) == id {
			return true
		}
	}
	return false
}

func raftErr(err error) error {
	switch {
	case err == nil:
		return nil
	case err == raft.ErrNotLeader:
		return ErrNotLeader
	case err == raft.ErrLeadershipLost:
		return fmt.Errorf("%w: %v", ErrResultUnknown, err)
	default:
		return fmt.Errorf("%w: %v", ErrNoLeader, err)
	}
}

// promoteCaughtUp runs on every member and acts on the leader: a non-voter whose member
// record says it was added as a voter becomes a voter once it has published its name (it
// then knows the leader and has applied the log up to its own record).
func (n *Node) promoteCaughtUp() {
	defer n.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-n.stopCh:
			return
		case <-t.C:
		case <-n.promoteKick:
		}
		if n.raft.State() != raft.Leader || n.leaderReadyTerm.Load() != n.raft.CurrentTerm() {
			continue
		}
		f := n.raft.GetConfiguration()
		if f.Error() != nil {
			continue
		}
		for _, s := range f.Configuration().Servers {
			if s.Suffrage != raft.Nonvoter {
				continue
			}
			meta := n.member(parseServerID(string(s.ID)))
			if meta == nil || meta.IsLearner || meta.Name == "" {
				continue
			}
			if err := n.raft.AddVoter(s.ID, s.Address, 0, 5*time.Second).Error(); err != nil {
				n.log.Warn("promote caught-up member failed", "member", string(s.ID), "err", err)
				continue
			}
			n.log.Info("member promoted to voter", "member", string(s.ID), "name", meta.Name)
		}
	}
}
