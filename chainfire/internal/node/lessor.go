package node

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// lessor is the lease clock. Every member tracks the granted leases (from the FSM); only the
// leader ("primary") keeps expiry times, renews leases on keep-alives (which never go through
// the log) and, when one expires, proposes its revocation through the log so every member
// deletes the same keys at the same revision. A new leader renews every lease for a full TTL
// before expiring any, so a failover does not mass-expire sessions.
type lessor struct {
	n *Node

	mu       sync.Mutex
	ttl      map[int64]int64     // granted TTL (seconds) of every live lease
	expiry   map[int64]time.Time // primary only
	revoking map[int64]bool
	primary  bool
}

func newLessor(n *Node) *lessor {
	l := &lessor{n: n, revoking: map[int64]bool{}}
	l.reload()
	return l
}

// reload rebuilds the lease table from the store (start, snapshot restore).
func (l *lessor) reload() {
	leases, err := l.n.store.Leases()
	if err != nil {
		l.n.log.Error("load leases", "err", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.ttl = make(map[int64]int64, len(leases))
	for _, le := range leases {
		l.ttl[le.ID] = le.TTL
	}
	if l.primary {
		l.resetExpiryLocked()
	}
}

// observe is called on the FSM goroutine for every applied command.
func (l *lessor) observe(cmd *peerv1.Command, res mvcc.ApplyResult) {
	if res.Err != nil || res.Result == nil {
		return
	}
	switch op := cmd.Op.(type) {
	case *peerv1.Command_LeaseGrant:
		l.mu.Lock()
		l.ttl[op.LeaseGrant.ID] = op.LeaseGrant.TTL
		if l.primary {
			l.expiry[op.LeaseGrant.ID] = time.Now().Add(time.Duration(op.LeaseGrant.TTL) * time.Second)
		}
		l.mu.Unlock()
	case *peerv1.Command_LeaseRevoke:
		l.mu.Lock()
		delete(l.ttl, op.LeaseRevoke.ID)
		delete(l.expiry, op.LeaseRevoke.ID)
		l.mu.Unlock()
	}
}

// promote starts the lease clock on a new leader.
func (l *lessor) promote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.primary = true
	l.resetExpiryLocked()
}

func (l *lessor) resetExpiryLocked() {
	now := time.Now()
	margin := l.n.cfg.ElectionTimeout
	l.expiry = make(map[int64]time.Time, len(l.ttl))
	for id, ttl := range l.ttl {
		l.expiry[id] = now.Add(time.Duration(ttl)*time.Second + margin)
	}
}

// demote stops the lease clock when leadership is lost.
func (l *lessor) demote() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.primary = false
	l.expiry = nil
}

// renew extends a lease by its TTL; leader only.
func (l *lessor) renew(id int64) (int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.primary {
		return 0, ErrNotLeader
	}
	ttl, ok := l.ttl[id]
	if !ok {
		return 0, mvcc.ErrLeaseNotFound
	}
	l.expiry[id] = time.Now().Add(time.Duration(ttl) * time.Second)
	return ttl, nil
}

// remaining reports granted and remaining TTL; leader only.
func (l *lessor) remaining(id int64) (granted, left int64, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.primary {
		return 0, 0, ErrNotLeader
	}
	ttl, ok := l.ttl[id]
	if !ok {
		return 0, 0, mvcc.ErrLeaseNotFound
	}
	rem := time.Until(l.expiry[id])
	if rem < 0 {
		rem = 0
	}
	return ttl, int64((rem + time.Second - 1) / time.Second), nil
}

// run revokes expired leases while this member is the leader.
func (l *lessor) run() {
	defer l.n.wg.Done()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-l.n.stopCh:
			return
		case <-t.C:
		}
		now := time.Now()
		var expired []int64
		l.mu.Lock()
		if l.primary {
			for id, at := range l.expiry {
				if now.After(at) && !l.revoking[id] {
					l.revoking[id] = true
					expired = append(expired, id)
				}
			}
		}
		l.mu.Unlock()
		for _, id := range expired {
			go l.revoke(id)
		}
	}
}

func (l *lessor) revoke(id int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := l.n.Propose(ctx, &peerv1.Command{Op: &peerv1.Command_LeaseRevoke{LeaseRevoke: &pb.LeaseRevokeRequest{ID: id}}})
	if err != nil {
		l.n.log.Warn("lease expiry revoke failed; will retry", "lease", id, "err", err)
	} else {
		l.n.log.Debug("lease expired", "lease", id)
	}
	l.mu.Lock()
	delete(l.revoking, id)
	l.mu.Unlock()
}

// newLeaseID picks a random positive lease id.
func newLeaseID() int64 {
	var b [8]byte
	for {
		_, _ = rand.Read(b[:])
		if id := int64(binary.BigEndian.Uint64(b[:]) >> 1); id != 0 {
			return id
		}
	}
}

// LeaseGrant grants a lease; id 0 picks one.
func (n *Node) LeaseGrant(ctx context.Context, req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if req.ID == 0 {
		req.ID = newLeaseID()
	}
	res, err := n.Propose(ctx, &peerv1.Command{Op: &peerv1.Command_LeaseGrant{LeaseGrant: req}})
	if err != nil {
		return nil, err
	}
	return res.GetLeaseGrant(), nil
}

// LeaseRenew renews a lease for a keep-alive; on a follower it asks the leader.
func (n *Node) LeaseRenew(ctx context.Context, id int64) (int64, error) {
	var ttl int64
	err := n.onLeader(ctx, func() (err error) {
		ttl, err = n.lessor.renew(id)
		return err
	}, func(c *peerConn) error {
		resp, err := c.peer.LeaseRenew(ctx, forwardHeader(connect.NewRequest(&peerv1.LeaseRenewRequest{Id: id})))
		if err == nil {
			ttl = resp.Msg.Ttl
		}
		return err
	})
	return ttl, err
}

// LeaseRenewLocal renews on this member only (a forwarded keep-alive).
func (n *Node) LeaseRenewLocal(id int64) (int64, error) { return n.lessor.renew(id) }

// LeaseTimeToLive reports a lease's granted and remaining TTL (asking the leader) and,
// when keys is set, its attached keys.
func (n *Node) LeaseTimeToLive(ctx context.Context, req *pb.LeaseTimeToLiveRequest) (*pb.LeaseTimeToLiveResponse, error) {
	var out *pb.LeaseTimeToLiveResponse
	err := n.onLeader(ctx, func() error {
		granted, left, err := n.lessor.remaining(req.ID)
		if err == mvcc.ErrLeaseNotFound {
			// etcd answers TTL -1 for an unknown lease rather than an error.
			out = &pb.LeaseTimeToLiveResponse{ID: req.ID, TTL: -1}
			return nil
		}
		if err != nil {
			return err
		}
		out = &pb.LeaseTimeToLiveResponse{ID: req.ID, TTL: left, GrantedTTL: granted}
		if req.Keys {
			if out.Keys, err = n.store.LeaseKeys(req.ID); err != nil {
				return err
			}
		}
		return nil
	}, func(c *peerConn) error {
		resp, err := c.lease.LeaseTimeToLive(ctx, forwardHeader(connect.NewRequest(req)))
		if err == nil {
			out = resp.Msg
		}
		return err
	})
	return out, err
}
