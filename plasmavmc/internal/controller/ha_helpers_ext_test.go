package controller_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/plasmavmc/internal/controller"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// haController starts a running controller with a fast HA manager (health every 100 ms,
// fence delay 500 ms, suspect after two thirds of the TTL) and mod applied.
func (e *env) haController(mod func(*controller.Config)) *ctrl {
	return e.controller(true, func(c *controller.Config) {
		// SuspectAfter an hour: never suspect (under the shared CPUs a late renewal must not
		// make hosts unschedulable); TestHostHealth sets its own.
		c.HA = controller.HAConfig{HealthInterval: 100 * time.Millisecond, FenceDelay: 500 * time.Millisecond, SuspectAfter: time.Hour}
		if mod != nil {
			mod(c)
		}
	})
}

// fakeAgent is a test agent of one host: it registers the host (with a migration URI),
// holds /alive/<host> on a lease it keeps alive until stopped, and can report statuses
// like an agent does. It runs nothing.
type fakeAgent struct {
	e        *env
	name     string
	st       *state.Store
	cf       *chainfire.Client
	ttl      int64
	capacity *pb.Resources
	mu       sync.Mutex
	instance string
	lease    int64
	stopKA   context.CancelFunc
}

// agent registers host name (capacity vcpus/mem, pools local and shared) and holds its
// alive key on a lease of ttl seconds.
func (e *env) agent(name string, ttl int64, vcpus int32, mem int64) *fakeAgent {
	e.t.Helper()
	cf := e.client()
	a := &fakeAgent{e: e, name: name, st: state.New(cf, nil), cf: cf, ttl: ttl, capacity: &pb.Resources{Vcpus: vcpus, MemoryMib: mem}}
	a.register("")
	a.join("agent-" + name + "-1")
	return a
}

// register writes the host record as the agent does (rejoined: rejoined_instance).
func (a *fakeAgent) register(rejoined string) {
	a.e.t.Helper()
	h := &pb.Host{Name: a.name, Capacity: a.capacity, Pools: []string{"local", "shared"}, AgentVersion: "fake",
		MigrationUri: "qemu+unix:///system?socket=/run/fake-" + a.name, StateDir: "/run/fake-" + a.name, RejoinedInstance: rejoined}
	if err := a.st.RegisterHost(context.Background(), h); err != nil {
		a.e.t.Fatal(err)
	}
}

// join grants a lease, puts the alive key = instance on it and keeps it alive.
func (a *fakeAgent) join(instance string) {
	a.e.t.Helper()
	ctx := context.Background()
	g, err := a.cf.Grant(ctx, a.ttl)
	if err != nil {
		a.e.t.Fatal(err)
	}
	if _, err := a.cf.Put(ctx, state.AliveKey(a.name), instance, chainfire.WithLease(g.ID)); err != nil {
		a.e.t.Fatal(err)
	}
	kctx, cancel := context.WithCancel(ctx)
	ka, err := a.cf.KeepAlive(kctx, g.ID)
	if err != nil {
		a.e.t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	a.mu.Lock()
	a.instance, a.lease, a.stopKA = instance, g.ID, cancel
	a.mu.Unlock()
	a.e.t.Cleanup(cancel)
}

// stopKeepalives stops renewing the lease (paused agent, lost link): the host becomes
// suspect, then its lease expires.
func (a *fakeAgent) stopKeepalives() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.stopKA()
}

// report writes status state of VM id at epoch as this host's agent.
func (a *fakeAgent) report(id string, s pb.VMState, epoch int64) error {
	return a.st.PutStatus(context.Background(), a.name, id, &pb.VMStatus{State: s, Epoch: epoch, BootId: "boot-" + id[:8]})
}

// fleet is a set of fake agents that behave like real ones for the controller: every
// VM assigned to one of them gets a status at its current epoch (RUNNING or STOPPED by
// power state), and migrations from one of them complete (CompleteMigration, then the
// target reports at the new epoch) — unless failMigrations is set, then they fail.
type fleet struct {
	mu             sync.Mutex
	agents         map[string]*fakeAgent
	failMigrations bool
}

// set adds (a non-nil) or removes the agent of host.
func (f *fleet) set(host string, a *fakeAgent) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if a == nil {
		delete(f.agents, host)
		return
	}
	f.agents[host] = a
}

// setFail makes migrations fail (true) or complete.
func (f *fleet) setFail(fail bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failMigrations = fail
}

// run drives the fleet until the test ends.
func (e *env) fleet(agents ...*fakeAgent) *fleet {
	f := &fleet{agents: map[string]*fakeAgent{}}
	for _, a := range agents {
		f.agents[a.name] = a
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	e.t.Cleanup(func() { cancel(); <-done })
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			f.step(ctx, e.st)
			time.Sleep(30 * time.Millisecond)
		}
	}()
	return f
}

