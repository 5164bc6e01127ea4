package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/plasmavmc/internal/driver"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestLifecycle: create → RUNNING with a heartbeat (boot id from the guest's serial
// heartbeat), stop → STOPPED (domain shut off), start and reboot → RUNNING with a new
// boot id each time, delete → the VM, its domain and its disk are gone.
func TestLifecycle(t *testing.T) {
	e := newEnv(t, envOptions{})
	fh := startFakeHost(t, "a")
	e.addAgent("life1", fh, 2048)
	c := e.api(0, "")
	e.registerImages(c)

	s := spec()
	s.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "local"}}
	vm := e.create(c, "demo", "life", s)
	_, took := e.waitVM(c, vm.Id, bootTimeout, "RUNNING (QEMU up)", inState(pb.VMState_VM_STATE_RUNNING))
	measure(t, "create → RUNNING (QEMU started, before the first heartbeat)", took.Round(10*time.Millisecond))
	vm, took2 := e.waitVM(c, vm.Id, bootTimeout, "running with a heartbeat", running(""))
	measure(t, "create → RUNNING with a healthy heartbeat (boot id)", (took + took2).Round(10*time.Millisecond))
	if vm.Host != "life1" || vm.Status.Heartbeat.BootId != vm.Status.BootId {
		t.Fatalf("running VM: host %q, status %v", vm.Host, vm.Status)
	}
	disk := filepath.Join(e.pool, "disks", vm.Id+"-root")
	if _, err := os.Stat(disk); err != nil {
		// The storage layer may add an extension; look for anything of the VM's.
		if m, _ := filepath.Glob(filepath.Join(e.pool, "disks", vm.Id+"*")); len(m) == 0 {
			t.Fatalf("no disk for the VM in the pool: %v", err)
		}
	}
	if d, ok := e.domain(fh, vm.Id); !ok || d.State != driver.StateRunning {
		t.Fatalf("domain: %+v (exists %v)", d, ok)
	}
	boot1 := vm.Status.BootId

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t.Run("stop", func(t *testing.T) {
		r, err := c.vm.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: vm.Id, TimeoutSeconds: 10}))
		if err != nil {
			t.Fatal(err)
		}
		_, took := e.waitVM(c, vm.Id, waitTimeout, "STOPPED", inState(pb.VMState_VM_STATE_STOPPED))
		measure(t, "stop (ACPI) → STOPPED", took.Round(10*time.Millisecond))
		if op := e.waitOp(c, r.Msg.Operation.Id, waitTimeout); op.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("stop operation: %v", op)
		}
		if d, ok := e.domain(fh, vm.Id); !ok || d.State == driver.StateRunning {
			t.Fatalf("domain after stop: %+v (exists %v)", d, ok)
		}
	})
	t.Run("start", func(t *testing.T) {
		if _, err := c.vm.StartVM(ctx, connect.NewRequest(&pb.StartVMRequest{Id: vm.Id})); err != nil {
			t.Fatal(err)
		}
		v, took := e.waitVM(c, vm.Id, bootTimeout, "running with a new boot", running(boot1))
		measure(t, "start → RUNNING with a new boot id", took.Round(10*time.Millisecond))
		boot1 = v.Status.BootId
	})
	t.Run("reboot", func(t *testing.T) {
		pid := qemuPID(vm.Id)
		r, err := c.vm.RebootVM(ctx, connect.NewRequest(&pb.RebootVMRequest{Id: vm.Id}))
		if err != nil {
			t.Fatal(err)
		}
		_, took := e.waitVM(c, vm.Id, bootTimeout, "running with a new boot after reboot", running(boot1))
		measure(t, "reboot → RUNNING with a new boot id", took.Round(10*time.Millisecond))
		if op := e.waitOp(c, r.Msg.Operation.Id, waitTimeout); op.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("reboot operation: %v", op)
		}
		if now := qemuPID(vm.Id); now != pid {
			t.Errorf("reboot replaced QEMU: pid %d → %d (want the same process)", pid, now)
		}
	})
	t.Run("delete", func(t *testing.T) {
		r, err := c.vm.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: vm.Id}))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if op := e.waitOp(c, r.Msg.Operation.Id, waitTimeout); op.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("delete operation: %v", op)
		}
		measure(t, "delete → operation DONE", time.Since(start).Round(10*time.Millisecond))
		if v, err := get(ctx, c, vm.Id); v != nil || err != nil {
			t.Fatalf("VM after delete: %v %v", v, err)
		}
		if _, ok := e.domain(fh, vm.Id); ok {
			t.Fatal("domain still defined after delete")
		}
		if n := countDomains(t, fh, vm.Id); n != 0 {
			t.Fatalf("virsh lists %d domains of the deleted VM", n)
		}
		if m, _ := filepath.Glob(filepath.Join(e.pool, "disks", vm.Id+"*")); len(m) != 0 {
			t.Fatalf("disks left after delete: %v", m)
		}
		if qemuPID(vm.Id) != 0 {
			t.Fatal("QEMU still running after delete")
		}
	})
}
