package agent_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
	"plasmacloud.dev/plasmavmc/internal/state"
	"plasmacloud.dev/plasmavmc/internal/storage"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// Generous: QEMU TCG shares two cores with other work.
const (
	bootTimeout = 120 * time.Second
	waitTimeout = 90 * time.Second
)

// lab is a real ChainFire, the lab libvirtd, a pool with the tiny guest's images registered
// (files and records), and a driver of the test's own to inspect and clean up domains.
type lab struct {
	t        *testing.T
	cf       *chainfiretest.Cluster
	c        *chainfire.Client
	st       *state.Store
	sock     string
	stateDir string
	pools    map[string]string
	drv      *driver.Libvirt
	ids      []string // VMs created, destroyed at cleanup
}

func newLab(t *testing.T) *lab {
	g := guestlab.BuildGuest(t)
	sock := guestlab.StartLibvirtd(t)
	cluster := chainfiretest.Start(t, 1, chainfiretest.Options{})
	c, err := chainfire.New(chainfire.Config{Endpoints: cluster.Endpoints(), RequestTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	// Short: heartbeat sockets live under it (unix socket paths are limited to 107 bytes).
	stateDir, err := os.MkdirTemp("/tmp", "pva-")
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, cf: cluster, c: c, st: state.New(c, nil), sock: sock, stateDir: stateDir,
		pools: map[string]string{storage.PoolLocal: t.TempDir(), storage.PoolShared: t.TempDir()}}

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	store, err := storage.New(storage.Config{Pools: l.pools})
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(t.TempDir(), "base.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", base, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	for name, src := range map[string]string{"vmlinux": g.Kernel, "initrd": g.Initrd, "base": base} {
		if _, err := store.RegisterImage(ctx, storage.PoolLocal, name, src); err != nil {
			t.Fatal(err)
		}
		format := map[string]string{"vmlinux": "kernel", "initrd": "initrd", "base": "qcow2"}[name]
		if err := l.st.PutImage(ctx, &pb.Image{Name: name, Pool: storage.PoolLocal, Format: format,
			Path: "images/" + name, CreateTime: timestamppb.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if l.drv, err = driver.Open(ctx, driver.Config{Socket: sock, StateDir: stateDir}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, id := range l.ids {
			_ = l.drv.Destroy(ctx, id)
			_ = l.drv.Undefine(ctx, id)
		}
		l.drv.Close()
		os.RemoveAll(stateDir)
	})
	return l
}

func logger(t *testing.T, host string) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("agent", host)
}

// testWriter sends log lines to t.Log (dropped after the test ended).
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { _ = recover() }() // a log line after the test ended
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// config is an in-process agent's configuration for host.
func (l *lab) config(host string) agent.Config {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		l.t.Fatal(err)
	}
	return agent.Config{
		HostName: host, Listener: ln, ChainFireEndpoints: l.cf.Endpoints(), LibvirtSocket: l.sock,
		StateDir: l.stateDir, Pools: l.pools, CapacityVCPUs: 8, CapacityMemoryMiB: 4096,
		Labels: map[string]string{"rack": "r1"}, StopTimeout: 10 * time.Second,
		Logger: logger(l.t, host),
	}
}

// runAgent runs an in-process agent until the returned stop is called (or the test ends).
func (l *lab) runAgent(cfg agent.Config) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx, cfg) }()
	var stopped bool
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				l.t.Errorf("agent.Run: %v", err)
			}
		case <-time.After(time.Minute):
			l.t.Errorf("agent.Run did not return within a minute of its context's end")
		}
	}
	l.t.Cleanup(stop)
	return stop
}

func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// newVM is a VM record of the tiny guest on host (96 MiB, one overlay disk, kernel boot).
func (l *lab) newVM(name, host, cmdline string, ha *pb.HAPolicy) *pb.VM {
	id := newID()
	l.ids = append(l.ids, id)
	return &pb.VM{
		Id: id, Name: name, Project: "p1", Host: host, Generation: 1,
		PowerState: pb.PowerState_POWER_STATE_RUNNING,
		Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 96,
			Disks: []*pb.Disk{{Name: "root", Image: "base", Pool: storage.PoolLocal}},
			Boot:  &pb.Boot{KernelImage: "vmlinux", InitrdImage: "initrd", Cmdline: strings.TrimSpace(guestlab.Cmdline + " " + cmdline)},
			Ha:    ha},
		Labels:     map[string]string{},
		CreateTime: timestamppb.Now(),
	}
}

