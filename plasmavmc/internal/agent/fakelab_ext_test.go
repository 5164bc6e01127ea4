package agent_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/state"
	"plasmacloud.dev/plasmavmc/internal/storage"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// newFakeLab is a lab without libvirtd: a real ChainFire (members of opts), pools with a
// kernel image record (the fake hypervisor never reads the file) and fake hosts on a
// fakeNet. l.drv is nil: use the fake hosts to inspect domains.
func newFakeLab(t *testing.T, members int, opts chainfiretest.Options) (*lab, *fakeNet) {
	cluster := chainfiretest.Start(t, members, opts)
	c, err := chainfire.New(chainfire.Config{Endpoints: cluster.Endpoints(), RequestTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l := &lab{t: t, cf: cluster, c: c, st: state.New(c, nil),
		pools: map[string]string{storage.PoolLocal: t.TempDir(), storage.PoolShared: t.TempDir()}}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for _, pool := range []string{storage.PoolLocal, storage.PoolShared} {
		if err := l.st.PutImage(ctx, &pb.Image{Name: "vmlinux", Pool: pool, Format: "kernel", Path: "images/vmlinux",
			CreateTime: timestamppb.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	return l, newFakeNet()
}

// fakeHost is a fake host: its hypervisor and its (short) state directory.
func (l *lab) fakeHost(n *fakeNet, name string) *fakeHV {
	dir, err := os.MkdirTemp("/tmp", "pvf-")
	if err != nil {
		l.t.Fatal(err)
	}
	h := n.host(name, "fake://"+name, dir)
	l.t.Cleanup(func() {
		h.StopAll()
		os.RemoveAll(dir)
	})
	return h
}

// fakeConfig is the configuration of an in-process agent of fake host h: fast
// reconciles, no watchdog (tests that want one set WatchdogCommand).
func (l *lab) fakeConfig(h *fakeHV) agent.Config {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		l.t.Fatal(err)
	}
	return agent.Config{
		HostName: h.name, Listener: ln, ChainFireEndpoints: l.cf.Endpoints(), Hypervisor: h,
		StateDir: h.stateDir, Pools: l.pools, CapacityVCPUs: 8, CapacityMemoryMiB: 4096,
		MigrationURI: h.uri, NoWatchdog: true, ReconcileInterval: time.Second, OrphanSweep: 2 * time.Second,
		StopTimeout: time.Second, Logger: logger(l.t, h.name),
	}
}

// fakeVM is a VM record for a fake host: kernel boot, no disk, epoch 1.
func (l *lab) fakeVM(name, host string, ha bool) *pb.VM {
	id := newID()
	return &pb.VM{
		Id: id, Name: name, Project: "p1", Host: host, Generation: 1, Epoch: 1,
		PowerState: pb.PowerState_POWER_STATE_RUNNING,
		Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 64, Boot: &pb.Boot{KernelImage: "vmlinux"},
			Ha: &pb.HAPolicy{Failover: ha}},
		Labels:     map[string]string{},
		CreateTime: timestamppb.Now(),
	}
}

// put writes vm's record and its copy at /assigned/<host>/ for each host given (no
// generation bump: the caller sets what it wants).
func (l *lab) put(vm *pb.VM, hosts ...string) {
	l.t.Helper()
	ops := []chainfire.Op{chainfire.OpPut(state.VMKey(vm.Id), state.Encode(vm))}
	for _, h := range hosts {
		ops = append(ops, chainfire.OpPut(state.AssignedKey(h, vm.Id), state.Encode(vm)))
	}
	if _, err := l.c.Txn(l.t.Context()).Then(ops...).Commit(); err != nil {
		l.t.Fatal(err)
	}
}

// running reports a status RUNNING at epoch with a healthy heartbeat.
func runningAt(epoch int64) func(*pb.VMStatus) bool {
	return func(st *pb.VMStatus) bool { return running(st) && st.Epoch == epoch }
}

// waitFor polls cond every 20 ms until it holds or timeout passes (then fails with what).
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("not within %v: %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// hostRecord reads host's record.
func (l *lab) hostRecord(host string) *state.HostRecord {
	l.t.Helper()
	h, err := l.st.GetHost(l.t.Context(), host)
	if err != nil {
		l.t.Fatal(err)
	}
	return h
}

// callsOf returns the fake host's calls about VM id.
func callsOf(h *fakeHV, id string) []string {
	var out []string
	for _, c := range h.Calls() {
		if strings.HasSuffix(c, " "+id) || strings.Contains(c, " "+id+" ") {
			out = append(out, c)
		}
	}
	return out
}
