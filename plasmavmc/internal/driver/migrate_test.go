package driver_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest"
	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
	"plasmacloud.dev/plasmavmc/internal/storage"
)

// migLab is two fake hosts (a, b) and the guests migrating between them.
type migLab struct {
	g      guestlab.Guest
	a, b   *fakeHost
	prefix string
	pool   *storage.Store // the "shared" pool: one directory both hosts see
}

func newMigLab(t testing.TB) *migLab {
	g := guestlab.BuildGuest(t)
	l := &migLab{g: g, prefix: fmt.Sprintf("m%d-", time.Now().UnixNano()%1e6)}
	l.a = startFakeHost(t, "a")
	l.b = startFakeHost(t, "b")
	// Outside both state directories (Migrate rewrites paths under them).
	pools, err := os.MkdirTemp("/tmp", "pvmc-pool-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() || os.Getenv(keepHostsEnv) == "" {
			os.RemoveAll(pools)
		}
	})
	if l.pool, err = storage.New(storage.Config{Pools: map[string]string{storage.PoolShared: pools}}); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(pools, "base.raw")
	if err := os.WriteFile(base, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := l.pool.RegisterImage(ctx, storage.PoolShared, "base", base); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *migLab) spec(id string, knobs ...string) driver.Spec {
	return driver.Spec{
		ID: l.prefix + id, Name: id, Generation: 1, VCPUs: 1, MemoryMiB: 96,
		Labels:  map[string]string{"plasmavmc.io/epoch": "1"},
		Kernel:  l.g.Kernel,
		Initrd:  l.g.Initrd,
		Cmdline: strings.Join(append([]string{guestlab.Cmdline}, knobs...), " "),
	}
}

