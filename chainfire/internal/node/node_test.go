package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/chainfire/internal/mvcc"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	"plasmacloud.dev/proto/chainfire/peer/v1/peerv1connect"
	pb "plasmacloud.dev/proto/etcdserverpb"

	"connectrpc.com/connect"
)

// testCluster runs members in-process on loopback, each with a minimal peer endpoint (the
// PeerService) so forwarding works as in production.
type testCluster struct {
	t       *testing.T
	cfgs    []Config
	nodes   []*Node
	servers []*http.Server
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newTestCluster(t *testing.T, size int) *testCluster {
	t.Helper()
	tc := &testCluster{t: t}
	var initial []string
	for i := range size {
		cfg := DefaultConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.DataDir = t.TempDir()
		client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		cfg.ListenClientURLs, cfg.AdvertiseClientURLs = []string{client}, []string{client}
		cfg.ListenPeerURLs, cfg.InitialAdvertisePeerURLs = []string{peer}, []string{peer}
		// Generous: these tests run beside others under the race detector on 2 cores, and
		// a starved heartbeat would depose the leader mid-test.
		cfg.ElectionTimeout = time.Second
		if testing.Verbose() {
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("member", cfg.Name)
		}
		initial = append(initial, cfg.Name+"="+peer)
		tc.cfgs = append(tc.cfgs, cfg)
	}
	for i := range tc.cfgs {
		tc.cfgs[i].InitialCluster = strings.Join(initial, ",")
	}
	tc.nodes = make([]*Node, size)
	tc.servers = make([]*http.Server, size)
	for i := range tc.cfgs {
		tc.start(i)
	}
	t.Cleanup(func() {
		for i := range tc.nodes {
			tc.stop(i)
		}
	})
	return tc
}

// peerHandler serves the PeerService of a node for the tests (package api does it in
// production; the node package must not import it).
type peerHandler struct{ n *Node }

func (h peerHandler) Propose(ctx context.Context, req *connect.Request[peerv1.ProposeRequest]) (*connect.Response[peerv1.ProposeResponse], error) {
	res, err := h.n.ProposeLocal(ctx, req.Msg.Command)
	if err != nil {
		if err == ErrNotLeader {
			return nil, connect.NewError(connect.CodeFailedPrecondition, err)
		}
		return nil, connect.NewError(connect.CodeUnknown, err)
	}
	return connect.NewResponse(&peerv1.ProposeResponse{Result: res}), nil
}

func (h peerHandler) ReadIndex(ctx context.Context, _ *connect.Request[peerv1.ReadIndexRequest]) (*connect.Response[peerv1.ReadIndexResponse], error) {
	idx, term, err := h.n.ReadIndex(ctx)
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return connect.NewResponse(&peerv1.ReadIndexResponse{Index: idx, Term: term}), nil
}

func (h peerHandler) LeaseRenew(ctx context.Context, req *connect.Request[peerv1.LeaseRenewRequest]) (*connect.Response[peerv1.LeaseRenewResponse], error) {
	ttl, err := h.n.LeaseRenewLocal(req.Msg.Id)
	if err != nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, err)
	}
	return connect.NewResponse(&peerv1.LeaseRenewResponse{Ttl: ttl}), nil
}

func (tc *testCluster) start(i int) {
	tc.t.Helper()
	n, err := New(tc.cfgs[i], nil)
	if err != nil {
		tc.t.Fatalf("start %s: %v", tc.cfgs[i].Name, err)
	}
	tc.nodes[i] = n
	mux := http.NewServeMux()
	mux.Handle(peerv1connect.NewPeerServiceHandler(peerHandler{n}))
	addr, _ := hostPort(tc.cfgs[i].ListenClientURLs[0])
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tc.t.Fatal(err)
	}
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	p.SetHTTP1(true)
	srv := &http.Server{Handler: mux, Protocols: p}
	tc.servers[i] = srv
	go srv.Serve(ln)
}

func (tc *testCluster) stop(i int) {
	if tc.nodes[i] == nil {
		return
	}
	tc.servers[i].Close()
	if err := tc.nodes[i].Close(); err != nil {
		tc.t.Errorf("close %s: %v", tc.cfgs[i].Name, err)
	}
	tc.nodes[i] = nil
}

