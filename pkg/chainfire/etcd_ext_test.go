package chainfire_test

// Wire compatibility with a real etcd 3.4 (/usr/bin/etcd): the client's
// KV, Txn, Watch, Lease, Cluster and Maintenance calls against the real
// thing, including a watch that resumes across an etcd crash and restart.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
)

// etcdProc is a single-node etcd started for a test.
type etcdProc struct {
	t          *testing.T
	bin        string
	dataDir    string
	clientURL  string
	peerURL    string
	cmd        *exec.Cmd
	logPath    string
	waitResult chan error
}

// freePort returns a loopback port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startEtcd starts etcd on free loopback ports. It fails (never skips) when
// etcd is not installed.
func startEtcd(t *testing.T) *etcdProc {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/etcd"); serr != nil {
			t.Fatalf("etcd not found (%v): install it with `apt-get install etcd-server` (make test does)", err)
		}
		bin = "/usr/bin/etcd"
	}
	dir := t.TempDir()
	e := &etcdProc{
		t:         t,
		bin:       bin,
		dataDir:   filepath.Join(dir, "data"),
		clientURL: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		peerURL:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		logPath:   filepath.Join(dir, "etcd.log"),
	}
	e.start()
	t.Cleanup(func() {
		e.kill()
		if t.Failed() {
			if b, err := os.ReadFile(e.logPath); err == nil {
				t.Logf("etcd log:\n%s", lastBytes(b, 4000))
			}
		}
	})
	return e
}

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (e *etcdProc) start() {
	e.t.Helper()
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	e.cmd = exec.Command(e.bin,
		"--name", "t",
		"--data-dir", e.dataDir,
		"--listen-client-urls", e.clientURL,
		"--advertise-client-urls", e.clientURL,
		"--listen-peer-urls", e.peerURL,
		"--initial-advertise-peer-urls", e.peerURL,
		"--initial-cluster", "t="+e.peerURL,
		"--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
	)
	e.cmd.Stdout, e.cmd.Stderr = logf, logf
	if err := e.cmd.Start(); err != nil {
		logf.Close()
		e.t.Fatalf("start etcd: %v", err)
	}
	e.waitResult = make(chan error, 1)
	go func() {
		e.waitResult <- e.cmd.Wait()
		logf.Close()
	}()
	e.waitReady()
}