// boot defines and starts spec on h with a qcow2 disk on the shared pool, and returns the
// first heartbeat.
func (l *migLab) boot(t testing.TB, h *fakeHost, spec driver.Spec) guest.Observation {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	disk, err := l.pool.CreateDisk(ctx, storage.PoolShared, spec.ID+"-root", "base", 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	spec.Disks = []driver.Disk{{Path: disk.Path}}
	if err := h.d.Define(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := h.d.Start(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	m := follow(t, guest.NewFileMonitor(h.d.Paths(spec.ID).SerialLog, 50*time.Millisecond, nil))
	return waitHB(t, m, "first heartbeat on "+h.name, func(guest.Observation) bool { return true })
}

// heartbeats parses the complete heartbeat lines of a serial log.
func heartbeats(t testing.TB, path string) []guest.Heartbeat {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []guest.Heartbeat
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if hb, err := guest.ParseHeartbeat(sc.Bytes()); err == nil {
			out = append(out, hb)
		}
	}
	return out
}

// migrate runs Migrate of id from one host to the other, the destination's VM directory
// created first (the target agent's job), and records the progress reports.
func migrate(t testing.TB, ctx context.Context, from, to *fakeHost, id string, p driver.MigrateParams) (driver.MigrationResult, []driver.MigrationProgress, error) {
	t.Helper()
	if err := os.MkdirAll(to.d.Paths(id).Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p.DestURI, p.DestStateDir = to.uri, to.stateDir
	var mu sync.Mutex
	var progress []driver.MigrationProgress
	user := p.Progress
	p.Progress = func(mp driver.MigrationProgress) {
		mu.Lock()
		progress = append(progress, mp)
		mu.Unlock()
		if user != nil {
			user(mp)
		}
	}
	res, err := from.d.Migrate(ctx, id, p)
	mu.Lock()
	defer mu.Unlock()
	return res, progress, err
}

// checkMoved checks that id left from and runs on to, persistently, and that its heartbeat
// continues there: the same boot, the sequence going on from the last one on the source (a
// line torn by the switch may be lost, nothing more), on the serial log and on the
// virtio-serial socket.
func checkMoved(t testing.TB, from, to *fakeHost, id, boot string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := from.d.Get(ctx, id); !errors.Is(err, driver.ErrNotFound) {
		t.Fatalf("after migration, Get on the source: %v, want ErrNotFound", err)
	}
	dom, err := to.d.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if dom.State != driver.StateRunning || dom.Meta.ID != id || dom.Meta.Labels["plasmavmc.io/epoch"] == "" {
		t.Fatalf("on the destination: %+v", dom)
	}
	if !persistent(t, to, id) {
		t.Fatal("the domain is not persistent on the destination")
	}
	src := heartbeats(t, from.d.Paths(id).SerialLog)
	if len(src) == 0 {
		t.Fatal("no heartbeat in the source's serial log")
	}
	last := src[len(src)-1]
	m := follow(t, guest.NewFileMonitor(to.d.Paths(id).SerialLog, 50*time.Millisecond, nil))
	o := waitHB(t, m, "on the destination", func(o guest.Observation) bool { return o.Seq > last.Seq })
	if o.Boot != boot || last.Boot != boot {
		t.Fatalf("boot changed: source %s, destination %s, want %s", last.Boot, o.Boot, boot)
	}
	first := heartbeats(t, to.d.Paths(id).SerialLog)[0]
	if first.Boot != boot || first.Seq <= last.Seq || first.Seq > last.Seq+2 {
		t.Fatalf("heartbeat does not continue: last on the source %v, first on the destination %v", last, first)
	}
	sock := follow(t, guest.NewSocketMonitor(to.d.Paths(id).HeartbeatSocket, 100*time.Millisecond, nil))
	if so := waitHB(t, sock, "virtio-serial on the destination", func(o guest.Observation) bool { return o.Seq > last.Seq }); so.Boot != boot {
		t.Fatalf("virtio-serial boot %s, want %s", so.Boot, boot)
	}
}

// checkStayed checks that id still runs on from with the same boot and its heartbeat goes on,
// and that the destination has no copy.
func checkStayed(t testing.TB, from, to *fakeHost, id, boot string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dom, err := from.d.Get(ctx, id)
	if err != nil {
		t.Fatalf("after a failed migration, Get on the source: %v", err)
	}
	if dom.State != driver.StateRunning {
		t.Fatalf("after a failed migration the source has %s/%s", dom.State, dom.Reason)
	}
	if !persistent(t, from, id) {
		t.Fatal("the domain lost its persistent definition on the source")
	}
	if to != nil {
		if _, err := to.d.Get(ctx, id); !errors.Is(err, driver.ErrNotFound) {
			t.Fatalf("after a failed migration, Get on the destination: %v, want ErrNotFound", err)
		}
	}
	m := follow(t, guest.NewFileMonitor(from.d.Paths(id).SerialLog, 50*time.Millisecond, nil))
	now := waitHB(t, m, "on the source", func(guest.Observation) bool { return true })
	o := waitHB(t, m, "continuing on the source", func(o guest.Observation) bool { return o.Seq > now.Seq+1 })
	if o.Boot != boot {
		t.Fatalf("the guest rebooted: %s -> %s", boot, o.Boot)
	}
}

// persistent asks virsh whether id's domain on h has a persistent definition.
func persistent(t testing.TB, h *fakeHost, id string) bool {
	t.Helper()
	out, err := exec.Command("virsh", "-c", h.uri, "dominfo", driver.DomainName(id)).CombinedOutput()
	if err != nil {
		t.Fatalf("virsh dominfo: %v\n%s", err, out)
	}
	return regexp.MustCompile(`(?m)^Persistent:\s+yes`).Match(out)
}

// waitProcessed returns a Progress func that closes ch once bytes have been sent.
func waitProcessed(n int64, ch chan struct{}) func(driver.MigrationProgress) {
	var once sync.Once
	return func(p driver.MigrationProgress) {
		if p.DataProcessed >= n {
			once.Do(func() { close(ch) })
		}
	}
}

func logResult(t testing.TB, what string, res driver.MigrationResult, progress []driver.MigrationProgress) {
	t.Helper()
	var last driver.MigrationProgress
	if len(progress) > 0 {
		last = progress[len(progress)-1]
	}
	t.Logf("MEASURE migration %s: total %v, downtime %v (auto-converge used %v, post-copy used %v; %d progress reports, last %+v)",
		what, res.Total.Round(time.Millisecond), res.Downtime, res.AutoConvergeUsed, res.PostCopyUsed, len(progress), last)
}

// TestMigrate live-migrates the tiny guest between two fake hosts (each its own libvirtd, on
// one machine): idle, while dirtying memory (auto-converge, post-copy), and failing (the
// destination fenced mid-migration, a timeout, a cancelled context), where it must keep
// running on the source. The steps share the hosts and guests and run in order.
func TestMigrate(t *testing.T) {
	l := newMigLab(t)
	a, b := l.a, l.b
	c := startFakeHost(t, "c") // fenced mid-migration
	id := l.prefix + "idle"
	boot := l.boot(t, a, l.spec("idle")).Boot

	t.Run("idle guest", func(t *testing.T) {
		res, progress, err := migrate(t, t.Context(), a, b, id, driver.MigrateParams{Timeout: 2 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		logResult(t, "idle a->b", res, progress)
		if res.Total <= 0 || res.Downtime <= 0 || res.PostCopyUsed || res.AutoConvergeUsed {
			t.Fatalf("result %+v", res)
		}
		if len(progress) == 0 || progress[len(progress)-1].Phase != driver.PhaseDone || progress[len(progress)-1].DataTotal <= 0 {
			t.Fatalf("progress %+v, want a final %q report with data", progress, driver.PhaseDone)
		}
		checkMoved(t, a, b, id, boot)
	})
	if t.Failed() {
		return
	}

	t.Run("UpdateMeta live and across a libvirtd restart", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		md := driver.Metadata{Name: "idle", Generation: 3, Labels: map[string]string{"plasmavmc.io/epoch": "2", "plasmavmc.io/failover": "true"}}
		if err := b.d.UpdateMeta(ctx, id, md); err != nil {
			t.Fatal(err)
		}
		md.ID = id
		check := func(when string) {
			t.Helper()
			doms, err := b.d.List(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, dom := range doms {
				if dom.ID == id {
					if fmt.Sprint(dom.Meta) != fmt.Sprint(md) {
						t.Fatalf("%s: List metadata %+v, want %+v", when, dom.Meta, md)
					}
					return
				}
			}
			t.Fatalf("%s: %s missing from List", when, id)
		}
		check("live")
		out, err := exec.Command("virsh", "-c", b.uri, "dumpxml", "--inactive", driver.DomainName(id)).CombinedOutput()
		if err != nil || !strings.Contains(string(out), `key="plasmavmc.io/epoch">2<`) && !strings.Contains(string(out), `key='plasmavmc.io/epoch'>2<`) {
			t.Fatalf("persistent definition not updated: %v\n%s", err, out)
		}
		from := b.mark()
		b.restartLibvirtd(t)
		b.waitEvent(t, from, "reconnected", func(ev driver.Event) bool { return ev.Type == driver.EventReconnected })
		check("after a libvirtd restart")

		// A defined, stopped domain: only its persistent definition.
		s := l.spec("stopped")
		if err := a.d.Define(ctx, s); err != nil {
			t.Fatal(err)
		}
		if err := a.d.UpdateMeta(ctx, s.ID, driver.Metadata{ID: s.ID, Name: "renamed", Generation: 2}); err != nil {
			t.Fatal(err)
		}
		if dom, err := a.d.Get(ctx, s.ID); err != nil || dom.Meta.Name != "renamed" || dom.Meta.Generation != 2 || len(dom.Meta.Labels) != 0 {
			t.Fatalf("stopped domain after UpdateMeta: %+v, %v", dom, err)
		}
		if err := a.d.UpdateMeta(ctx, s.ID, driver.Metadata{ID: "other"}); !errors.Is(err, driver.ErrInvalidSpec) {
			t.Fatalf("UpdateMeta with another id: %v, want ErrInvalidSpec", err)
		}
		if err := a.d.UpdateMeta(ctx, l.prefix+"nope", driver.Metadata{}); !errors.Is(err, driver.ErrNotFound) {
			t.Fatalf("UpdateMeta of an unknown domain: %v, want ErrNotFound", err)
		}
		if err := a.d.Undefine(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
	})

	// The failures go from b (where the guest is now) at a slow rate, so they hit a migration
	// in full flight: the guest has ~60 MiB to send.
	slow := driver.MigrateParams{MaxBandwidthMiB: 2}

	t.Run("timeout aborts, the VM stays", func(t *testing.T) {
		p := slow
		p.Timeout = 3 * time.Second
		t0 := time.Now()
		_, progress, err := migrate(t, t.Context(), b, a, id, p)
		if !errors.Is(err, driver.ErrMigration) || !strings.Contains(err.Error(), "timed out") {
			t.Fatalf("Migrate with a 3 s timeout: %v, want ErrMigration (timed out)", err)
		}
		t.Logf("MEASURE timeout 3 s -> Migrate returned after %v: %v (%d progress reports)", time.Since(t0).Round(time.Millisecond), err, len(progress))
		checkStayed(t, b, a, id, boot)
	})

	t.Run("cancelled context aborts, the VM stays", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		_, _, err := migrate(t, ctx, b, a, id, slow)
		if !errors.Is(err, driver.ErrMigration) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Migrate with a context ending: %v, want ErrMigration and DeadlineExceeded", err)
		}
		t.Logf("cancelled: %v", err)
		checkStayed(t, b, a, id, boot)
	})

	t.Run("destination fenced mid-migration, the VM stays", func(t *testing.T) {
		p := slow
		p.Timeout = 2 * time.Minute
		sent := make(chan struct{})
		p.Progress = waitProcessed(4<<20, sent)
		done := make(chan error, 1)
		var progress []driver.MigrationProgress
		go func() {
			var err error
			_, progress, err = migrate(t, t.Context(), b, c, id, p)
			done <- err
		}()
		select {
		case <-sent:
		case err := <-done:
			t.Fatalf("migration ended before the fence: %v", err)
		case <-time.After(time.Minute):
			t.Fatal("migration did not send 4 MiB in a minute")
		}
		t0 := time.Now()
		libvirtSh(t, "host", "fence", c.name)
		var err error
		select {
		case err = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatal("Migrate did not return 2 minutes after the destination was fenced")
		}
		if !errors.Is(err, driver.ErrMigration) {
			t.Fatalf("Migrate to a fenced host: %v, want ErrMigration", err)
		}
		t.Logf("MEASURE destination fenced -> Migrate returned after %v: %v (%d progress reports)", time.Since(t0).Round(time.Millisecond), err, len(progress))
		checkStayed(t, b, nil, id, boot)
	})

	t.Run("idle guest back, QEMU's 300 ms switch-over target", func(t *testing.T) {
		res, progress, err := migrate(t, t.Context(), b, a, id, driver.MigrateParams{Timeout: 2 * time.Minute, MaxDowntime: driver.RaisedMaxDowntime})
		if err != nil {
			t.Fatal(err)
		}
		logResult(t, "idle b->a, max downtime 300 ms", res, progress)
		checkMoved(t, b, a, id, boot)
		// The source's files stay until Undefine (of a domain it no longer has).
		if err := b.d.Undefine(t.Context(), id); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(b.d.Paths(id).Dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("source state dir left after Undefine: %v", err)
		}
	})

	// A guest re-dirtying 32 of its 128 MiB all the time (about 16 MiB/s under TCG here; 96 MiB
	// is too small for that, the guest runs out of memory): at 16 MiB/s the pre-copy cannot catch
	// up unless auto-convergence slows the guest down.
	did := l.prefix + "dirty"
	ds := l.spec("dirty", "plasma.dirty=32")
	ds.MemoryMiB = 128
	dboot := l.boot(t, a, ds).Boot
	t.Run("dirtying guest, auto-converge requested", func(t *testing.T) {
		// Under TCG the driver does not throttle (CPU throttling corrupted dirtying guests
		// here): uncapped, the pre-copy converges by itself.
		res, progress, err := migrate(t, t.Context(), a, b, did, driver.MigrateParams{
			AutoConverge: true, Timeout: 3 * time.Minute, MaxDowntime: 300 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		logResult(t, "dirty 32 MiB, auto-converge requested a->b", res, progress)
		if res.AutoConvergeUsed {
			t.Errorf("auto-converge used under TCG: %+v", res)
		}
		checkMoved(t, a, b, did, dboot)
	})

	t.Run("dirtying guest, post-copy", func(t *testing.T) {
		res, progress, err := migrate(t, t.Context(), b, a, did, driver.MigrateParams{
			PostCopyAfter: 3 * time.Second, MaxBandwidthMiB: 16, Timeout: 3 * time.Minute,
		})
		if err != nil {
			t.Fatal(err)
		}
		logResult(t, "dirty 32 MiB, 16 MiB/s, post-copy after 3 s b->a", res, progress)
		if !res.PostCopyUsed {
			t.Fatalf("post-copy not used: %+v", res)
		}
		checkMoved(t, b, a, did, dboot)
	})

	t.Run("errors before the migration starts", func(t *testing.T) {
		ctx := t.Context()
		if _, err := a.d.Migrate(ctx, l.prefix+"nope", driver.MigrateParams{DestURI: b.uri}); !errors.Is(err, driver.ErrNotFound) {
			t.Fatalf("unknown domain: %v, want ErrNotFound", err)
		}
		if _, err := a.d.Migrate(ctx, id, driver.MigrateParams{}); !errors.Is(err, driver.ErrInvalidSpec) {
			t.Fatalf("no destination: %v, want ErrInvalidSpec", err)
		}
		s := l.spec("off")
		if err := a.d.Define(ctx, s); err != nil {
			t.Fatal(err)
		}
		if _, err := a.d.Migrate(ctx, s.ID, driver.MigrateParams{DestURI: b.uri}); !errors.Is(err, driver.ErrNotRunning) {
			t.Fatalf("stopped domain: %v, want ErrNotRunning", err)
		}
	})
}

// BenchmarkMigrate live-migrates an idle tiny guest back and forth between two fake hosts and
// reports the mean total time and downtime per migration (libvirt's figures).
func BenchmarkMigrate(b *testing.B) {
	l := newMigLab(b)
	id := l.prefix + "bench"
	l.boot(b, l.a, l.spec("bench"))
	hosts := [2]*fakeHost{l.a, l.b}
	for _, h := range hosts {
		if err := os.MkdirAll(h.d.Paths(id).Dir, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	var total, down time.Duration
	n := 0
	for b.Loop() {
		from, to := hosts[n%2], hosts[(n+1)%2]
		res, err := from.d.Migrate(b.Context(), id, driver.MigrateParams{DestURI: to.uri, DestStateDir: to.stateDir, Timeout: 2 * time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		total += res.Total
		down += res.Downtime
		n++
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(n), "total-ms/op")
	b.ReportMetric(float64(down.Microseconds())/1000/float64(n), "downtime-ms/op")
}