func (tc *testCluster) leader(timeout time.Duration) int {
	tc.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for i, n := range tc.nodes {
			if n != nil && n.IsLeader() && n.leaderReadyTerm.Load() == n.Term() {
				return i
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	tc.t.Fatal("no leader elected")
	return -1
}

func put(key, val string) *peerv1.Command {
	return &peerv1.Command{Op: &peerv1.Command_Put{Put: &pb.PutRequest{Key: []byte(key), Value: []byte(val)}}}
}

func get(t *testing.T, n *Node, key string) string {
	t.Helper()
	resp, err := n.Store().Range(context.Background(), &pb.RangeRequest{Key: []byte(key)})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

func TestProposeOnFollowerAndLinearizableRead(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(10 * time.Second)
	f1, f2 := (l+1)%3, (l+2)%3
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 20 {
		if _, err := tc.nodes[f1].Propose(ctx, put("k", fmt.Sprint(i))); err != nil {
			t.Fatalf("put through follower: %v", err)
		}
		// A linearizable read on the other follower sees the write at once.
		if err := tc.nodes[f2].LinearizableBarrier(ctx); err != nil {
			t.Fatalf("barrier: %v", err)
		}
		if got := get(t, tc.nodes[f2], "k"); got != fmt.Sprint(i) {
			t.Fatalf("follower read after barrier = %q, want %d", got, i)
		}
	}
}

func TestConcurrentBarriersShareRounds(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := tc.nodes[(l+i)%3]
			// The put is idempotent, so an outcome lost to a leader change is retried.
			for {
				_, err := n.Propose(ctx, put(fmt.Sprintf("c%d", i), "v"))
				if err == nil {
					break
				}
				if !errors.Is(err, ErrResultUnknown) && !errors.Is(err, ErrNoLeader) {
					errs <- err
					return
				}
			}
			if err := n.LinearizableBarrier(ctx); err != nil {
				errs <- err
				return
			}
			if get(t, n, fmt.Sprintf("c%d", i)) != "v" {
				errs <- fmt.Errorf("c%d missing after barrier on member %d", i, (l+i)%3)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestGracefulLeaderStopHandsOver(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := tc.nodes[l].Propose(ctx, put("before", "1")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tc.stop(l)
	f := (l + 1) % 3
	if _, err := tc.nodes[f].Propose(ctx, put("after", "1")); err != nil {
		t.Fatalf("put after leader stop: %v", err)
	}
	t.Logf("write accepted %v after the leader began a graceful stop", time.Since(start))
	tc.start(l)
	if err := tc.nodes[l].LinearizableBarrier(ctx); err != nil {
		t.Fatal(err)
	}
	if get(t, tc.nodes[l], "after") != "1" || get(t, tc.nodes[l], "before") != "1" {
		t.Fatal("restarted member did not catch up")
	}
}

func TestLeaseExpiryDeletesKeysEverywhere(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	f := (l + 1) % 3
	g, err := tc.nodes[f].LeaseGrant(ctx, &pb.LeaseGrantRequest{TTL: 1})
	if err != nil {
		t.Fatal(err)
	}
	cmd := &peerv1.Command{Op: &peerv1.Command_Put{Put: &pb.PutRequest{Key: []byte("eph"), Value: []byte("x"), Lease: g.ID}}}
	if _, err := tc.nodes[f].Propose(ctx, cmd); err != nil {
		t.Fatal(err)
	}
	// Keep-alives through a follower hold the lease past its TTL.
	for range 4 {
		if _, err := tc.nodes[f].LeaseRenew(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
		time.Sleep(400 * time.Millisecond)
	}
	if get(t, tc.nodes[f], "eph") != "x" {
		t.Fatal("key expired although kept alive")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		gone := 0
		for _, n := range tc.nodes {
			if get(t, n, "eph") == "" {
				gone++
			}
		}
		if gone == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("leased key still present on %d members", 3-gone)
		}
		time.Sleep(50 * time.Millisecond)
	}
	revs := map[int64]bool{}
	for _, n := range tc.nodes {
		if err := n.LinearizableBarrier(ctx); err != nil {
			t.Fatal(err)
		}
		cur, _ := n.Store().Revision()
		revs[cur] = true
	}
	if len(revs) != 1 {
		t.Fatalf("members disagree on the revision after expiry: %v", revs)
	}
	if _, err := tc.nodes[l].LeaseRenew(ctx, g.ID); err != mvcc.ErrLeaseNotFound {
		t.Fatalf("renew of expired lease: %v, want ErrLeaseNotFound", err)
	}
}

func TestRestartKeepsStateAndRevision(t *testing.T) {
	tc := newTestCluster(t, 3)
	l := tc.leader(10 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i := range 50 {
		if _, err := tc.nodes[l].Propose(ctx, put(fmt.Sprintf("r%02d", i), "v")); err != nil {
			t.Fatal(err)
		}
	}
	rev, _ := tc.nodes[l].Store().Revision()
	for i := range tc.nodes {
		tc.stop(i)
	}
	for i := range tc.nodes {
		tc.start(i)
	}
	l = tc.leader(10 * time.Second)
	if err := tc.nodes[l].LinearizableBarrier(ctx); err != nil {
		t.Fatal(err)
	}
	for i, n := range tc.nodes {
		if err := n.LinearizableBarrier(ctx); err != nil {
			t.Fatal(err)
		}
		got, _ := n.Store().Revision()
		if got < rev {
			t.Fatalf("member %d revision %d after restart, want >= %d", i, got, rev)
		}
		if get(t, n, "r49") != "v" {
			t.Fatalf("member %d lost r49", i)
		}
	}
}
