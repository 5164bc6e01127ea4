package controller_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// placedCheck verifies from ChainFire that no host is overcommitted and that each
// ledger equals the sum of the VMs placed on the host; it returns placed and pending
// counts.
func (e *env) placedCheck(t *testing.T) (placed, pending int, perHost map[string]int) {
	t.Helper()
	ctx := context.Background()
	vms, _, err := e.st.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hosts, _, err := e.st.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sum := map[string]*pb.Resources{}
	perHost = map[string]int{}
	for _, r := range vms {
		if r.VM.Host == "" {
			pending++
			continue
		}
		placed++
		perHost[r.VM.Host]++
		sum[r.VM.Host] = state.Add(sum[r.VM.Host], state.VMResources(r.VM))
		if r.VM.Status.GetState() != pb.VMState_VM_STATE_SCHEDULED {
			t.Errorf("VM %s placed with status %v", r.VM.Name, r.VM.Status)
		}
	}
	for _, h := range hosts {
		s := sum[h.Host.Name]
		if s.GetMemoryMib() > h.Host.Capacity.MemoryMib || s.GetVcpus() > h.Host.Capacity.Vcpus {
			t.Errorf("host %s overcommitted: %v > %v", h.Host.Name, s, h.Host.Capacity)
		}
		if s.GetMemoryMib() != h.Host.Allocated.MemoryMib || s.GetVcpus() != h.Host.Allocated.Vcpus {
			t.Errorf("host %s ledger %v, placed VMs sum %v", h.Host.Name, h.Host.Allocated, s)
		}
	}
	return placed, pending, perHost
}

// TestSchedulersNeverOvercommit: two schedulers forced to run at once (no fence)
// race to place many VMs on small hosts; the ledgers' compare-and-swap keeps every
// host within capacity and every ledger exact.
func TestSchedulersNeverOvercommit(t *testing.T) {
	e := newEnv(t)
	a := e.controller(false, nil)
	b := e.controller(false, nil)
	root := a.as(e.token("root", ""))
	ctx := context.Background()
	e.registerImages(root)
	const hosts, vms = 4, 40
	for i := range hosts {
		e.addHost(fmt.Sprintf("h%d", i), 4, 2048) // room for 4 VMs of 1 vCPU / 512 MiB each
	}
	for i := range vms {
		r := createReq("pa", fmt.Sprintf("vm-%d", i), 1, 512)
		if _, err := root.vms.CreateVM(ctx, connect.NewRequest(r)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for _, c := range []*ctrl{a, b, a, b} {
		wg.Go(func() {
			for range 5 {
				if err := c.Pass(ctx, 0); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	placed, pending, perHost := e.placedCheck(t)
	if placed != hosts*4 || pending != vms-hosts*4 {
		t.Fatalf("placed %d pending %d, want %d and %d (%v)", placed, pending, hosts*4, vms-hosts*4, perHost)
	}
}

// TestElectedSchedulers: two replicas running elections; exactly one leads; VMs get
// placed; anti-affinity and spread hold.
func TestElectedSchedulers(t *testing.T) {
	e := newEnv(t)
	a := e.controller(true, nil)
	b := e.controller(true, nil)
	root := a.as(e.token("root", ""))
	ctx := context.Background()
	e.registerImages(root)
	e.addHost("h1", 8, 4096)
	e.addHost("h2", 8, 4096)
	e.addHost("h3", 8, 4096, "local") // no shared pool
	waitFor(t, 10*time.Second, "a leader", func() bool { return a.Elector().IsLeader() || b.Elector().IsLeader() })
	time.Sleep(200 * time.Millisecond)
	if a.Elector().IsLeader() && b.Elector().IsLeader() {
		t.Fatal("two leaders")
	}

	t.Run("anti-affinity", func(t *testing.T) {
		ids := map[string]string{}
		for i := range 4 {
			r := createReq("pa", fmt.Sprintf("db-%d", i), 1, 256)
			r.Labels = map[string]string{"role": "db"}
			r.Spec.AntiAffinity = []string{"role=db"}
			resp, err := root.vms.CreateVM(ctx, connect.NewRequest(r))
			if err != nil {
				t.Fatal(err)
			}
			ids[r.Name] = resp.Msg.Vm.Id
			// one at a time, so that placements see each other
			waitFor(t, 10*time.Second, "placed or unschedulable", func() bool {
				g, err := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: resp.Msg.Vm.Id}))
				return err == nil && (g.Msg.Vm.Host != "" || len(g.Msg.Vm.Status.GetReason()) > len("no host fits"))
			})
		}
		hostOf := map[string]string{}
		var last *pb.VM
		for name, id := range ids {
			g, _ := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id}))
			if g.Msg.Vm.Host == "" {
				last = g.Msg.Vm
				continue
			}
			if other, dup := hostOf[g.Msg.Vm.Host]; dup {
				t.Fatalf("%s and %s both on %s", name, other, g.Msg.Vm.Host)
			}
			hostOf[g.Msg.Vm.Host] = name
		}
		if len(hostOf) != 3 || last == nil {
			t.Fatalf("placements %v, pending %v", hostOf, last)
		}
		t.Logf("unschedulable: %s", last.Status.Reason)
		// Another project is not affected by pa's labels.
		r := createReq("pb", "db-0", 1, 256)
		r.Labels = map[string]string{"role": "db"}
		r.Spec.AntiAffinity = []string{"role=db"}
		resp, err := root.vms.CreateVM(ctx, connect.NewRequest(r))
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "pb's db placed", func() bool {
			g, err := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: resp.Msg.Vm.Id}))
			return err == nil && g.Msg.Vm.Host != ""
		})
	})

	t.Run("pools and spread", func(t *testing.T) {
		var ids []string
		for i := range 6 {
			r := createReq("pc", fmt.Sprintf("web-%d", i), 1, 512)
			r.Spec.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "shared"}}
			r.Spec.Boot = nil
			resp, err := root.vms.CreateVM(ctx, connect.NewRequest(r))
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, resp.Msg.Vm.Id)
		}
		per := map[string]int{}
		waitFor(t, 10*time.Second, "all placed", func() bool {
			clear(per)
			for _, id := range ids {
				g, err := root.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id}))
				if err != nil || g.Msg.Vm.Host == "" {
					return false
				}
				per[g.Msg.Vm.Host]++
			}
			return true
		})
		if per["h3"] != 0 || per["h1"] != 3 || per["h2"] != 3 {
			t.Fatalf("spread %v: want 3 on h1, 3 on h2, none on h3 (no shared pool)", per)
		}
	})
	e.placedCheck(t)
}