func (f *fleet) step(ctx context.Context, st *state.Store) {
	f.mu.Lock()
	agents := map[string]bool{}
	for h := range f.agents {
		agents[h] = true
	}
	fail := f.failMigrations
	f.mu.Unlock()
	vms, _, err := st.ListVMs(ctx)
	if err != nil {
		return
	}
	for _, rec := range vms {
		vm := rec.VM
		if m := vm.Migration; m != nil && m.SourceHost == vm.Host && agents[vm.Host] {
			op, _, err := st.GetOperation(ctx, m.OperationId)
			if err != nil || op.State != pb.OperationState_OPERATION_STATE_RUNNING {
				continue
			}
			if fail {
				_ = st.FailMigration(ctx, m.OperationId, "fake: destination refused", &pb.MigrationProgress{TotalMs: 5})
				continue
			}
			_ = st.UpdateMigrationProgress(ctx, m.OperationId, &pb.MigrationProgress{Phase: "precopy", DataTotalBytes: 100 << 20, DataProcessedBytes: 50 << 20})
			if sw, err := st.CompleteMigration(ctx, vm.Host, vm.Id, &pb.MigrationProgress{TotalMs: 800, DowntimeMs: 30}); err == nil {
				_ = st.PutStatus(ctx, sw.Host, vm.Id, &pb.VMStatus{State: pb.VMState_VM_STATE_RUNNING, Epoch: sw.Epoch, BootId: "boot"})
			}
			continue
		}
		if vm.Host == "" || !agents[vm.Host] || vm.Labels[state.LabelDelete] != "" {
			continue
		}
		want := pb.VMState_VM_STATE_RUNNING
		if vm.PowerState == pb.PowerState_POWER_STATE_STOPPED {
			want = pb.VMState_VM_STATE_STOPPED
		}
		if s := vm.GetStatus(); s.GetState() == want && s.GetEpoch() == vm.Epoch && s.GetHost() == vm.Host {
			continue
		}
		if vm.GetStatus().GetState() == pb.VMState_VM_STATE_MIGRATING {
			continue
		}
		_ = st.PutStatus(ctx, vm.Host, vm.Id, &pb.VMStatus{State: want, Epoch: vm.Epoch, BootId: "boot"})
	}
}

// sharedVM is a create request of an HA VM booting from a disk on the shared pool.
func sharedVM(name string, mem int64, failover bool, priority int32) *pb.CreateVMRequest {
	return &pb.CreateVMRequest{Name: name, Project: "pa", RequestId: "req-" + name,
		Spec: &pb.VMSpec{Vcpus: 1, MemoryMib: mem, Disks: []*pb.Disk{{Name: "root", Image: "base", Pool: "shared"}},
			Ha: &pb.HAPolicy{Failover: failover, Priority: priority}}}
}

// create creates r and returns the VM id.
func create(t *testing.T, c clients, r *pb.CreateVMRequest) string {
	t.Helper()
	resp, err := c.vms.CreateVM(context.Background(), connect.NewRequest(r))
	if err != nil {
		t.Fatalf("create %s: %v", r.Name, err)
	}
	return resp.Msg.Vm.Id
}

// vm reads VM id with its status.
func (e *env) vm(id string) *pb.VM {
	e.t.Helper()
	rec, err := e.st.GetVM(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return rec.VM
}

// health reads the HA manager's record of host ("" state when none).
func (e *env) health(host string) *pb.HostHealth {
	h, err := e.st.GetHost(context.Background(), host)
	if err != nil {
		e.t.Fatal(err)
	}
	return h.Health
}

// assigned reports whether /assigned/<host>/<id> exists.
func (e *env) assigned(host, id string) bool {
	return e.count(state.AssignedKey(host, id)) == 1
}

// allocated is host's ledger.
func (e *env) allocated(host string) *pb.Resources {
	e.t.Helper()
	h, err := e.st.GetHost(context.Background(), host)
	if err != nil {
		e.t.Fatal(err)
	}
	return h.Host.Allocated
}

// op reads operation id.
func (e *env) op(id string) *pb.Operation {
	e.t.Helper()
	o, _, err := e.st.GetOperation(context.Background(), id)
	if err != nil {
		e.t.Fatal(err)
	}
	return o
}

// ops are the operations of kind.
func (e *env) ops(kind string) []*pb.Operation {
	e.t.Helper()
	all, err := e.st.ListOperations(context.Background(), "")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*pb.Operation
	for _, o := range all {
		if o.Kind == kind {
			out = append(out, o)
		}
	}
	return out
}

// waitPlaced waits until every VM of ids is placed on host and reported by f.
func (e *env) waitPlaced(host string, ids ...string) {
	e.t.Helper()
	waitFor(e.t, 15*time.Second, fmt.Sprintf("VMs placed on %s and reported", host), func() bool {
		for _, id := range ids {
			vm := e.vm(id)
			s := vm.GetStatus().GetState()
			if vm.Host != host || (s != pb.VMState_VM_STATE_RUNNING && s != pb.VMState_VM_STATE_STOPPED) {
				return false
			}
		}
		return true
	})
}

// stop stops controller c (its leadership is handed over at once).
func (c *ctrl) stop() {
	c.cancel()
	<-c.done
}

// ledgersExact checks that every host's ledger is the sum of the VMs placed on it plus
// the reservations of migrations to it.
func (e *env) ledgersExact() {
	e.t.Helper()
	sum := map[string]*pb.Resources{}
	for _, vm := range mustList(e.t, e) {
		if vm.Host == "" {
			continue
		}
		sum[vm.Host] = state.Add(sum[vm.Host], state.VMResources(vm))
		if m := vm.Migration; m != nil {
			other := m.TargetHost
			if vm.Host == m.TargetHost {
				other = m.SourceHost
			}
			sum[other] = state.Add(sum[other], state.VMResources(vm))
		}
	}
	hosts, _, err := e.st.ListHosts(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	for _, h := range hosts {
		s := sum[h.Host.Name]
		if s.GetMemoryMib() != h.Host.Allocated.GetMemoryMib() || s.GetVcpus() != h.Host.Allocated.GetVcpus() {
			e.t.Errorf("host %s ledger %v, VMs and reservations %v", h.Host.Name, h.Host.Allocated, s)
		}
	}
}