// op stores a RUNNING operation of kind for vm and returns its id.
func (l *lab) op(vm *pb.VM, kind string) string {
	id := newID()
	_, err := l.c.Put(l.t.Context(), state.OperationKey(id), state.Encode(&pb.Operation{Id: id, Kind: kind, VmId: vm.Id,
		State: pb.OperationState_OPERATION_STATE_RUNNING, StartTime: timestamppb.Now(), Project: vm.Project}))
	if err != nil {
		l.t.Fatal(err)
	}
	return id
}

// create writes what the controller writes when it creates and places vm: the record, its
// assigned copy, status SCHEDULED and the create operation.
func (l *lab) create(vm *pb.VM) {
	vm.Labels[state.LabelCreate] = l.op(vm, state.OpCreate)
	_, err := l.c.Txn(l.t.Context()).Then(
		chainfire.OpPut(state.VMKey(vm.Id), state.Encode(vm)),
		chainfire.OpPut(state.AssignedKey(vm.Host, vm.Id), state.Encode(vm)),
		state.PutStatusOp(vm.Id, &pb.VMStatus{State: pb.VMState_VM_STATE_SCHEDULED, Host: vm.Host}),
	).Commit()
	if err != nil {
		l.t.Fatal(err)
	}
}

// update bumps vm's generation after change and writes the record and its assigned copy.
func (l *lab) update(vm *pb.VM, change func(vm *pb.VM)) {
	change(vm)
	vm.Generation++
	_, err := l.c.Txn(l.t.Context()).Then(
		chainfire.OpPut(state.VMKey(vm.Id), state.Encode(vm)),
		chainfire.OpPut(state.AssignedKey(vm.Host, vm.Id), state.Encode(vm)),
	).Commit()
	if err != nil {
		l.t.Fatal(err)
	}
}

// status reads vm's status (nil when absent).
func (l *lab) status(ctx context.Context, id string) (*pb.VMStatus, error) {
	resp, err := l.c.Get(ctx, state.StatusKey(id))
	if err != nil || len(resp.Kvs) == 0 {
		return nil, err
	}
	return state.DecodeStatus(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
}

// waitStatus polls vm's status until ok holds and returns it.
func (l *lab) waitStatus(id string, timeout time.Duration, what string, ok func(st *pb.VMStatus) bool) *pb.VMStatus {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(l.t.Context(), timeout)
	defer cancel()
	var last *pb.VMStatus
	for {
		st, err := l.status(ctx, id)
		if err == nil {
			last = st
			if ok(st) {
				return st
			}
		}
		select {
		case <-ctx.Done():
			// Every goroutine's stack, to tell a stuck worker from a lost event.
			buf := make([]byte, 1<<22)
			buf = buf[:runtime.Stack(buf, true)]
			if f, err := os.CreateTemp("", "agent-stacks-*.txt"); err == nil {
				_, _ = f.Write(buf)
				f.Close()
				l.t.Logf("goroutine stacks: %s", f.Name())
			}
			l.t.Fatalf("vm %s: no status %s within %v; last: %v", id, what, timeout, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func running(st *pb.VMStatus) bool {
	return st != nil && st.State == pb.VMState_VM_STATE_RUNNING && st.Heartbeat.GetHealthy() && st.BootId != ""
}

// waitOp waits for operation id to finish and returns it.
func (l *lab) waitOp(id string) *pb.Operation {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(l.t.Context(), waitTimeout)
	defer cancel()
	for {
		op, _, err := l.st.GetOperation(ctx, id)
		if err == nil && op.State != pb.OperationState_OPERATION_STATE_RUNNING {
			return op
		}
		select {
		case <-ctx.Done():
			l.t.Fatalf("operation %s not finished within %v: %v", id, waitTimeout, op)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// domain returns vm's domain (ok false when undefined).
func (l *lab) domain(id string) (driver.Domain, bool) {
	l.t.Helper()
	ctx, cancel := context.WithTimeout(l.t.Context(), 30*time.Second)
	defer cancel()
	d, err := l.drv.Get(ctx, id)
	if err != nil {
		return d, false
	}
	return d, true
}

// countDomains counts the domains of vm id (must be 0 or 1: libvirt names are unique, but
// a duplicate would show up as a second UUID).
func (l *lab) countDomains(id string) int {
	ctx, cancel := context.WithTimeout(l.t.Context(), 30*time.Second)
	defer cancel()
	doms, err := l.drv.List(ctx)
	if err != nil {
		l.t.Fatal(err)
	}
	n := 0
	for _, d := range doms {
		if d.ID == id || d.Meta.ID == id {
			n++
		}
	}
	return n
}

// waitDomain polls vm id's domain until ok holds.
func (l *lab) waitDomain(id string, ok func(driver.Domain) bool) driver.Domain {
	l.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		if d, found := l.domain(id); found && ok(d) {
			return d
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("vm %s: domain not as expected within %v", id, waitTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
