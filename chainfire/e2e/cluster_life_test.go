package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

func memberIDs(t *testing.T, ctx context.Context, cli *chainfire.Client) map[string]*pb.Member {
	t.Helper()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*pb.Member{}
	for _, m := range ml.Members {
		out[m.Name] = m
	}
	return out
}

// TestMemberAddRemoveMoveLeader grows a running cluster by one member (MemberAdd, then the new
// member starts with --initial-cluster-state existing), removes another, and moves
// leadership — all under writes.
func TestMemberAddRemoveMoveLeader(t *testing.T) {
	t.Parallel()
	c := chainfiretest.Start(t, 3, chainfiretest.Options{})
	ctx := testCtx(t, 90*time.Second)
	cli := client(t, c.Endpoints()...)
	for i := range 20 {
		if _, err := cli.Put(ctx, fmt.Sprintf("pre/%d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	m4 := c.AddMember(func(peerURL string) error {
		_, err := cli.MemberAdd(ctx, []string{peerURL})
		return err
	})
	c.WaitReady()
	// The new member caught up and serves reads and writes.
	c4 := client(t, m4.ClientURL)
	if _, err := c4.Put(ctx, "via-new-member", "v"); err != nil {
		t.Fatal(err)
	}
	r, err := c4.Get(ctx, "pre/", chainfire.WithPrefix(), chainfire.WithSerializable())
	if err != nil || r.Count != 20 {
		t.Fatalf("new member has %v keys (%v), want 20", r.GetCount(), err)
	}
	// Its name and client URL were published.
	var ids map[string]*pb.Member
	deadline := time.Now().Add(10 * time.Second)
	for {
		ids = memberIDs(t, ctx, cli)
		if m := ids[m4.Name]; m != nil && len(m.ClientURLs) == 1 && m.ClientURLs[0] == m4.ClientURL && len(ids) == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("member list after add: %v", ids)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Move leadership to the new member.
	// The new member becomes a voter once caught up (it joined as a non-voter); until then
	// it cannot lead and MoveLeader answers NotFound.
	for {
		_, err := cli.MoveLeader(ctx, ids[m4.Name].ID)
		if err == nil {
			break
		}
		if connect.CodeOf(err) != connect.CodeNotFound || time.Now().After(deadline) {
			t.Fatalf("move leader: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	deadline = time.Now().Add(10 * time.Second)
	for c.Leader(time.Second) != 3 {
		if time.Now().After(deadline) {
			t.Fatalf("leader is member %d after MoveLeader to %s", c.Leader(time.Second), m4.Name)
		}
	}

	// Remove an original member, then stop it; the cluster keeps serving.
	victim := c.Members[0]
	if _, err := cli.MemberRemove(ctx, ids[victim.Name].ID); err != nil {
		t.Fatalf("member remove: %v", err)
	}
	victim.Terminate(10 * time.Second)
	rest := client(t, c.Members[1].ClientURL, c.Members[2].ClientURL, m4.ClientURL)
	if _, err := rest.Put(ctx, "after-remove", "v"); err != nil {
		t.Fatal(err)
	}
	if ids := memberIDs(t, ctx, rest); len(ids) != 3 || ids[victim.Name] != nil {
		t.Fatalf("member list after remove: %v", ids)
	}
	// Removing an unknown member is NotFound.
	if _, err := rest.MemberRemove(ctx, 0xdead); connect.CodeOf(err) != connect.CodeNotFound {
		t.Fatalf("remove unknown member: %v", err)
	}
}

// TestGracefulLeaderTerminate: SIGTERM on the leader hands leadership over before it stops;
// writes through the other members keep succeeding, the process exits 0.
func TestGracefulLeaderTerminate(t *testing.T) {
	t.Parallel()
	c := chainfiretest.Start(t, 3, chainfiretest.Options{})
	ctx := testCtx(t, 60*time.Second)
	l := c.MustLeader()
	var eps []string
	for i, m := range c.Members {
		if i != l {
			eps = append(eps, m.ClientURL)
		}
	}
	cli := client(t, eps...)
	var failures, ok atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				_, err := cli.Put(pctx, fmt.Sprintf("g/%d/%d", w, i), "v")
				cancel()
				if err != nil {
					failures.Add(1)
					t.Logf("put failed: %v", err)
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	if err := c.Members[l].Terminate(20 * time.Second); err != nil {
		t.Fatalf("leader did not exit cleanly on SIGTERM: %v", err)
	}
	t.Logf("leader shut down in %v", time.Since(start))
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d puts failed during a graceful leader shutdown", failures.Load(), failures.Load()+ok.Load())
	}
	if !strings.Contains(c.Members[l].Logs(), "leadership transferred") {
		t.Fatal("leader log does not show a leadership transfer")
	}
	if c.MustLeader() == l {
		t.Fatal("stopped member still reported as leader")
	}
}

// TestObservability: /healthz, /readyz, /metrics and gRPC health on the client port.
func TestObservability(t *testing.T) {
	t.Parallel()
	c := chainfiretest.Start(t, 3, chainfiretest.Options{})
	ctx := testCtx(t, 30*time.Second)
	m := c.Members[0]
	for path, want := range map[string]string{"/healthz": "ok", "/readyz": "ok"} {
		resp, err := http.Get(m.ClientURL + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != want {
			t.Fatalf("%s: %d %q", path, resp.StatusCode, body)
		}
	}
	resp, err := http.Get(m.ClientURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"chainfire_server_leader_changes_seen_total", "chainfire_server_proposals_committed_total",
		"chainfire_server_proposals_failed_total", "chainfire_server_apply_duration_seconds", "chainfire_server_raft_commit_index",
		"chainfire_server_raft_applied_index", "chainfire_disk_wal_fsync_duration_seconds", "chainfire_mvcc_db_total_size_in_bytes",
		"chainfire_server_has_leader 1"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	hc := grpchealth.NewClient(http.DefaultClient, m.ClientURL)
	hr, err := hc.Check(ctx, &grpchealth.CheckRequest{})
	if err != nil || hr.Status != grpchealth.StatusServing {
		t.Fatalf("grpc health: %v %v", hr, err)
	}
	// A member cut off from its peers is alive but not ready.
	for i, o := range c.Members {
		if i != 0 {
			o.Stop()
			defer o.Cont()
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get(m.ClientURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("/readyz still 200 with both peers paused")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if resp, err := http.Get(m.ClientURL + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz while isolated: %v %v", resp, err)
	}
}

// TestCLI drives the chainfire client subcommands against a real cluster.
func TestCLI(t *testing.T) {
	t.Parallel()
	c := chainfiretest.Start(t, 3, chainfiretest.Options{})
	bin := harness.Binary(t, chainfiretest.Package)
	eps := strings.Join(c.Endpoints(), ",")
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(cmd.Environ(), "CHAINFIRE_ENDPOINTS="+eps)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("chainfire %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	if out := run("put", "/cli/a", "1"); strings.TrimSpace(out) != "OK" {
		t.Fatalf("put: %q", out)
	}
	run("put", "/cli/b", "2")
	if out := run("get", "/cli/", "--prefix"); out != "/cli/a\n1\n/cli/b\n2\n" {
		t.Fatalf("get --prefix: %q", out)
	}
	if out := run("del", "/cli/b"); strings.TrimSpace(out) != "1" {
		t.Fatalf("del: %q", out)
	}
	if out := run("member", "list"); strings.Count(out, "cf") < 3 {
		t.Fatalf("member list: %q", out)
	}
	if out := run("status"); strings.Count(out, "127.0.0.1") != 3 {
		t.Fatalf("status: %q", out)
	}
	if out := run("lease", "grant", "30"); !strings.Contains(out, "granted with TTL(30s)") {
		t.Fatalf("lease grant: %q", out)
	}
	snap := t.TempDir() + "/snap.db"
	run("snapshot", "save", snap)
	if out := run("compact", "2"); !strings.Contains(out, "compacted revision 2") {
		t.Fatalf("compact: %q", out)
	}
	cmd := exec.Command(bin, "put", "", "v")
	cmd.Env = append(cmd.Environ(), "CHAINFIRE_ENDPOINTS="+eps)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "key") {
		t.Fatalf("put with an empty key: %v %q", err, out)
	}
}

// TestMutualTLS serves the client URLs over https with required client certificates: the
// client with the cluster's CA and a certificate works (also through a follower, which
// forwards to the leader over TLS); one without a certificate is refused.
func TestMutualTLS(t *testing.T) {
	t.Parallel()
	files := chainfiretest.SelfSignedTLS(t)
	files.ClientCertAuth = true
	c := chainfiretest.Start(t, 3, chainfiretest.Options{TLS: &files})
	ctx := testCtx(t, 30*time.Second)
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(files.CAFile)
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	good, err := chainfire.New(chainfire.Config{Endpoints: []string{c.Members[c.Follower()].ClientURL},
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}})
	if err != nil {
		t.Fatal(err)
	}
	defer good.Close()
	if _, err := good.Put(ctx, "tls", "ok"); err != nil {
		t.Fatalf("put over mutual TLS through a follower: %v", err)
	}
	if r, err := good.Get(ctx, "tls"); err != nil || string(r.Kvs[0].Value) != "ok" {
		t.Fatalf("get over TLS: %v %v", r, err)
	}
	anon, err := chainfire.New(chainfire.Config{Endpoints: []string{c.Members[0].ClientURL}, TLS: &tls.Config{RootCAs: pool}})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	actx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := anon.Get(actx, "tls"); err == nil {
		t.Fatal("a client without a certificate was served")
	}
}
