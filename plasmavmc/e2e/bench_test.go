package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest"
	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// BenchmarkCreate measures, for docs/plasmavmc/performance.md: create → first heartbeat
// (sequential VMs, p50) and 20 VMs created at once across two agents on two fake hosts,
// each beside the same guest started directly through the driver (raw libvirt: Define +
// Start, first heartbeat on the serial log). It boots 50 guests (about 5 minutes), once
// whatever b.N is: `go test -run '^$' -bench BenchmarkCreate -benchtime 1x ./e2e/`.
func BenchmarkCreate(b *testing.B) {
	var t testing.TB = b
	const seq, conc = 5, 20
	e := newEnv(t, envOptions{})
	fh1, fh2 := startFakeHost(t, "b1"), startFakeHost(t, "b2")
	g := guestlab.BuildGuest(t)

	// Raw libvirt first, on fake host b1 before any agent runs there (an agent removes
	// domains not assigned to it).
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	drv, err := driver.Open(ctx, driver.Config{Socket: fh1.sock, StateDir: e.stateDir})
	if err != nil {
		t.Fatal(err)
	}
	defer drv.Close()
	rawBoot := func(name string) (time.Duration, error) {
		id := newUUID()
		start := time.Now()
		defer func() {
			c, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_ = drv.Destroy(c, id)
			_ = drv.Undefine(c, id)
		}()
		if err := drv.Define(ctx, driver.Spec{ID: id, Name: name, VCPUs: 1, MemoryMiB: guestMiB, Kernel: g.Kernel,
			Initrd: g.Initrd, Cmdline: guestlab.Cmdline}); err != nil {
			return 0, err
		}
		if err := drv.Start(ctx, id); err != nil {
			return 0, err
		}
		mctx, mcancel := context.WithTimeout(ctx, bootTimeout)
		defer mcancel()
		mon := guest.NewFileMonitor(drv.Paths(id).SerialLog, 50*time.Millisecond, nil)
		go mon.Run(mctx)
		if _, err := mon.Wait(mctx, func(o guest.Observation) bool { return o.Seq > 0 }); err != nil {
			return 0, fmt.Errorf("no heartbeat: %w", err)
		}
		return time.Since(start), nil
	}
	var rawSeq []time.Duration
	for i := range seq {
		d, err := rawBoot(fmt.Sprintf("raw%d", i))
		if err != nil {
			t.Fatal(err)
		}
		rawSeq = append(rawSeq, d)
	}
	report(t, "raw driver: Define+Start → first heartbeat, sequential", rawSeq)
	rawConc, rawWall := parallel(t, conc, func(i int) (time.Duration, error) {
		// The raw concurrent run keeps every guest up until all have booted, like the
		// control-plane run.
		return rawBoot(fmt.Sprintf("rawc%d", i))
	})
	report(t, fmt.Sprintf("raw driver: %d at once on one libvirtd → first heartbeat", conc), rawConc)
	measure(t, fmt.Sprintf("raw driver: %d at once, wall", conc), rawWall.Round(10*time.Millisecond))
	drv.Close()

	// Control plane: two agents, one per fake host.
	e.addAgent("bench1", fh1, 4096)
	e.addAgent("bench2", fh2, 4096)
	c := e.api(0, "")
	e.registerImages(c)
	var cpSeq []time.Duration
	for i := range seq {
		start := time.Now()
		vm := e.create(c, "bench", fmt.Sprintf("seq%d", i), spec())
		e.waitVM(c, vm.Id, bootTimeout, "running with a heartbeat", running(""))
		cpSeq = append(cpSeq, time.Since(start))
		e.deleteAndWait(c, vm.Id)
	}
	report(t, "PlasmaVMC: CreateVM → RUNNING with a healthy heartbeat in status, sequential", cpSeq)

	hosts := make([]string, conc)
	ids := make([]string, conc)
	cpConc, cpWall := parallel(t, conc, func(i int) (time.Duration, error) {
		start := time.Now()
		vm := e.create(c, "bench", fmt.Sprintf("conc%d", i), spec())
		ids[i] = vm.Id
		v, _ := e.waitVM(c, vm.Id, 2*bootTimeout, "running with a heartbeat", running(""))
		hosts[i] = v.Host
		return time.Since(start), nil
	})
	report(t, fmt.Sprintf("PlasmaVMC: %d CreateVM at once across 2 agents → RUNNING with heartbeat", conc), cpConc)
	measure(t, fmt.Sprintf("PlasmaVMC: %d at once, wall", conc), cpWall.Round(10*time.Millisecond))
	per := map[string]int{}
	for _, h := range hosts {
		per[h]++
	}
	measure(t, "placement", per)
	start := time.Now()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() { e.deleteAndWait(c, id) })
	}
	wg.Wait()
	measure(t, fmt.Sprintf("PlasmaVMC: %d deletes at once → all gone", conc), time.Since(start).Round(10*time.Millisecond))
	for _, id := range ids {
		if qemuPID(id) != 0 {
			t.Errorf("VM %s still has a QEMU after delete", id)
		}
		if m, _ := filepath.Glob(filepath.Join(e.stateDir, id)); len(m) != 0 {
			t.Logf("state dir of %s left: %v", id, m)
		}
	}
}

// deleteAndWait deletes the VM and waits for its delete operation to end, which it
// returns (nil when the delete was refused).
func (e *env) deleteAndWait(c clients, id string) *pb.Operation {
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	r, err := c.vm.DeleteVM(ctx, connectReq(&pb.DeleteVMRequest{Id: id}))
	if err != nil {
		e.t.Errorf("delete %s: %v", id, err)
		return nil
	}
	return e.waitOp(c, r.Msg.Operation.Id, waitTimeout)
}

// parallel runs f(0..n-1) at once and returns each duration and the wall time.
func parallel(t testing.TB, n int, f func(i int) (time.Duration, error)) ([]time.Duration, time.Duration) {
	t.Helper()
	out := make([]time.Duration, n)
	errs := make([]error, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out[i], errs[i] = f(i) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("%d: %v", i, err)
		}
	}
	return out, time.Since(start)
}

// report logs p50 / max / min of ds.
func report(t testing.TB, what string, ds []time.Duration) {
	t.Helper()
	s := slices.Clone(ds)
	slices.Sort(s)
	measure(t, what, fmt.Sprintf("n=%d min %v p50 %v max %v", len(s), s[0].Round(10*time.Millisecond),
		s[len(s)/2].Round(10*time.Millisecond), s[len(s)-1].Round(10*time.Millisecond)))
}

func connectReq[T any](m *T) *connect.Request[T] { return connect.NewRequest(m) }

// newUUID is a random (version 4) UUID.
func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