// waitReady waits until etcd answers Status.
func (e *etcdProc) waitReady() {
	e.t.Helper()
	c, err := chainfire.New(chainfire.Config{Endpoints: []string{e.clientURL}, DialTimeout: time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		sctx, scancel := context.WithTimeout(ctx, time.Second)
		st, err := c.Status(sctx, "")
		scancel()
		if err == nil && st.Leader != 0 {
			return
		}
		select {
		case err := <-e.waitResult:
			e.t.Fatalf("etcd exited during startup: %v", err)
		case <-ctx.Done():
			e.t.Fatalf("etcd not ready after 30s: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// kill SIGKILLs etcd and waits for it.
func (e *etcdProc) kill() {
	if e.cmd == nil || e.cmd.Process == nil {
		return
	}
	_ = e.cmd.Process.Signal(syscall.SIGKILL)
	<-e.waitResult
	e.cmd = nil
}

func TestEtcdCompat(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	c := newClient(t, chainfire.Config{Endpoints: []string{e.clientURL}})
	ctx := testCtx(t)

	t.Run("kv", func(t *testing.T) {
		if _, err := c.Put(ctx, "kv/a", "1"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(ctx, "kv/b", "2"); err != nil {
			t.Fatal(err)
		}
		pr, err := c.Put(ctx, "kv/a", "3", chainfire.WithPrevKV())
		if err != nil || string(pr.PrevKv.GetValue()) != "1" {
			t.Fatalf("put prev = %v, %v", pr, err)
		}
		if got := keysOf(t, c, ctx, "kv/", chainfire.WithPrefix()); got != "kv/a=3,kv/b=2" {
			t.Fatalf("prefix get = %q", got)
		}
		if got := keysOf(t, c, ctx, "kv/a", chainfire.WithSerializable()); got != "kv/a=3" {
			t.Fatalf("serializable get = %q", got)
		}
		r, err := c.Get(ctx, "kv/", chainfire.WithPrefix(), chainfire.WithCountOnly())
		if err != nil || r.Count != 2 {
			t.Fatalf("count = %v, %v", r, err)
		}
		d, err := c.Delete(ctx, "kv/b")
		if err != nil || d.Deleted != 1 {
			t.Fatalf("delete = %v, %v", d, err)
		}
	})

	t.Run("txn", func(t *testing.T) {
		put, err := c.Put(ctx, "txn/k", "v1")
		if err != nil {
			t.Fatal(err)
		}
		cas := func(v string) bool {
			r, err := c.Txn(ctx).
				If(chainfire.Compare(chainfire.ModRevision("txn/k"), "=", put.Header.Revision)).
				Then(chainfire.OpPut("txn/k", v)).
				Else(chainfire.OpGet("txn/k")).Commit()
			if err != nil {
				t.Fatal(err)
			}
			return r.Succeeded
		}
		if !cas("v2") || cas("v3") {
			t.Fatal("compare-and-swap did not succeed exactly once")
		}
		r, err := c.Txn(ctx).If(chainfire.Compare(chainfire.Value("txn/k"), "=", "v2"),
			chainfire.Compare(chainfire.Version("txn/k"), "=", 2)).Then(chainfire.OpGet("txn/k")).Commit()
		if err != nil || !r.Succeeded {
			t.Fatalf("value/version compare: %v, %v", r, err)
		}
	})

	t.Run("lease", func(t *testing.T) {
		g, err := c.Grant(ctx, 5)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(ctx, "lease/k", "v", chainfire.WithLease(g.ID)); err != nil {
			t.Fatal(err)
		}
		kctx, kcancel := context.WithCancel(ctx)
		defer kcancel()
		ch, err := c.KeepAlive(kctx, g.ID)
		if err != nil {
			t.Fatal(err)
		}
		if r := <-ch; r.TTL != 5 {
			t.Fatalf("keepalive TTL = %d", r.TTL)
		}
		ttl, err := c.TimeToLive(ctx, g.ID, true)
		if err != nil || ttl.GrantedTTL != 5 || len(ttl.Keys) != 1 {
			t.Fatalf("timetolive = %v, %v", ttl, err)
		}
		ls, err := c.Leases(ctx)
		if err != nil || len(ls.Leases) == 0 {
			t.Fatalf("leases = %v, %v", ls, err)
		}
		if _, err := c.Revoke(ctx, g.ID); err != nil {
			t.Fatal(err)
		}
		timeout := time.After(10 * time.Second)
		for open := true; open; {
			select {
			case _, open = <-ch:
			case <-timeout:
				t.Fatal("keepalive channel still open 10s after revoke")
			}
		}
		if got := keysOf(t, c, ctx, "lease/k"); got != "" {
			t.Fatalf("key of revoked lease: %q", got)
		}
		if _, err := c.KeepAliveOnce(ctx, g.ID); !errors.Is(err, chainfire.ErrLeaseNotFound) {
			t.Fatalf("keepalive of revoked lease: %v", err)
		}
	})

	t.Run("watch", func(t *testing.T) {
		wctx, wcancel := context.WithCancel(ctx)
		defer wcancel()
		wch := c.Watch(wctx, "watch/", chainfire.WithPrefix(), chainfire.WithPrevKV(), chainfire.WithCreatedNotify())
		if r := <-wch; !r.Created {
			t.Fatalf("want created, got %+v", r)
		}
		if _, err := c.Put(ctx, "watch/a", "1"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(ctx, "watch/a", "2"); err != nil {
			t.Fatal(err)
		}
		col := newCollector(t, wch)
		r, err := c.Delete(ctx, "watch/a")
		if err != nil {
			t.Fatal(err)
		}
		col.untilRev(r.Header.Revision)
		if len(col.revs) != 3 {
			t.Fatalf("events at %v, want 3", col.revs)
		}
		if err := c.RequestProgress(ctx); err != nil {
			t.Fatal(err)
		}
		select {
		case p := <-wch:
			if !p.IsProgressNotify() || p.Revision() < r.Header.Revision {
				t.Fatalf("want progress notify, got %+v", p)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no progress notification")
		}
	})

	t.Run("compaction relist", func(t *testing.T) {
		first, err := c.Put(ctx, "compact/k", "0")
		if err != nil {
			t.Fatal(err)
		}
		last, err := c.Put(ctx, "compact/k", "1")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Compact(ctx, last.Header.Revision, chainfire.WithPhysical()); err != nil {
			t.Fatal(err)
		}
		var got []chainfire.WatchResponse
		for r := range c.Watch(ctx, "compact/k", chainfire.WithRev(first.Header.Revision)) {
			got = append(got, r)
		}
		if len(got) != 1 || !got[0].Relist || got[0].CompactRevision != last.Header.Revision {
			t.Fatalf("got %+v, want one Relist at %d", got, last.Header.Revision)
		}
	})

	t.Run("maintenance", func(t *testing.T) {
		st, err := c.Status(ctx, e.clientURL)
		if err != nil || st.Leader != st.Header.MemberId || st.Version == "" {
			t.Fatalf("status = %v, %v", st, err)
		}
		ml, err := c.MemberList(ctx)
		if err != nil || len(ml.Members) != 1 || ml.Members[0].ID != st.Header.MemberId {
			t.Fatalf("member list = %v, %v", ml, err)
		}
		if _, err := c.HashKV(ctx, e.clientURL, 0); err != nil {
			t.Fatal(err)
		}
		rc, err := c.Snapshot(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		n, err := io.Copy(&buf, rc)
		rc.Close()
		if err != nil || n < 4096 {
			t.Fatalf("snapshot: %d bytes, %v", n, err)
		}
		if _, err := c.Defragment(ctx, e.clientURL); err != nil {
			t.Fatal(err)
		}
	})
}

// TestEtcdWatchSurvivesRestart: etcd is SIGKILLed and restarted under a
// watch; the watch resumes from its last revision, losing nothing.
func TestEtcdWatchSurvivesRestart(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	c := newClient(t, chainfire.Config{Endpoints: []string{e.clientURL}})
	ctx := testCtx(t)
	col := newCollector(t, c.Watch(ctx, "r/", chainfire.WithPrefix(), chainfire.WithRev(1)))
	var want []int64
	put := func(i int) {
		t.Helper()
		r, err := c.Put(ctx, fmt.Sprintf("r/%d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, r.Header.Revision)
	}
	for i := range 5 {
		put(i)
	}
	col.untilRev(want[len(want)-1])
	e.kill()
	e.start()
	for i := 5; i < 10; i++ {
		put(i)
	}
	col.untilRev(want[len(want)-1])
	if fmt.Sprint(col.revs) != fmt.Sprint(want) {
		t.Fatalf("delivered %v, want %v", col.revs, want)
	}
}
