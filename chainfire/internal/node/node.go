// Package node is one ChainFire member: a hashicorp/raft instance replicating commands into
// the MVCC store, with what the API needs on top of raft — write forwarding to the leader,
// batched linearizable read barriers, the leader's lease clock, membership, and graceful
// shutdown. The API handlers (package api) call Node; they never touch raft directly.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
)

// Errors a Node returns; the API maps them to RPC codes.
var (
	// ErrNoLeader: no leader could be reached in time; nothing was applied (Unavailable).
	ErrNoLeader = errors.New("chainfire: no leader")
	// ErrResultUnknown: the proposal reached raft but its outcome is unknown (leadership lost,
	// connection lost while forwarding). The write may or may not have been applied.
	ErrResultUnknown = errors.New("chainfire: result unknown")
	// ErrStopped: the node is shutting down (Unavailable).
	ErrStopped = errors.New("chainfire: node stopped")
	// ErrNotLeader: this member is not the leader (FailedPrecondition on the peer API; the
	// forwarding member looks up the leader again).
	ErrNotLeader = errors.New("chainfire: not the leader")
	// ErrMemberNotFound, ErrMemberExists: membership changes naming an unknown / taken member.
	ErrMemberNotFound = errors.New("etcdserver: member not found")
	ErrMemberExists   = errors.New("etcdserver: peerURL exists")
)

// Node is one running member. All methods are safe for concurrent use.
type Node struct {
	cfg       Config
	log       *slog.Logger
	id        uint64
	clusterID uint64

	store   *mvcc.Store
	fsm     *fsm
	raft    *raft.Raft
	trans   *raft.NetworkTransport
	logs    raft.LogStore
	closers []func() error
	metrics *metrics
	peers   *peerClients
	lessor  *lessor
	reads   *readBatcher
	members atomic.Pointer[memberTable]
	// promoteKick wakes promoteCaughtUp when the member table changes.
	promoteKick chan struct{}

	// leaderReady is the term in which this member, as leader, has applied an entry of its
	// own term (a barrier): only then is its commit index safe for reads.
	leaderReadyTerm atomic.Uint64

	stopping atomic.Bool
	stopCh   chan struct{}
	wg       sync.WaitGroup
}