// TestLeaderFailover: the leader's lease revoked → it steps down and scheduling goes
// on; the leader cut off from ChainFire (its client closed, lease left to expire) →
// the other replica takes over within the TTL and schedules.
func TestLeaderFailover(t *testing.T) {
	e := newEnv(t)
	a := e.controller(true, nil)
	b := e.controller(true, nil)
	root := a.as(e.token("root", ""))
	rootB := b.as(e.token("root", ""))
	ctx := context.Background()
	e.registerImages(root)
	e.addHost("h1", 64, 65536)
	leader := func() (*ctrl, *ctrl) {
		var l, f *ctrl
		waitFor(t, 15*time.Second, "a leader", func() bool {
			switch {
			case a.Elector().IsLeader():
				l, f = a, b
			case b.Elector().IsLeader():
				l, f = b, a
			}
			return l != nil
		})
		return l, f
	}
	scheduled := func(cl clients, name string) {
		t.Helper()
		r := createReq("pa", name, 1, 256)
		resp, err := cl.vms.CreateVM(ctx, connect.NewRequest(r))
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 15*time.Second, name+" scheduled", func() bool {
			g, err := cl.vms.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: resp.Msg.Vm.Id}))
			return err == nil && g.Msg.Vm.Status.GetState() == pb.VMState_VM_STATE_SCHEDULED
		})
	}
	l, _ := leader()
	scheduled(root, "first")

	lease := l.Elector().Lease()
	if _, err := e.st.Client().Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, 5*time.Second, "old leader steps down", func() bool { return l.Elector().Lease() != lease })
	l2, f2 := leader()
	t.Logf("lease revoked: leadership re-established in %v (by the %s replica)", time.Since(start), map[bool]string{true: "same", false: "other"}[l2 == l])
	scheduled(root, "second")

	// Crash-like: the leader loses ChainFire; its lease expires; the other leads.
	l2.cf.Close()
	start = time.Now()
	waitFor(t, 15*time.Second, "the other replica leads", func() bool { return f2.Elector().IsLeader() })
	t.Logf("leader cut off: the other replica leads after %v (TTL 2 s)", time.Since(start))
	cl := rootB
	if f2 == a {
		cl = root
	}
	scheduled(cl, "third")
	e.placedCheck(t)
}
