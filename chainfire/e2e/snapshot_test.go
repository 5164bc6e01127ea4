package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
)

// TestSnapshotSaveRestore saves a snapshot under write load, restores it into a fresh
// 3-member cluster, and finds there exactly the data the source had at the snapshot's
// revision. Corrupt and truncated files are refused.
func TestSnapshotSaveRestore(t *testing.T) {
	t.Parallel()
	src := chainfiretest.Start(t, 3, chainfiretest.Options{})
	ctx := testCtx(t, 120*time.Second)
	cli := client(t, src.Endpoints()...)
	for i := range 200 {
		if _, err := cli.Put(ctx, fmt.Sprintf("data/%03d", i), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // load during the snapshot
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			cli.Put(ctx, fmt.Sprintf("data/%03d", i%300), fmt.Sprintf("load-%d", i))
		}
	}()
	bin := harness.Binary(t, chainfiretest.Package)
	file := t.TempDir() + "/backup.snap"
	if out, err := exec.Command(bin, "--endpoints", strings.Join(src.Endpoints(), ","), "snapshot", "save", file).CombinedOutput(); err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, out)
	}
	close(stop)
	wg.Wait()

	// Corrupt and truncated copies are refused, and leave no data dir behind.
	blob, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), blob...)
	bad[len(bad)/2] ^= 0xff
	for name, b := range map[string][]byte{"corrupt": bad, "truncated": blob[:len(blob)*2/3]} {
		path := t.TempDir() + "/" + name
		os.WriteFile(path, b, 0o600)
		dir := t.TempDir() + "/restored"
		out, err := exec.Command(bin, "snapshot", "restore", path, "--name", "x", "--data-dir", dir,
			"--initial-advertise-peer-urls", "http://127.0.0.1:1").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "snapshot refused") {
			t.Fatalf("%s snapshot: err %v, output %q", name, err, out)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("%s snapshot left %s behind", name, dir)
		}
	}

	// Restore into a new 3-member cluster.
	ports, err := harness.FreePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	var initial []string
	for i := range 3 {
		initial = append(initial, fmt.Sprintf("r%d=http://127.0.0.1:%d", i, ports[2*i+1]))
	}
	var endpoints []string
	for i := range 3 {
		dir := t.TempDir() + "/data"
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1])
		clientURL := fmt.Sprintf("http://127.0.0.1:%d", ports[2*i])
		args := []string{"--name", fmt.Sprintf("r%d", i), "--data-dir", dir, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-token", "restored"}
		if out, err := exec.Command(bin, append([]string{"snapshot", "restore", file}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("restore: %v\n%s", err, out)
		}
		p := harness.NewProcess(t, harness.ProcessConfig{Name: fmt.Sprintf("r%d", i), Path: bin, ReadyURL: clientURL + "/readyz",
			Args: append([]string{"server", "--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
				"--listen-peer-urls", peer, "--initial-cluster-state", "new"}, args...)})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		defer p.WaitReady(ctx)
		endpoints = append(endpoints, clientURL)
	}
	dst := client(t, endpoints...)
	deadline := time.Now().Add(20 * time.Second)
	var got *chainfireRange
	for {
		r, err := dst.Get(ctx, "data/", chainfire.WithPrefix())
		if err == nil {
			got = &chainfireRange{rev: r.Header.Revision}
			for _, kv := range r.Kvs {
				got.kvs = append(got.kvs, fmt.Sprintf("%s=%s@%d", kv.Key, kv.Value, kv.ModRevision))
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("restored cluster does not serve: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	want, err := cli.Get(ctx, "data/", chainfire.WithPrefix(), chainfire.WithRev(got.rev))
	if err != nil {
		t.Fatal(err)
	}
	var wantKVs []string
	for _, kv := range want.Kvs {
		wantKVs = append(wantKVs, fmt.Sprintf("%s=%s@%d", kv.Key, kv.Value, kv.ModRevision))
	}
	if strings.Join(got.kvs, ",") != strings.Join(wantKVs, ",") {
		t.Fatalf("restored data at revision %d differs from the source at that revision:\n got %d keys\nwant %d keys", got.rev, len(got.kvs), len(wantKVs))
	}
	t.Logf("restored %d keys at revision %d", len(got.kvs), got.rev)
	// The restored cluster takes writes, with revisions continuing.
	p, err := dst.Put(ctx, "after-restore", "v")
	if err != nil || p.Header.Revision != got.rev+1 {
		t.Fatalf("put after restore: %v, revision %d, want %d", err, p.GetHeader().GetRevision(), got.rev+1)
	}
}

type chainfireRange struct {
	rev int64
	kvs []string
}

var _ = context.Background

// TestScheduledSnapshots: a member with --snapshot-interval writes whole snapshot files,
// keeps --snapshot-retain of them, and the newest restores into a working member.
func TestScheduledSnapshots(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := chainfiretest.Start(t, 1, chainfiretest.Options{ExtraArgs: []string{"--snapshot-interval", "200ms", "--snapshot-dir", dir, "--snapshot-retain", "2"}})
	ctx := testCtx(t, 60*time.Second)
	cli := client(t, c.Endpoints()...)
	for i := range 30 {
		if _, err := cli.Put(ctx, fmt.Sprintf("s/%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	var files []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		entries, _ := os.ReadDir(dir)
		files = files[:0]
		newest := ""
		for _, e := range entries {
			if strings.HasSuffix(e.Name(), ".snap") {
				files = append(files, e.Name())
				newest = max(newest, e.Name())
			}
		}
		// Wait for a snapshot taken after the last put (revision 31 = 30 puts + 1).
		if strings.HasPrefix(newest, "chainfire-000000000031-") {
			files = []string{dir + "/" + newest}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot at revision 31 in %v", files)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(700 * time.Millisecond)
	entries, _ := os.ReadDir(dir)
	if len(entries) > 2 {
		t.Fatalf("retention 2, found %d entries", len(entries))
	}
	// Copy the newest away from the member's pruning.
	blob, err := os.ReadFile(dir + "/" + entries[len(entries)-1].Name())
	if err != nil {
		t.Fatal(err)
	}
	files[0] = t.TempDir() + "/newest.snap"
	os.WriteFile(files[0], blob, 0o600)
	bin := harness.Binary(t, chainfiretest.Package)
	ports, _ := harness.FreePorts(2)
	clientURL, peer := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	data := t.TempDir() + "/data"
	args := []string{"--name", "r", "--data-dir", data, "--initial-advertise-peer-urls", peer}
	if out, err := exec.Command(bin, append([]string{"snapshot", "restore", files[0]}, args...)...).CombinedOutput(); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	p := harness.NewProcess(t, harness.ProcessConfig{Name: "restored", Path: bin, ReadyURL: clientURL + "/readyz",
		Args: append([]string{"server", "--listen-client-urls", clientURL, "--advertise-client-urls", clientURL, "--listen-peer-urls", peer}, args...)})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	r, err := client(t, clientURL).Get(ctx, "s/", chainfire.WithPrefix(), chainfire.WithCountOnly())
	if err != nil || r.Count != 30 {
		t.Fatalf("restored member has %v keys, %v", r.GetCount(), err)
	}
}
