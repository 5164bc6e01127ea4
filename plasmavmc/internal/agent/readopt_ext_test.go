package agent_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestStartReadopts: an agent starting on a host whose VMs already run (an agent restart)
// re-adopts every one: no destroy, no reboot. CI once caught a restarted agent taking a
// running VM for an orphan (its first sweep made the worker before the informer's handler
// gave the worker its record; fixed in reconcileUnassigned). With the fake hypervisor that
// interleaving is rare, so this test guards re-adoption in general rather than
// reproducing that race; the e2e TestAgentAndLibvirtdRestart is where it showed.
func TestStartReadopts(t *testing.T) {
	l, fnet := newFakeLab(t, 1, chainfiretest.Options{})
	ha := l.fakeHost(fnet, "a")
	const n = 20
	var vms []*pb.VM
	boots := map[string]string{}
	for i := range n {
		vm := l.fakeVM(fmt.Sprintf("vm%d", i), "a", i%2 == 0)
		labels := map[string]string{agent.HostLabel: "a", state.LabelEpoch: "1"}
		if vm.Spec.Ha.Failover {
			labels[state.LabelFailover] = "true"
		}
		ha.Put(vm.Id, labels, true)
		boots[vm.Id] = ha.Boot(vm.Id)
		l.put(vm, "a")
		vms = append(vms, vm)
	}
	cfg := l.fakeConfig(ha)
	l.runAgent(cfg)
	waitReady(t, "http://"+cfg.Listener.Addr().String())
	for _, vm := range vms {
		l.waitStatus(vm.Id, 20*time.Second, "RUNNING at epoch 1", runningAt(1))
	}
	time.Sleep(2 * time.Second) // a few reconciles and sweeps more
	for _, vm := range vms {
		calls := callsOf(ha, vm.Id)
		if slices.Contains(calls, "destroyed "+vm.Id) || slices.Contains(calls, "undefine "+vm.Id) {
			t.Errorf("VM %s destroyed on re-adoption: %v", vm.Name, calls)
		}
		if b := ha.Boot(vm.Id); b != boots[vm.Id] {
			t.Errorf("VM %s rebooted on re-adoption: boot %s → %s", vm.Name, boots[vm.Id], b)
		}
	}
}