// New opens the data directory, starts raft and, for a new cluster without existing state,
// bootstraps it from --initial-cluster. It returns once raft runs; leadership comes later.
func New(cfg Config, reg prometheus.Registerer) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	members, _ := cfg.initialMembers()
	n := &Node{
		cfg:         cfg,
		log:         cfg.Logger,
		id:          MemberID(cfg.InitialAdvertisePeerURLs, cfg.InitialClusterToken),
		clusterID:   ClusterID(cfg.InitialClusterToken),
		metrics:     newMetrics(),
		stopCh:      make(chan struct{}),
		promoteKick: make(chan struct{}, 1),
	}
	n.peers = newPeerClients(cfg.PeerClientTLS)
	ok := false
	defer func() {
		if !ok {
			n.closeResources()
		}
	}()

	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "raft"), 0o700); err != nil {
		return nil, fmt.Errorf("chainfire: data dir: %w", err)
	}
	store, err := mvcc.Open(filepath.Join(cfg.DataDir, "kv"), mvcc.Options{Logger: cfg.Logger.With("component", "mvcc")})
	if err != nil {
		return nil, fmt.Errorf("chainfire: open store: %w", err)
	}
	n.store = store
	n.closers = append(n.closers, store.Close)
	n.fsm = newFSM(store, n.metrics)
	n.lessor = newLessor(n)
	n.loadMembers()
	n.fsm.onApply = n.observeApply
	n.fsm.onRestore = n.observeRestore
	n.reads = &readBatcher{n: n}

	rs, err := openRaftState(cfg)
	if err != nil {
		return nil, err
	}
	n.closers = append(n.closers, rs.logs.Close)
	stable, snaps, hl := rs.logs.StableStore, rs.snaps, rs.logger
	cache, err := raft.NewLogCache(1024, rs.logs.LogStore)
	if err != nil {
		return nil, err
	}
	n.logs = timedLogStore{LogStore: cache, h: n.metrics.logAppendDuration}
	bind, _ := hostPort(cfg.ListenPeerURLs[0])
	adv, _ := hostPort(cfg.InitialAdvertisePeerURLs[0])
	advAddr, err := net.ResolveTCPAddr("tcp", adv)
	if err != nil {
		return nil, fmt.Errorf("chainfire: --initial-advertise-peer-urls: %w", err)
	}
	trans, err := raft.NewTCPTransportWithLogger(bind, advAddr, 4, 5*time.Second, hl)
	if err != nil {
		return nil, fmt.Errorf("chainfire: listen on peer URL %s: %w", cfg.ListenPeerURLs[0], err)
	}
	n.trans = trans
	n.closers = append(n.closers, trans.Close)

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(serverID(n.id))
	rc.Logger = hl
	rc.HeartbeatTimeout = cfg.ElectionTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.ElectionTimeout / 2
	rc.CommitTimeout = 20 * time.Millisecond
	rc.SnapshotThreshold = cfg.SnapshotCount
	rc.TrailingLogs = cfg.SnapshotCount
	rc.NoSnapshotRestoreOnStart = true
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 256
	rc.NoLegacyTelemetry = true

	existing, err := raft.HasExistingState(n.logs, stable, snaps)
	if err != nil {
		return nil, fmt.Errorf("chainfire: read raft state: %w", err)
	}
	r, err := raft.NewRaft(rc, n.fsm, n.logs, stable, snaps, trans)
	if err != nil {
		return nil, fmt.Errorf("chainfire: start raft: %w", err)
	}
	n.raft = r
	if !existing && cfg.InitialClusterState == "new" {
		conf := raftConfiguration(members)
		if err := r.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
			r.Shutdown()
			return nil, fmt.Errorf("chainfire: bootstrap: %w", err)
		}
		n.log.Info("bootstrapped new cluster", "members", len(conf.Servers))
	}
	if reg != nil {
		n.metrics.register(reg, n)
	}
	n.wg.Add(4)
	go n.watchLeadership()
	go n.lessor.run()
	go n.publishSelf()
	go n.promoteCaughtUp()
	ok = true
	n.log.Info("member started", "name", cfg.Name, "id", serverID(n.id), "existing_state", existing, "applied_index", store.AppliedIndex())
	return n, nil
}

// ID is this member's id.
func (n *Node) ID() uint64 { return n.id }

// ClusterID is the cluster's id.
func (n *Node) ClusterID() uint64 { return n.clusterID }

// Store is the member's MVCC store (reads, watches).
func (n *Node) Store() *mvcc.Store { return n.store }

// Config returns the configuration the node runs with.
func (n *Node) Config() Config { return n.cfg }

// Term is the current raft term.
func (n *Node) Term() uint64 { return n.raft.CurrentTerm() }

// IsLeader reports whether this member is the leader right now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// LeaderID is the leader's member id, 0 when none is known.
func (n *Node) LeaderID() uint64 {
	_, id := n.raft.LeaderWithID()
	return parseServerID(string(id))
}

// RaftIndexes reports the last log index and the index applied to the store.
func (n *Node) RaftIndexes() (last, applied uint64) { return n.raft.LastIndex(), n.fsm.Applied() }

