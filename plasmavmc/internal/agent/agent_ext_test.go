package agent_test

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/state"
	"plasmacloud.dev/plasmavmc/internal/storage"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// get fetches url and returns status code and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitReady(t *testing.T, base string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		code, body := get(t, base+"/readyz")
		if code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz: %d %s", base, code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAgent runs in-process agents (agent.Run) against a real ChainFire, libvirtd and the
// tiny guest under QEMU TCG, driven by the records the controller would write:
// create → RUNNING with a heartbeat; stop; start; reboot (new boot id); QEMU SIGKILL →
// restarted; the restart limit → FAILED (a second VM whose guest panics); agent stopped
// and replaced → the VM re-adopted untouched, an unassigned domain removed; ChainFire
// paused → the VM still restarted after a kill, status caught up after SIGCONT; delete →
// domain, disks and status gone.
func TestAgent(t *testing.T) {
	l := newLab(t)
	const host = "node-a"
	cfg := l.config(host)
	base := "http://" + cfg.Listener.Addr().String()
	stopAgent := l.runAgent(cfg)
	waitReady(t, base)

	ctx := t.Context()
	// Host registered, heartbeat held.
	h, err := l.st.GetHost(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	if h.Host.State != pb.HostState_HOST_STATE_UP || h.Host.Capacity.GetMemoryMib() != 4096 || h.Host.Capacity.GetVcpus() != 8 ||
		strings.Join(h.Host.Pools, ",") != "local,shared" || !strings.HasPrefix(h.Host.Hypervisor, "qemu-") || h.Host.Labels["rack"] != "r1" {
		t.Fatalf("host record: %v", h.Host)
	}

	// Create → RUNNING with a heartbeat.
	vm := l.newVM("web", host, "", nil)
	t0 := time.Now()
	l.create(vm)
	st := l.waitStatus(vm.Id, bootTimeout, "RUNNING with a heartbeat", running)
	t.Logf("MEASURE create → RUNNING with a heartbeat: %v (boot %s)", time.Since(t0).Round(time.Millisecond), st.BootId)
	if op := l.waitOp(vm.Labels[state.LabelCreate]); op.State != pb.OperationState_OPERATION_STATE_DONE {
		t.Fatalf("create operation: %v", op)
	}
	if st.ObservedGeneration != vm.Generation || st.Host != host || st.BootTime == nil {
		t.Fatalf("status: %v", st)
	}
	for _, d := range vm.Spec.Disks {
		if _, err := os.Stat(filepath.Join(l.pools[d.Pool], "disks", vm.Id+"-"+d.Name+".qcow2")); err != nil {
			t.Fatalf("disk: %v", err)
		}
	}

	t.Run("stop", func(t *testing.T) {
		var op string
		l.update(vm, func(vm *pb.VM) {
			vm.PowerState = pb.PowerState_POWER_STATE_STOPPED
			op = l.op(vm, state.OpStop)
			vm.Labels[state.LabelStop] = op
		})
		st := l.waitStatus(vm.Id, waitTimeout, "STOPPED", func(st *pb.VMStatus) bool {
			return st.State == pb.VMState_VM_STATE_STOPPED && st.ObservedGeneration == vm.Generation
		})
		if o := l.waitOp(op); o.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("stop operation: %v", o)
		}
		if d, ok := l.domain(vm.Id); !ok || d.Running() {
			t.Fatalf("domain after stop: %+v %v", d, ok)
		}
		if st.Heartbeat.GetHealthy() {
			t.Fatalf("healthy heartbeat while stopped: %v", st)
		}
	})

	t.Run("start", func(t *testing.T) {
		before := l.waitStatus(vm.Id, 5*time.Second, "any", func(*pb.VMStatus) bool { return true }).BootId
		var op string
		l.update(vm, func(vm *pb.VM) {
			vm.PowerState = pb.PowerState_POWER_STATE_RUNNING
			op = l.op(vm, state.OpStart)
			vm.Labels[state.LabelStart] = op
		})
		l.waitStatus(vm.Id, bootTimeout, "RUNNING with a new boot", func(st *pb.VMStatus) bool {
			return running(st) && st.BootId != before && st.ObservedGeneration == vm.Generation
		})
		if o := l.waitOp(op); o.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("start operation: %v", o)
		}
	})

	t.Run("reboot", func(t *testing.T) {
		before := l.waitStatus(vm.Id, 5*time.Second, "running", running)
		d0, _ := l.domain(vm.Id)
		var op string
		l.update(vm, func(vm *pb.VM) {
			op = l.op(vm, state.OpReboot)
			vm.Labels[state.LabelReboot] = op
		})
		t0 := time.Now()
		l.waitStatus(vm.Id, bootTimeout, "RUNNING with a new boot id", func(st *pb.VMStatus) bool {
			return running(st) && st.BootId != before.BootId
		})
		t.Logf("MEASURE reboot → new boot id: %v", time.Since(t0).Round(time.Millisecond))
		if o := l.waitOp(op); o.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("reboot operation: %v", o)
		}
		if d1, _ := l.domain(vm.Id); d1.PID != d0.PID {
			t.Fatalf("reboot changed QEMU: pid %d → %d", d0.PID, d1.PID)
		}
	})

	t.Run("qemu-sigkill", func(t *testing.T) {
		before := l.waitStatus(vm.Id, 5*time.Second, "running", running)
		d0, _ := l.domain(vm.Id)
		t0 := time.Now()
		if err := syscall.Kill(d0.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		var restarted time.Duration
		for {
			if d, ok := l.domain(vm.Id); ok && d.Running() && d.PID != d0.PID && d.PID != 0 {
				restarted = time.Since(t0)
				break
			}
			if time.Since(t0) > waitTimeout {
				t.Fatal("QEMU not restarted")
			}
			time.Sleep(50 * time.Millisecond)
		}
		st := l.waitStatus(vm.Id, bootTimeout, "RUNNING with a new boot id", func(st *pb.VMStatus) bool {
			return running(st) && st.BootId != before.BootId
		})
		t.Logf("MEASURE QEMU SIGKILL → QEMU running again: %v; → heartbeat of the new boot in status: %v (restarts %d)",
			restarted.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond), st.Restarts)
		if restarted > 5*time.Second {
			t.Errorf("restart took %v, want within 5 s", restarted)
		}
		if st.Restarts != before.Restarts+1 {
			t.Fatalf("restarts %d → %d", before.Restarts, st.Restarts)
		}
	})

	// crashy's QEMU is killed whenever it runs: at most 2 restarts, then FAILED.
	crashy := l.newVM("crashy", host, "", &pb.HAPolicy{Restart: pb.RestartPolicy_RESTART_POLICY_ALWAYS,
		MaxRestarts: 2, RestartWindowSeconds: 600})
	t.Run("restart-limit", func(t *testing.T) {
		l.create(crashy)
		for kill := 1; kill <= 3; kill++ {
			// Kill only once the agent has seen it start (not while libvirt starts it).
			l.waitStatus(crashy.Id, waitTimeout, "RUNNING", func(st *pb.VMStatus) bool {
				return st.State == pb.VMState_VM_STATE_RUNNING && st.Restarts == int32(kill-1)
			})
			d := l.waitDomain(crashy.Id, func(d driver.Domain) bool { return d.Running() && d.PID != 0 })
			if err := syscall.Kill(d.PID, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
		st := l.waitStatus(crashy.Id, waitTimeout, "FAILED", func(st *pb.VMStatus) bool {
			return st.State == pb.VMState_VM_STATE_FAILED
		})
		t.Logf("crashy: %s (restarts %d)", st.Reason, st.Restarts)
		if !strings.Contains(st.Reason, "restart limit") || st.Restarts != 2 {
			t.Fatalf("FAILED status: %v", st)
		}
		if op := l.waitOp(crashy.Labels[state.LabelCreate]); op.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Fatalf("create operation of crashy: %v", op) // it did run first
		}
		if d, ok := l.domain(crashy.Id); !ok || d.Running() {
			t.Fatalf("crashy domain: %+v %v", d, ok)
		}
	})

	t.Run("policy-never", func(t *testing.T) {
		never := l.newVM("never", host, "", &pb.HAPolicy{Restart: pb.RestartPolicy_RESTART_POLICY_NEVER})
		l.create(never)
		l.waitStatus(never.Id, waitTimeout, "RUNNING", func(st *pb.VMStatus) bool { return st.State == pb.VMState_VM_STATE_RUNNING })
		d := l.waitDomain(never.Id, func(d driver.Domain) bool { return d.Running() && d.PID != 0 })
		if err := syscall.Kill(d.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		st := l.waitStatus(never.Id, waitTimeout, "STOPPED", func(st *pb.VMStatus) bool {
			return st.State == pb.VMState_VM_STATE_STOPPED
		})
		if !strings.Contains(st.Reason, "NEVER") || st.Restarts != 0 {
			t.Fatalf("status: %v", st)
		}
		time.Sleep(3 * time.Second)
		if d, _ := l.domain(never.Id); d.Running() {
			t.Fatal("restarted despite policy NEVER")
		}
		l.update(never, func(v *pb.VM) {
			v.PowerState = pb.PowerState_POWER_STATE_STOPPED
			v.Labels[state.LabelDelete] = l.op(v, state.OpDelete)
		})
	})

	t.Run("agent-restart", func(t *testing.T) {
		before := l.waitStatus(vm.Id, 5*time.Second, "running", running)
		d0, _ := l.domain(vm.Id)
		stopAgent() // no cleanup, as after a SIGKILL
		// A domain of ours that nobody assigned (left over by a VM moved or deleted
		// while its agent was down).
		orphan := newID()
		l.ids = append(l.ids, orphan)
		if err := l.drv.Define(ctx, driver.Spec{ID: orphan, Name: "orphan", Generation: 1, VCPUs: 1, MemoryMiB: 64,
			Labels: map[string]string{agent.HostLabel: host},
			Kernel: filepath.Join(l.pools[storage.PoolLocal], "images", "vmlinux")}); err != nil {
			t.Fatal(err)
		}
		cfg2 := l.config(host)
		t0 := time.Now()
		l.runAgent(cfg2)
		waitReady(t, "http://"+cfg2.Listener.Addr().String())
		t.Logf("MEASURE agent restart → ready: %v", time.Since(t0).Round(time.Millisecond))
		deadline := time.Now().Add(waitTimeout)
		for {
			if _, ok := l.domain(orphan); !ok {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("unassigned domain not removed")
			}
			time.Sleep(100 * time.Millisecond)
		}
		st := l.waitStatus(vm.Id, waitTimeout, "RUNNING, fresh", func(st *pb.VMStatus) bool {
			return running(st) && st.UpdateTime.AsTime().After(t0)
		})
		d1, _ := l.domain(vm.Id)
		if st.BootId != before.BootId || d1.PID != d0.PID || st.Restarts != before.Restarts {
			t.Fatalf("re-adoption touched the VM: boot %s → %s, pid %d → %d, restarts %d → %d",
				before.BootId, st.BootId, d0.PID, d1.PID, before.Restarts, st.Restarts)
		}
		if n := l.countDomains(vm.Id); n != 1 {
			t.Fatalf("%d domains for the VM", n)
		}
		// The FAILED verdict survives the agent restart.
		if st, _ := l.status(ctx, crashy.Id); st.GetState() != pb.VMState_VM_STATE_FAILED {
			t.Fatalf("crashy after agent restart: %v", st)
		}
		code, body := get(t, "http://"+cfg2.Listener.Addr().String()+"/metrics")
		if code != 200 || !strings.Contains(body, `plasmavmc_agent_vms{state="running"} 1`) ||
			!strings.Contains(body, `plasmavmc_agent_vms{state="failed"} 1`) || !strings.Contains(body, "plasmavmc_agent_reconcile_seconds_bucket") {
			t.Fatalf("metrics: %d\n%s", code, body)
		}
	})

	t.Run("chainfire-paused", func(t *testing.T) {
		before := l.waitStatus(vm.Id, 5*time.Second, "running", running)
		d0, _ := l.domain(vm.Id)
		member := l.cf.Members[0]
		if err := member.Stop(); err != nil {
			t.Fatal(err)
		}
		paused := time.Now()
		resumed := false
		defer func() {
			if !resumed {
				_ = member.Cont()
			}
		}()
		// The watchdog does not need ChainFire.
		if err := syscall.Kill(d0.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for {
			if d, ok := l.domain(vm.Id); ok && d.Running() && d.PID != d0.PID && d.PID != 0 {
				t.Logf("MEASURE with ChainFire paused: QEMU SIGKILL → running again %v", time.Since(paused).Round(time.Millisecond))
				break
			}
			if time.Since(paused) > waitTimeout {
				t.Fatal("QEMU not restarted while ChainFire is paused")
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(max(0, 15*time.Second-time.Since(paused))) // past the lease TTL
		if err := member.Cont(); err != nil {
			t.Fatal(err)
		}
		resumed = true
		t0 := time.Now()
		st := l.waitStatus(vm.Id, bootTimeout, "caught up", func(st *pb.VMStatus) bool {
			return running(st) && st.BootId != before.BootId && st.Restarts == before.Restarts+1
		})
		t.Logf("MEASURE ChainFire SIGCONT → status caught up: %v (%s, restarts %d)", time.Since(t0).Round(time.Millisecond), st.BootId, st.Restarts)
		deadline := time.Now().Add(waitTimeout)
		for {
			resp, err := l.c.Get(ctx, state.AliveKey(host))
			if err == nil && len(resp.Kvs) == 1 && resp.Kvs[0].Lease != 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("heartbeat key not held after ChainFire came back: %v %v", resp, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("delete", func(t *testing.T) {
		for _, v := range []*pb.VM{vm, crashy} {
			l.update(v, func(v *pb.VM) {
				v.PowerState = pb.PowerState_POWER_STATE_STOPPED
				v.Labels[state.LabelDelete] = l.op(v, state.OpDelete)
			})
		}
		for _, v := range []*pb.VM{vm, crashy} {
			deadline := time.Now().Add(waitTimeout)
			for {
				resp, err := l.c.Get(ctx, state.AssignedKey(host, v.Id))
				st, _ := l.status(ctx, v.Id)
				if err == nil && len(resp.Kvs) == 0 && st == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("vm %s: assigned/status not removed: %v", v.Name, st)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if _, ok := l.domain(v.Id); ok {
				t.Fatalf("vm %s: domain still defined", v.Name)
			}
			if _, err := os.Stat(filepath.Join(l.pools[storage.PoolLocal], "disks", v.Id+"-root.qcow2")); !os.IsNotExist(err) {
				t.Fatalf("vm %s: disk left: %v", v.Name, err)
			}
		}
	})
}
