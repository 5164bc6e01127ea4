package agent_test

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestAgentBinary is the acceptance form: the real plasmavmc-agent binary creates a VM
// (RUNNING with a heartbeat), is SIGKILLed, and its successor re-adopts the VM untouched
// (same boot id, same QEMU, one domain, status correct); then the VM is deleted.
func TestAgentBinary(t *testing.T) {
	l := newLab(t)
	bin := harness.Build(t, "plasmacloud.dev/plasmavmc/cmd/plasmavmc-agent")
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	const host = "node-bin"
	listen := net.JoinHostPort("127.0.0.1", fmt.Sprint(ports[0]))
	p := harness.StartProcess(t, harness.ProcessConfig{
		Name: "agent", Path: bin,
		Args: []string{"--host-name", host, "--listen", listen, "--libvirt-socket", l.sock,
			"--state-dir", l.stateDir, "--pool-local", l.pools["local"], "--pool-shared", l.pools["shared"],
			"--capacity-vcpus", "4", "--capacity-memory-mib", "2048", "--labels", "zone=z1", "--log-format", "json"},
		Env:      []string{"PLASMA_CHAINFIRE_ENDPOINTS=" + strings.Join(l.cf.Endpoints(), ",")},
		ReadyURL: "http://" + listen + "/readyz",
	})
	waitReady(t, "http://"+listen)
	t.Cleanup(func() { killWatchdog(t, l.stateDir) }) // the agent started it, detached

	vm := l.newVM("bin", host, "", nil)
	t0 := time.Now()
	l.create(vm)
	before := l.waitStatus(vm.Id, bootTimeout, "RUNNING with a heartbeat", running)
	t.Logf("MEASURE (binary) create → RUNNING with a heartbeat: %v", time.Since(t0).Round(time.Millisecond))
	d0, _ := l.domain(vm.Id)

	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the VM runs on without its agent
	if d, ok := l.domain(vm.Id); !ok || !d.Running() || d.PID != d0.PID {
		t.Fatalf("VM after agent SIGKILL: %+v %v", d, ok)
	}
	t1 := time.Now()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, "http://"+listen)
	st := l.waitStatus(vm.Id, waitTimeout, "RUNNING, written by the new agent", func(st *pb.VMStatus) bool {
		return running(st) && st.UpdateTime.AsTime().After(t1)
	})
	d1, _ := l.domain(vm.Id)
	if st.BootId != before.BootId || d1.PID != d0.PID || st.Restarts != 0 || st.ObservedGeneration != vm.Generation {
		t.Fatalf("re-adoption touched the VM: boot %s → %s, pid %d → %d, status %v", before.BootId, st.BootId, d0.PID, d1.PID, st)
	}
	if n := l.countDomains(vm.Id); n != 1 {
		t.Fatalf("%d domains", n)
	}
	t.Logf("MEASURE (binary) agent SIGKILL → restarted agent re-adopted (same boot %s, pid %d): %v", st.BootId, d1.PID,
		time.Since(t1).Round(time.Millisecond))
	code, body := get(t, "http://"+listen+"/metrics")
	if code != 200 || !strings.Contains(body, `plasmavmc_agent_vms{state="running"} 1`) || !strings.Contains(body, "plasmavmc_agent_lease_renewals_total") {
		t.Fatalf("metrics: %d\n%s", code, body)
	}
	h, err := l.st.GetHost(t.Context(), host)
	if err != nil || h.Host.State != pb.HostState_HOST_STATE_UP || h.Host.Capacity.GetVcpus() != 4 || h.Host.Labels["zone"] != "z1" {
		t.Fatalf("host: %v %v", h, err)
	}

	l.update(vm, func(v *pb.VM) {
		v.PowerState = pb.PowerState_POWER_STATE_STOPPED
		v.Labels[state.LabelDelete] = l.op(v, state.OpDelete)
	})
	deadline := time.Now().Add(waitTimeout)
	for {
		st, _ := l.status(t.Context(), vm.Id)
		if _, ok := l.domain(vm.Id); !ok && st == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VM not deleted: %v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