// Ready reports why the member cannot serve linearizable requests, nil when it can: it must
// know a leader and have applied what that leader committed when it last heard from it.
func (n *Node) Ready(ctx context.Context) error {
	if n.stopping.Load() {
		return ErrStopped
	}
	if n.LeaderID() == 0 {
		return ErrNoLeader
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return n.LinearizableBarrier(ctx)
}

// watchLeadership keeps the member's view of leadership current: metrics, the lease clock,
// and the leader's read readiness (a barrier committed in its own term). Raft's leader
// observations make it prompt; a periodic check makes it certain (an observation can be
// dropped or arrive after the term moved on).
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	obsCh := make(chan raft.Observation, 16)
	obs := raft.NewObserver(obsCh, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var lastLeader uint64
	var establishing atomic.Bool
	for {
		select {
		case <-n.stopCh:
			return
		case <-obsCh:
		case <-tick.C:
		}
		leader := n.LeaderID()
		if leader != lastLeader {
			if leader != 0 {
				n.metrics.leaderChanges.Inc()
				n.log.Info("leader changed", "leader", serverID(leader), "term", n.raft.CurrentTerm())
			}
			lastLeader = leader
		}
		n.metrics.hasLeader.Set(b2f(leader != 0))
		isLeader := n.raft.State() == raft.Leader
		n.metrics.isLeader.Set(b2f(isLeader))
		if !isLeader {
			n.lessor.demote()
			continue
		}
		term := n.raft.CurrentTerm()
		if n.leaderReadyTerm.Load() != term && establishing.CompareAndSwap(false, true) {
			n.wg.Add(1)
			go func() {
				defer establishing.Store(false)
				n.establishLeadership(term)
			}()
		}
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// establishLeadership commits a barrier in the new term, after which the commit index covers
// every entry a previous leader acknowledged; then it starts the lease clock.
func (n *Node) establishLeadership(term uint64) {
	defer n.wg.Done()
	if err := n.raft.Barrier(5 * time.Second).Error(); err != nil {
		n.log.Warn("leader barrier failed", "err", err)
		return
	}
	if n.raft.State() != raft.Leader || n.raft.CurrentTerm() != term || n.stopping.Load() {
		return
	}
	n.leaderReadyTerm.Store(term)
	n.lessor.promote()
	n.log.Info("leader ready", "term", term)
}

// Close shuts the member down gracefully: a leader first hands leadership to a caught-up
// follower, then raft stops, then the store closes. Safe to call more than once.
func (n *Node) Close() error {
	if !n.stopping.CompareAndSwap(false, true) {
		return nil
	}
	n.StepDown()
	close(n.stopCh)
	n.lessor.demote()
	err := n.raft.Shutdown().Error()
	n.wg.Wait()
	n.peers.close()
	if cerr := n.closeResources(); err == nil {
		err = cerr
	}
	n.log.Info("member stopped")
	return err
}

// StepDown hands leadership to a caught-up follower when this member leads and has one;
// graceful shutdown calls it before it stops serving, so writes keep flowing.
func (n *Node) StepDown() {
	if n.raft.State() != raft.Leader || len(n.votersExceptSelf()) == 0 {
		return
	}
	start := time.Now()
	if err := n.raft.LeadershipTransfer().Error(); err != nil {
		n.log.Warn("leadership transfer failed", "err", err)
		return
	}
	n.log.Info("leadership transferred", "took", time.Since(start))
}

func (n *Node) closeResources() error {
	var errs []error
	for i := len(n.closers) - 1; i >= 0; i-- {
		if err := n.closers[i](); err != nil {
			errs = append(errs, err)
		}
	}
	n.closers = nil
	return errors.Join(errs...)
}

func (n *Node) votersExceptSelf() []raft.Server {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	var out []raft.Server
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != serverID(n.id) {
			out = append(out, s)
		}
	}
	return out
}

// publishSelf records this member's name and URLs in the replicated member table, retrying
// until it succeeds (it needs a leader) or the node stops.
func (n *Node) publishSelf() {
	defer n.wg.Done()
	want := &peerv1.MemberPut{Id: n.id, Name: n.cfg.Name, PeerUrls: n.cfg.InitialAdvertisePeerURLs, ClientUrls: n.cfg.AdvertiseClientURLs}
	backoff := 50 * time.Millisecond
	for {
		if m := n.member(n.id); m != nil {
			if m.Name == want.Name && sameURLs(m.ClientUrls, want.ClientUrls) && sameURLs(m.PeerUrls, want.PeerUrls) {
				n.log.Debug("member published")
				return
			}
			want.IsLearner = m.IsLearner // as it was added
		} else {
			want.IsLearner = n.isLearner()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err := n.Propose(ctx, &peerv1.Command{Op: &peerv1.Command_MemberPut{MemberPut: want}})
		cancel()
		if err == nil {
			continue // verify through the store
		}
		select {
		case <-n.stopCh:
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Second)
	}
}

func (n *Node) isLearner() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if string(s.ID) == serverID(n.id) {
			return s.Suffrage == raft.Nonvoter
		}
	}
	return false
}
