package etcdcompat

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
)

// etcdctl runs Debian's etcdctl 3.4 against endpoints and returns its output.
func etcdctl(t *testing.T, endpoints []string, stdin string, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Fatal("etcdctl not found: install Debian's etcd-client (make test runs scripts/deps.sh, which does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"--endpoints=" + strings.Join(endpoints, ","), "--dial-timeout=3s", "--command-timeout=10s"}, args...)...)
	cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("etcdctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestEtcdctl(t *testing.T) {
	c := chainfiretest.Start(t, 3, chainfiretest.Options{})
	eps := c.HostPorts()
	one := []string{eps[c.Follower()]} // a follower: writes must be forwarded inside the server

	t.Run("put get del with prefix and revision", func(t *testing.T) {
		if out := etcdctl(t, one, "", "put", "/app/a", "1"); strings.TrimSpace(out) != "OK" {
			t.Fatalf("put: %q", out)
		}
		etcdctl(t, one, "", "put", "/app/b", "2")
		etcdctl(t, eps, "", "put", "/app/a", "1b")
		if out := etcdctl(t, eps, "", "get", "--prefix", "/app/"); out != "/app/a\n1b\n/app/b\n2\n" {
			t.Fatalf("get --prefix: %q", out)
		}
		var st struct {
			Header struct{ Revision int64 } `json:"header"`
			Kvs    []struct {
				Key         []byte `json:"key"`
				ModRevision int64  `json:"mod_revision"`
			} `json:"kvs"`
		}
		if err := json.Unmarshal([]byte(etcdctl(t, eps, "", "get", "/app/a", "-w", "json")), &st); err != nil {
			t.Fatal(err)
		}
		if len(st.Kvs) != 1 {
			t.Fatalf("get -w json: %+v", st)
		}
		old := st.Kvs[0].ModRevision - 2 // the revision of the first put of /app/a
		if out := etcdctl(t, eps, "", "get", "/app/a", fmt.Sprintf("--rev=%d", old)); out != "/app/a\n1\n" {
			t.Fatalf("get --rev=%d: %q", old, out)
		}
		if out := etcdctl(t, one, "", "del", "--prefix", "/app/"); strings.TrimSpace(out) != "2" {
			t.Fatalf("del --prefix: %q", out)
		}
		if out := etcdctl(t, eps, "", "get", "--prefix", "/app/"); out != "" {
			t.Fatalf("after del: %q", out)
		}
	})

	t.Run("txn", func(t *testing.T) {
		etcdctl(t, one, "", "put", "tk", "v1")
		script := "value(\"tk\") = \"v1\"\n\nput tk v2\n\nput tk failed\n\n"
		if out := etcdctl(t, one, script, "txn"); !strings.HasPrefix(out, "SUCCESS") {
			t.Fatalf("txn: %q", out)
		}
		if out := etcdctl(t, eps, script, "txn"); !strings.HasPrefix(out, "FAILURE") {
			t.Fatalf("second txn: %q", out)
		}
		if out := etcdctl(t, eps, "", "get", "tk", "--print-value-only"); strings.TrimSpace(out) != "failed" {
			t.Fatalf("after txns: %q", out)
		}
	})

	t.Run("watch with start revision", func(t *testing.T) {
		etcdctl(t, one, "", "put", "w1", "a")
		out := etcdctl(t, eps, "", "get", "w1", "-w", "json")
		rev := regexp.MustCompile(`"mod_revision":(\d+)`).FindStringSubmatch(out)
		if rev == nil {
			t.Fatalf("no mod_revision in %q", out)
		}
		etcdctl(t, one, "", "put", "w1", "b")
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "etcdctl", "--endpoints="+strings.Join(eps, ","), "watch", "w1", "--rev="+rev[1])
		cmd.Env = append(cmd.Environ(), "ETCDCTL_API=3")
		stdout, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer cmd.Process.Kill()
		sc := bufio.NewScanner(stdout)
		var lines []string
		go func() {
			time.Sleep(500 * time.Millisecond)
			etcdctl(t, one, "", "put", "w1", "c")
		}()
		for len(lines) < 9 && sc.Scan() {
			lines = append(lines, sc.Text())
		}
		want := []string{"PUT", "w1", "a", "PUT", "w1", "b", "PUT", "w1", "c"}
		if strings.Join(lines, ",") != strings.Join(want, ",") {
			t.Fatalf("watch output %q, want %q", lines, want)
		}
	})

	t.Run("lease grant keep-alive expiry", func(t *testing.T) {
		out := etcdctl(t, one, "", "lease", "grant", "2")
		m := regexp.MustCompile(`lease ([0-9a-f]+) granted with TTL\(2s\)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("lease grant: %q", out)
		}
		id := m[1]
		etcdctl(t, one, "", "put", "--lease="+id, "leased", "x")
		for range 3 {
			time.Sleep(time.Second)
			if out := etcdctl(t, eps, "", "lease", "keep-alive", "--once", id); !strings.Contains(out, "keepalived with TTL(2)") {
				t.Fatalf("keep-alive: %q", out)
			}
		}
		if out := etcdctl(t, eps, "", "get", "leased", "--print-value-only"); strings.TrimSpace(out) != "x" {
			t.Fatalf("kept-alive key gone: %q", out)
		}
		if out := etcdctl(t, eps, "", "lease", "timetolive", id, "--keys"); !strings.Contains(out, "granted with TTL(2s)") || !strings.Contains(out, "leased") {
			t.Fatalf("timetolive: %q", out)
		}
		deadline := time.Now().Add(6 * time.Second)
		for {
			out := etcdctl(t, eps, "", "get", "leased")
			if out == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("leased key still there after expiry: %q", out)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("member list and endpoint status", func(t *testing.T) {
		out := etcdctl(t, one, "", "member", "list")
		for _, m := range c.Members {
			if !strings.Contains(out, m.Name) || !strings.Contains(out, m.PeerURL) || !strings.Contains(out, m.ClientURL) {
				t.Fatalf("member list lacks %s: %q", m.Name, out)
			}
		}
		if n := strings.Count(strings.TrimSpace(out), "\n") + 1; n != 3 {
			t.Fatalf("member list has %d lines: %q", n, out)
		}
		out = etcdctl(t, eps, "", "endpoint", "status", "-w", "json")
		var st []struct {
			Endpoint string `json:"Endpoint"`
			Status   struct {
				Leader  uint64 `json:"leader"`
				Version string `json:"version"`
			} `json:"Status"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("endpoint status json: %v\n%s", err, out)
		}
		if len(st) != 3 || st[0].Status.Leader == 0 || st[0].Status.Leader != st[1].Status.Leader || st[1].Status.Leader != st[2].Status.Leader {
			t.Fatalf("endpoint status: %+v", st)
		}
		if out := etcdctl(t, eps, "", "endpoint", "health"); strings.Count(out, "is healthy") != 3 {
			t.Fatalf("endpoint health: %q", out)
		}
	})
}
