package controller_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"plasmacloud.dev/plasmavmc/internal/controller"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// BenchmarkSchedule measures the leader's scheduling throughput: b.N PENDING VMs
// (created beforehand through the create txn) placed by passes of one scheduler over
// N hosts against a real one-member ChainFire. Reports VMs placed per second.
func BenchmarkSchedule(b *testing.B) {
	for _, hosts := range []int{4, 32} {
		b.Run(fmt.Sprintf("hosts=%d", hosts), func(b *testing.B) {
			e := newEnvB(b)
			ctx := context.Background()
			for i := range hosts {
				e.addHostB(b, fmt.Sprintf("h%d", i), 1<<20, 1<<30)
			}
			c, err := controller.New(controller.Config{Store: e.st})
			if err != nil {
				b.Fatal(err)
			}
			for i := range b.N {
				id := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
				vm := &pb.VM{Id: id, Name: fmt.Sprintf("vm-%d", i), Project: "p", PowerState: pb.PowerState_POWER_STATE_RUNNING, Generation: 1,
					Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: 256, Boot: &pb.Boot{KernelImage: "k"}}, CreateTime: e.st.Now()}
				op := &pb.Operation{Id: id, Kind: state.OpCreate, VmId: id, State: pb.OperationState_OPERATION_STATE_RUNNING}
				if _, err := e.st.Commit(ctx, state.BuildCreate(vm, &pb.VMStatus{State: pb.VMState_VM_STATE_PENDING}, op, id, 0)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			start := time.Now()
			if err := c.Pass(ctx, 0); err != nil {
				b.Fatal(err)
			}
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "VMs/s")
		})
	}
}
