package controller_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/plasmavmc/internal/controller"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestHostHealth walks one host through every state: up → suspect (keepalives stopped)
// → down (lease expired) → fenced after the fence delay → recovered (a new agent
// instance) → up (rejoin reported); with events, /health, the API's host state and the
// metrics.
func TestHostHealth(t *testing.T) {
	e := newEnv(t)
	const fenceDelay = 1500 * time.Millisecond
	c := e.haController(func(c *controller.Config) {
		c.HA.FenceDelay = fenceDelay
		c.HA.SuspectAfter = 2 * time.Second // with TTL 4: suspect once 2 s pass without a renewal
	})
	reg := prometheus.NewRegistry()
	if err := c.Register(reg); err != nil {
		t.Fatal(err)
	}
	root := c.as(e.token("root", ""))
	ctx := context.Background()
	a := e.agent("h1", 4, 8, 4096)

	getHost := func() *pb.Host {
		r, err := root.hosts.GetHost(ctx, connect.NewRequest(&pb.GetHostRequest{Name: "h1"}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.Host
	}
	waitState := func(want pb.HostState, within time.Duration) time.Time {
		t.Helper()
		waitFor(t, within, "health "+want.String(), func() bool { return e.health("h1").GetState() == want })
		return time.Now()
	}
	waitState(pb.HostState_HOST_STATE_UP, 10*time.Second)
	if h := getHost(); h.State != pb.HostState_HOST_STATE_UP || !strings.Contains(h.StateReason, "agent alive") || h.StateSince == nil {
		t.Fatalf("host %v", h)
	}

	a.stopKeepalives()
	waitState(pb.HostState_HOST_STATE_SUSPECT, 10*time.Second)
	if h := getHost(); h.State != pb.HostState_HOST_STATE_SUSPECT || !strings.Contains(h.StateReason, "renewals missed") {
		t.Fatalf("suspect host %v", h)
	}
	waitState(pb.HostState_HOST_STATE_DOWN, 10*time.Second)
	if h := getHost(); h.State != pb.HostState_HOST_STATE_DOWN || h.StateReason != "lease expired" {
		t.Fatalf("down host %v", h)
	}
	waitState(pb.HostState_HOST_STATE_FENCED, 10*time.Second)
	hh := e.health("h1")
	if !strings.Contains(hh.Reason, "fence delay") || hh.FencedAt == nil {
		t.Fatalf("fenced health %v", hh)
	}

	// The agent comes back (new instance): recovered until it reports its rejoin.
	a.join("agent-h1-2")
	waitState(pb.HostState_HOST_STATE_RECOVERED, 10*time.Second)
	time.Sleep(300 * time.Millisecond)
	if s := e.health("h1").GetState(); s != pb.HostState_HOST_STATE_RECOVERED {
		t.Fatalf("left recovered before the rejoin: %v", s)
	}
	a.register("agent-h1-2")
	waitState(pb.HostState_HOST_STATE_UP, 10*time.Second)

	r, err := root.hosts.ListHostEvents(ctx, connect.NewRequest(&pb.ListHostEventsRequest{Host: "h1"}))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	var downAt, fencedAt time.Time
	for _, ev := range r.Msg.Events {
		got = append(got, strings.ToLower(strings.TrimPrefix(ev.To.String(), "HOST_STATE_")))
		switch ev.To {
		case pb.HostState_HOST_STATE_DOWN:
			downAt = ev.Time.AsTime()
		case pb.HostState_HOST_STATE_FENCED:
			fencedAt = ev.Time.AsTime()
		}
	}
	// A renewal late under the shared CPUs may flap UP → SUSPECT → UP, even after the
	// keepalives stopped (one in flight); SUSPECT itself was seen above.
	if !regexp.MustCompile(`^up(,suspect,up)*(,suspect)?,down,fenced,recovered,up$`).MatchString(strings.Join(got, ",")) {
		t.Fatalf("events %v", got)
	}
	if d := fencedAt.Sub(downAt); d < fenceDelay {
		t.Fatalf("fenced %v after down, fence delay %v", d, fenceDelay)
	}
	// Every host's events: the same here.
	all, err := root.hosts.ListHostEvents(ctx, connect.NewRequest(&pb.ListHostEventsRequest{}))
	if err != nil || len(all.Msg.Events) != len(r.Msg.Events) {
		t.Fatalf("all events %v %v", all, err)
	}

	// Metrics: one transition of each kind, the gauge on up.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	trans := map[string]float64{}
	gauge := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.Metric {
			l := labels(m)
			switch mf.GetName() {
			case "plasmavmc_host_transitions_total":
				trans[l["from"]+">"+l["to"]] = m.GetCounter().GetValue()
			case "plasmavmc_host_state":
				gauge[l["state"]] = m.GetGauge().GetValue()
			}
		}
	}
	for _, k := range []string{"unknown>up", "up>suspect", "suspect>down", "down>fenced", "fenced>recovered", "recovered>up"} {
		if trans[k] != 1 {
			t.Errorf("transitions %s = %v (all: %v)", k, trans[k], trans)
		}
	}
	if gauge["up"] != 1 || gauge["fenced"] != 0 {
		t.Errorf("host_state gauge %v", gauge)
	}
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.Label {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// TestFenceCommand: a DOWN host is fenced at once when the fence command exits 0 (a
// script recording its argv and environment; `true`), and stays DOWN with an event
// naming the failure when it does not (`false`).
func TestFenceCommand(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "fence.sh")
	record := filepath.Join(dir, "argv")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$* env=$PLASMAVMC_FENCE_HOST\" >> "+record+"\necho fenced\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		command []string
		fenced  bool
	}{
		{"script", []string{script, "--target", "bmc-{host}", "{host}"}, true},
		{"true", []string{"true"}, true},
		{"false", []string{"sh", "-c", "echo trying {host}; echo 'bmc unreachable' >&2; exit 1"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			e.haController(func(c *controller.Config) {
				c.HA.FenceDelay = time.Hour
				c.HA.FenceCommand = tc.command
			})
			a := e.agent("h1", 2, 8, 4096)
			waitFor(t, 10*time.Second, "up", func() bool { return e.health("h1").GetState() == pb.HostState_HOST_STATE_UP })
			a.stopKeepalives()
			waitFor(t, 10*time.Second, "down", func() bool { return e.health("h1").GetState() == pb.HostState_HOST_STATE_DOWN })
			if tc.fenced {
				waitFor(t, 5*time.Second, "fenced by command", func() bool { return e.health("h1").GetState() == pb.HostState_HOST_STATE_FENCED })
				if r := e.health("h1").Reason; r != "fenced by command" {
					t.Fatalf("reason %q", r)
				}
				if tc.name == "script" {
					// Once per leadership term that saw the host DOWN (a new leader fences
					// again: fence actions are idempotent), normally once.
					b, err := os.ReadFile(record)
					if err != nil {
						t.Fatal(err)
					}
					for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
						if l != "--target bmc-h1 h1 env=h1" {
							t.Fatalf("fence command argv %q", b)
						}
					}
				}
				return
			}
			waitFor(t, 10*time.Second, "fence failure event", func() bool {
				evs, err := e.st.ListHostEvents(context.Background(), "h1")
				if err != nil {
					t.Fatal(err)
				}
				for _, ev := range evs {
					if strings.Contains(ev.Reason, "fence command failed: exit status 1: bmc unreachable") {
						return true
					}
				}
				return false
			})
			time.Sleep(time.Second)
			if s := e.health("h1").GetState(); s != pb.HostState_HOST_STATE_DOWN {
				t.Fatalf("state %v after a failing fence command (delay 1 h)", s)
			}
		})
	}
}

// TestFailover: when h1 is fenced, its HA VMs with shared disks move to h2 in priority
// order (epoch+1, ledgers, one vm.failover operation each) until h2 is full; the one
// left is FAILED with the scheduler's reason and moves once room appears; VMs with a
// local disk or failover off are HOST_DOWN with the reason; a stopped VM stays.
func TestFailover(t *testing.T) {
	e := newEnv(t)
	c := e.haController(nil)
	reg := prometheus.NewRegistry()
	if err := c.Register(reg); err != nil {
		t.Fatal(err)
	}
	root := c.as(e.token("root", ""))
	e.registerImages(root)
	h1 := e.agent("h1", 2, 8, 4096)
	f := e.fleet(h1)

	ids := map[string]string{}
	for _, r := range []*pb.CreateVMRequest{
		sharedVM("low", 512, true, 0),
		sharedVM("high", 512, true, 10),
		sharedVM("mid", 512, true, 5),
		sharedVM("noha", 256, false, 20),
	} {
		ids[r.Name] = create(t, root, r)
	}
	local := sharedVM("local", 256, true, 30)
	local.Spec.Disks = append(local.Spec.Disks, &pb.Disk{Name: "data", Image: "base", Pool: "local"})
	ids["local"] = create(t, root, local)
	stopped := sharedVM("stopped", 256, true, 40)
	stopped.Stopped = true
	ids["stopped"] = create(t, root, stopped)
	all := []string{ids["low"], ids["high"], ids["mid"], ids["noha"], ids["local"], ids["stopped"]}
	e.waitPlaced("h1", all...)

	// h2 has room for two of the three movable VMs.
	f.set("h2", e.agent("h2", 10, 8, 1024))
	waitFor(t, 10*time.Second, "h2 up", func() bool { return e.health("h2").GetState() == pb.HostState_HOST_STATE_UP })

	h1.stopKeepalives() // the host dies: its agent neither renews nor reports
	f.set("h1", nil)
	waitFor(t, 15*time.Second, "failover done", func() bool {
		return e.vm(ids["high"]).Host == "h2" && e.vm(ids["mid"]).Host == "h2" &&
			e.vm(ids["low"]).GetStatus().GetState() == pb.VMState_VM_STATE_FAILED &&
			e.vm(ids["local"]).GetStatus().GetState() == pb.VMState_VM_STATE_HOST_DOWN &&
			e.vm(ids["noha"]).GetStatus().GetState() == pb.VMState_VM_STATE_HOST_DOWN
	})
	for _, n := range []string{"high", "mid"} {
		vm := e.vm(ids[n])
		if vm.Epoch != 2 || !e.assigned("h2", vm.Id) || e.assigned("h1", vm.Id) {
			t.Errorf("%s: epoch %d, assigned h2 %v h1 %v", n, vm.Epoch, e.assigned("h2", vm.Id), e.assigned("h1", vm.Id))
		}
		op := e.op(state.FailoverOperationID(vm.Id, 1))
		if op.Kind != state.OpFailover || op.State != pb.OperationState_OPERATION_STATE_DONE || op.Host != "h1" || !strings.Contains(op.Reason, "to h2") {
			t.Errorf("%s: failover op %v", n, op)
		}
	}
	waitFor(t, 5*time.Second, "moved VMs reported on h2", func() bool {
		return e.vm(ids["high"]).GetStatus().GetEpoch() == 2 && e.vm(ids["mid"]).GetStatus().GetEpoch() == 2
	})
	low := e.vm(ids["low"])
	if low.Host != "h1" || low.Epoch != 1 || !strings.Contains(low.Status.Reason, "failover: no host has room") || !strings.Contains(low.Status.Reason, "h2: 6 vCPUs and 0 MiB free") {
		t.Errorf("low: %v", low)
	}
	if op := e.op(state.FailoverOperationID(ids["low"], 1)); op.State != pb.OperationState_OPERATION_STATE_FAILED || !strings.Contains(op.Reason, "no host has room") {
		t.Errorf("low's failover op %v", op)
	}
	if r := e.vm(ids["local"]).Status.Reason; r != "host h1 fenced; disk data is on host-local pool local" {
		t.Errorf("local: %q", r)
	}
	if r := e.vm(ids["noha"]).Status.Reason; r != "host h1 fenced; failover disabled" {
		t.Errorf("noha: %q", r)
	}
	if vm := e.vm(ids["stopped"]); vm.Host != "h1" || vm.Status.State != pb.VMState_VM_STATE_STOPPED {
		t.Errorf("stopped VM touched: %v", vm)
	}
	if a := e.allocated("h2"); a.MemoryMib != 1024 || a.Vcpus != 2 {
		t.Errorf("h2 ledger %v", a)
	}
	e.ledgersExact()
	if a := e.allocated("h1"); a.MemoryMib != 512+256+256+256 {
		t.Errorf("h1 ledger %v", a)
	}

	// Room appears: the retry moves low, and its failover operation ends DONE.
	e.agent("h3", 10, 8, 4096)
	waitFor(t, 10*time.Second, "low moved", func() bool { return e.vm(ids["low"]).Host == "h3" })
	if op := e.op(state.FailoverOperationID(ids["low"], 1)); op.State != pb.OperationState_OPERATION_STATE_DONE {
		t.Errorf("low's failover op after the retry %v", op)
	}
	if n := len(e.ops(state.OpFailover)); n != 3 {
		t.Errorf("%d failover operations, want 3", n)
	}
	mfs, _ := reg.Gather()
	results := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() == "plasmavmc_failovers_total" {
			for _, m := range mf.Metric {
				results[labels(m)["result"]] = m.GetCounter().GetValue()
			}
		}
	}
	if results["moved"] != 3 || results["host_down"] != 2 || results["no_room"] < 1 {
		t.Errorf("failover metrics %v", results)
	}
}

// TestFailoverLeaderStopped: two controllers; the leader is stopped while it fails
// over a fenced host's VMs (one per round); the next leader finishes: every VM moved
// exactly once (epoch 2, generation +1, one vm.failover operation each), ledgers exact.
func TestFailoverLeaderStopped(t *testing.T) {
	e := newEnv(t)
	mod := func(c *controller.Config) {
		c.HA.HealthInterval = 200 * time.Millisecond
		c.HA.MaxFailoversPerPass = 1
	}
	c1 := e.haController(mod)
	root := c1.as(e.token("root", ""))
	e.registerImages(root)
	h1 := e.agent("h1", 2, 8, 4096)
	f := e.fleet(h1)
	const n = 8
	var ids []string
	gens := map[string]int64{}
	for i := range n {
		ids = append(ids, create(t, root, sharedVM("vm-"+string(rune('a'+i)), 128, true, int32(i))))
	}
	e.waitPlaced("h1", ids...)
	for _, id := range ids {
		gens[id] = e.vm(id).Generation
	}
	c2 := e.haController(mod)
	e.agent("h2", 10, 16, 8192)
	waitFor(t, 10*time.Second, "h2 up", func() bool { return e.health("h2").GetState() == pb.HostState_HOST_STATE_UP })

	h1.stopKeepalives()
	f.set("h1", nil)
	waitFor(t, 20*time.Second, "failover under way", func() bool { return len(e.ops(state.OpFailover)) >= 2 })
	leader, other := c1, c2
	if c2.Elector().IsLeader() {
		leader, other = c2, c1
	}
	leader.stop()
	if moved := len(e.ops(state.OpFailover)); moved >= n {
		t.Fatalf("the failover finished (%d) before the leader was stopped", moved)
	}
	waitFor(t, 20*time.Second, "every VM moved", func() bool {
		for _, id := range ids {
			if e.vm(id).Host != "h2" {
				return false
			}
		}
		return true
	})
	if !other.Elector().IsLeader() {
		t.Fatal("the other replica does not lead")
	}
	time.Sleep(500 * time.Millisecond) // a few more rounds: nothing moves twice
	ops := e.ops(state.OpFailover)
	if len(ops) != n {
		t.Fatalf("%d failover operations for %d VMs", len(ops), n)
	}
	for _, id := range ids {
		vm := e.vm(id)
		if vm.Epoch != 2 || vm.Generation != gens[id]+1 || e.assigned("h1", id) {
			t.Errorf("VM %s: epoch %d generation %d (was %d), still assigned to h1 %v", vm.Name, vm.Epoch, vm.Generation, gens[id], e.assigned("h1", id))
		}
		if op := e.op(state.FailoverOperationID(id, 1)); op.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Errorf("VM %s: op %v", vm.Name, op)
		}
	}
	if a := e.allocated("h2"); a.MemoryMib != n*128 || a.Vcpus != n {
		t.Errorf("h2 ledger %v", a)
	}
	if a := e.allocated("h1"); a.MemoryMib != 0 || a.Vcpus != 0 {
		t.Errorf("h1 ledger %v", a)
	}
}

// TestMigrateVM: validation errors, then the happy path's records, the source agent's
// switch and the leader's finalization; a failed migration's finalization; and a
// migration nobody performs failed by housekeeping after its timeout.
func TestMigrateVM(t *testing.T) {
	e := newEnv(t)
	c := e.haController(func(c *controller.Config) {
		c.HA.MigrationGrace = 500 * time.Millisecond
		c.HA.FenceDelay = time.Minute
	})
	root := c.as(e.token("root", ""))
	ctx := context.Background()
	e.registerImages(root)
	h1 := e.agent("h1", 10, 8, 4096)
	f := e.fleet(h1)
	web := create(t, root, sharedVM("web", 512, true, 0))
	localReq := sharedVM("db", 256, true, 0)
	localReq.Spec.Disks = append(localReq.Spec.Disks, &pb.Disk{Name: "data", Image: "base", Pool: "local"})
	db := create(t, root, localReq)
	idleReq := sharedVM("idle", 128, true, 0)
	idleReq.Stopped = true
	notRunning := create(t, root, idleReq)
	e.waitPlaced("h1", web, db, notRunning)
	h2 := e.agent("h2", 10, 8, 4096)
	f.set("h2", h2)
	e.agent("h3", 10, 8, 4096)
	e.agent("h4", 2, 8, 4096).stopKeepalives()
	e.agent("h5", 10, 8, 256)
	waitFor(t, 10*time.Second, "h2 up, h4 down", func() bool {
		return e.health("h2").GetState() == pb.HostState_HOST_STATE_UP && e.health("h4").GetState() == pb.HostState_HOST_STATE_DOWN
	})
	if _, err := root.hosts.DrainHost(ctx, connect.NewRequest(&pb.DrainHostRequest{Name: "h3"})); err != nil {
		t.Fatal(err)
	}

	migrate := func(r *pb.MigrateVMRequest) (*pb.Operation, error) {
		resp, err := root.vms.MigrateVM(ctx, connect.NewRequest(r))
		if err != nil {
			return nil, err
		}
		return resp.Msg.Operation, nil
	}
	for _, tc := range []struct {
		name string
		req  *pb.MigrateVMRequest
		code connect.Code
		want []string
	}{
		{"local disk", &pb.MigrateVMRequest{Id: db}, connect.CodeFailedPrecondition, []string{"spec.disks[1]", "disk data", "local"}},
		{"target down", &pb.MigrateVMRequest{Id: web, ToHost: "h4"}, connect.CodeFailedPrecondition, []string{"to_host", "h4", "down"}},
		{"target in maintenance", &pb.MigrateVMRequest{Id: web, ToHost: "h3"}, connect.CodeFailedPrecondition, []string{"to_host", "h3", "maintenance"}},
		{"same host", &pb.MigrateVMRequest{Id: web, ToHost: "h1"}, connect.CodeInvalidArgument, []string{"to_host", "h1"}},
		{"no room", &pb.MigrateVMRequest{Id: web, ToHost: "h5"}, connect.CodeFailedPrecondition, []string{"to_host", "h5", "MiB free"}},
		{"unknown host", &pb.MigrateVMRequest{Id: web, ToHost: "h9"}, connect.CodeNotFound, []string{"to_host", "h9"}},
		{"not running", &pb.MigrateVMRequest{Id: notRunning}, connect.CodeFailedPrecondition, []string{"not running", "stopped"}},
		{"bad timeout", &pb.MigrateVMRequest{Id: web, TimeoutSeconds: proto.Int32(-1)}, connect.CodeInvalidArgument, []string{"timeout_seconds"}},
		{"bad downtime", &pb.MigrateVMRequest{Id: web, MaxDowntimeMs: proto.Int32(-5)}, connect.CodeInvalidArgument, []string{"max_downtime_ms"}},
		{"bad id", &pb.MigrateVMRequest{Id: "nope"}, connect.CodeInvalidArgument, []string{"id"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := migrate(tc.req)
			wantCode(t, err, tc.code, tc.want...)
		})
	}
	if n := len(e.ops(state.OpMigrate)); n != 0 {
		t.Fatalf("%d migrate operations after refused requests", n)
	}

	// Happy path, with the fleet paused so the records can be seen before the switch.
	f.set("h1", nil)
	op, err := migrate(&pb.MigrateVMRequest{Id: web, ToHost: "h2", TimeoutSeconds: proto.Int32(30), MaxDowntimeMs: proto.Int32(300)})
	if err != nil {
		t.Fatal(err)
	}
	if op.Kind != state.OpMigrate || op.State != pb.OperationState_OPERATION_STATE_RUNNING || op.Migration.GetSourceHost() != "h1" ||
		op.Migration.GetTargetHost() != "h2" || op.Migration.GetPhase() != "precopy" {
		t.Fatalf("op %v", op)
	}
	vm := e.vm(web)
	m := vm.Migration
	if m.GetOperationId() != op.Id || m.SourceHost != "h1" || m.TargetHost != "h2" || m.SourceEpoch != 1 || m.TimeoutSeconds != 30 || m.MaxDowntimeMs != 300 || !m.AutoConverge || vm.Host != "h1" {
		t.Fatalf("migration %v on %v", m, vm)
	}
	if vm.Status.State != pb.VMState_VM_STATE_MIGRATING {
		t.Fatalf("status %v", vm.Status)
	}
	for _, h := range []string{"h1", "h2"} {
		as, _, _ := e.st.ListAssigned(ctx, h)
		found := false
		for _, a := range as {
			if a.Id == web && a.Migration.GetOperationId() == op.Id {
				found = true
			}
		}
		if !found {
			t.Fatalf("no assigned copy with the migration on %s", h)
		}
	}
	if a := e.allocated("h2"); a.MemoryMib != 512 {
		t.Fatalf("target not reserved: %v", a)
	}
	e.ledgersExact()
	_, err = migrate(&pb.MigrateVMRequest{Id: web, ToHost: "h2"})
	wantCode(t, err, connect.CodeFailedPrecondition, "already migrating", op.Id)
	_, err = root.vms.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: web}))
	wantCode(t, err, connect.CodeFailedPrecondition, "being live-migrated")

	// The source agent performs it (the fleet: progress, switch, the target reports).
	f.set("h1", h1)
	waitFor(t, 10*time.Second, "migration finalized", func() bool { vm := e.vm(web); return vm.Host == "h2" && vm.Migration == nil })
	vm = e.vm(web)
	if vm.Epoch != 2 || e.assigned("h1", web) || !e.assigned("h2", web) {
		t.Fatalf("after the migration %v (assigned h1 %v)", vm, e.assigned("h1", web))
	}
	if a := e.allocated("h1"); a.MemoryMib != 256+128 {
		t.Fatalf("source not released: %v", a)
	}
	e.ledgersExact()
	if o := e.op(op.Id); o.State != pb.OperationState_OPERATION_STATE_DONE || o.Migration.GetDowntimeMs() != 30 || o.Migration.GetPhase() != "done" {
		t.Fatalf("op %v", o)
	}
	waitFor(t, 5*time.Second, "RUNNING at epoch 2", func() bool {
		s := e.vm(web).GetStatus()
		return s.GetState() == pb.VMState_VM_STATE_RUNNING && s.GetEpoch() == 2
	})

	// A failed migration: the VM stays, the target's copy and reservation go.
	f.setFail(true)
	op2, err := migrate(&pb.MigrateVMRequest{Id: web, ToHost: "h1"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "failed migration finalized", func() bool { return e.vm(web).Migration == nil })
	vm = e.vm(web)
	if vm.Host != "h2" || vm.Epoch != 2 || e.assigned("h1", web) {
		t.Fatalf("after the failed migration %v", vm)
	}
	if a := e.allocated("h1"); a.MemoryMib != 256+128 {
		t.Fatalf("target reservation kept: %v", a)
	}
	e.ledgersExact()
	if o := e.op(op2.Id); o.State != pb.OperationState_OPERATION_STATE_FAILED || o.Reason != "fake: destination refused" || o.Migration.GetPhase() != "failed" {
		t.Fatalf("failed op %v", o)
	}

	// Nobody performs it: failed after timeout + grace, then finalized.
	f.setFail(false)
	f.set("h2", nil)
	waitFor(t, 5*time.Second, "web RUNNING", func() bool { return e.vm(web).GetStatus().GetState() == pb.VMState_VM_STATE_RUNNING })
	if err := h2.report(web, pb.VMState_VM_STATE_RUNNING, 2); err != nil {
		t.Fatal(err)
	}
	op3, err := migrate(&pb.MigrateVMRequest{Id: web, ToHost: "h1", TimeoutSeconds: proto.Int32(1)})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "stuck migration failed and finalized", func() bool { return e.vm(web).Migration == nil })
	if o := e.op(op3.Id); o.State != pb.OperationState_OPERATION_STATE_FAILED || !strings.Contains(o.Reason, "no progress from agent on h2") {
		t.Fatalf("stuck op %v", o)
	}
	if vm := e.vm(web); vm.Status.State != pb.VMState_VM_STATE_RUNNING || !strings.Contains(vm.Status.Reason, "migration to h1 failed") {
		t.Fatalf("status after the stuck migration %v", vm.Status)
	}
	if e.assigned("h1", web) {
		t.Fatal("stuck migration left the target's copy")
	}
	e.ledgersExact()
}

// TestDrain: a host with three running VMs and a stopped one is drained (live
// migrations one at a time, the stopped VM moved by record): the operation ends DONE
// with the host empty; the scheduler places nothing on it; undrain returns it to
// service. A host with a VM on a local disk ends FAILED naming it.
func TestDrain(t *testing.T) {
	e := newEnv(t)
	c := e.haController(nil)
	root := c.as(e.token("root", ""))
	ctx := context.Background()
	e.registerImages(root)
	h1 := e.agent("h1", 10, 8, 4096)
	f := e.fleet(h1)
	var ids []string
	for _, n := range []string{"a", "b", "c"} {
		ids = append(ids, create(t, root, sharedVM(n, 256, false, 0)))
	}
	st := sharedVM("d", 256, false, 0)
	st.Stopped = true
	ids = append(ids, create(t, root, st))
	e.waitPlaced("h1", ids...)
	f.set("h2", e.agent("h2", 10, 8, 4096))
	f.set("h3", e.agent("h3", 10, 8, 4096))
	waitFor(t, 10*time.Second, "hosts up", func() bool { return e.health("h3").GetState() == pb.HostState_HOST_STATE_UP })

	resp, err := root.hosts.DrainHost(ctx, connect.NewRequest(&pb.DrainHostRequest{Name: "h1"}))
	if err != nil {
		t.Fatal(err)
	}
	op := resp.Msg.Operation
	if op.Kind != state.OpDrain || op.Host != "h1" || op.State != pb.OperationState_OPERATION_STATE_RUNNING {
		t.Fatalf("drain op %v", op)
	}
	again, err := root.hosts.DrainHost(ctx, connect.NewRequest(&pb.DrainHostRequest{Name: "h1"}))
	if err != nil {
		t.Fatal(err)
	}
	if again.Msg.Operation.Id != op.Id && e.op(op.Id).State == pb.OperationState_OPERATION_STATE_RUNNING {
		t.Fatalf("a second drain while the first runs: %v", again.Msg.Operation)
	}
	h, err := root.hosts.GetHost(ctx, connect.NewRequest(&pb.GetHostRequest{Name: "h1"}))
	if err != nil || h.Msg.Host.State != pb.HostState_HOST_STATE_MAINTENANCE || !h.Msg.Host.Maintenance {
		t.Fatalf("drained host %v %v", h, err)
	}
	waitFor(t, 30*time.Second, "drain finished", func() bool { return e.op(op.Id).State != pb.OperationState_OPERATION_STATE_RUNNING })
	if o := e.op(op.Id); o.State != pb.OperationState_OPERATION_STATE_DONE || o.Reason != "host empty" {
		t.Fatalf("drain %v", o)
	}
	for _, id := range ids {
		vm := e.vm(id)
		if vm.Host == "h1" || vm.Epoch != 2 || e.assigned("h1", id) {
			t.Errorf("VM %s after the drain: host %s epoch %d", vm.Name, vm.Host, vm.Epoch)
		}
	}
	migs := e.ops(state.OpMigrate)
	if len(migs) != 3 {
		t.Fatalf("%d migrations, want 3 (the stopped VM moves by record)", len(migs))
	}
	for i, m := range migs {
		if m.State != pb.OperationState_OPERATION_STATE_DONE {
			t.Errorf("migration %v", m)
		}
		if i > 0 && m.StartTime.AsTime().Before(migs[i-1].EndTime.AsTime()) {
			t.Errorf("migrations overlap: %v started before %v ended", m.Id, migs[i-1].Id)
		}
	}
	// The last migration's source reservation is released when the leader finalizes it
	// (after the target reported), possibly a pass after the drain saw the host empty.
	waitFor(t, 10*time.Second, "h1 ledger released", func() bool { return e.allocated("h1").GetMemoryMib() == 0 })
	e.ledgersExact()
	// Nothing is placed on a host in maintenance.
	for i := range 4 {
		id := create(t, root, sharedVM("new-"+string(rune('a'+i)), 128, false, 0))
		waitFor(t, 10*time.Second, "placed", func() bool { return e.vm(id).Host != "" })
		if e.vm(id).Host == "h1" {
			t.Fatal("placed on a drained host")
		}
	}
	u, err := root.hosts.UndrainHost(ctx, connect.NewRequest(&pb.UndrainHostRequest{Name: "h1"}))
	if err != nil || u.Msg.Host.State != pb.HostState_HOST_STATE_UP || u.Msg.Host.Maintenance {
		t.Fatalf("undrain %v %v", u, err)
	}
	_, err = root.hosts.DrainHost(ctx, connect.NewRequest(&pb.DrainHostRequest{Name: "nope"}))
	wantCode(t, err, connect.CodeNotFound, "nope")

	// A local disk keeps a VM on its host: the drain fails naming it, the rest moves.
	local := sharedVM("pinned", 128, false, 0)
	local.Spec.Disks[0].Pool = "local"
	pinned := create(t, root, local)
	waitFor(t, 10*time.Second, "pinned placed", func() bool { return e.vm(pinned).Host != "" })
	host := e.vm(pinned).Host
	e.waitPlaced(host, pinned)
	var others []string
	for _, rec := range mustList(t, e) {
		if rec.Host == host && rec.Id != pinned {
			others = append(others, rec.Id)
		}
	}
	resp, err = root.hosts.DrainHost(ctx, connect.NewRequest(&pb.DrainHostRequest{Name: host}))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "second drain finished", func() bool {
		return e.op(resp.Msg.Operation.Id).State != pb.OperationState_OPERATION_STATE_RUNNING
	})
	o := e.op(resp.Msg.Operation.Id)
	if o.State != pb.OperationState_OPERATION_STATE_FAILED || !strings.Contains(o.Reason, "VM pinned ("+pinned+"): disk root is on host-local pool local") || !strings.Contains(o.Reason, "1 VM(s) left") {
		t.Fatalf("drain with a local disk %v", o)
	}
	for _, id := range others {
		if e.vm(id).Host == host {
			t.Errorf("VM %s left on %s", id, host)
		}
	}
}

func mustList(t *testing.T, e *env) []*pb.VM {
	t.Helper()
	recs, _, err := e.st.ListVMs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []*pb.VM
	for _, r := range recs {
		out = append(out, r.VM)
	}
	return out
}

// TestAlertRules parses deploy/prometheus/plasmavmc-alerts.yml (promtool is not
// available): every rule has a name, an expression naming only metrics the controller
// exports, a severity and a summary; the required alerts exist.
func TestAlertRules(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "..", "deploy", "prometheus", "plasmavmc-alerts.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Labels      map[string]string `yaml:"labels"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&file); err != nil {
		t.Fatal(err)
	}
	c, err := controller.New(controller.Config{Store: state.New(nil, nil)})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	if err := c.Register(reg); err != nil {
		t.Fatal(err)
	}
	known := map[string]bool{}
	descs := make(chan *prometheus.Desc, 100)
	go func() {
		for _, col := range []prometheus.Collector{reg} {
			col.Describe(descs)
		}
		close(descs)
	}()
	nameRE := regexp.MustCompile(`fqName: "([a-z_]+)"`)
	for d := range descs {
		if m := nameRE.FindStringSubmatch(d.String()); m != nil {
			known[m[1]] = true
		}
	}
	metricRE := regexp.MustCompile(`\bplasmavmc_[a-z_]+\b`)
	seen := map[string]bool{}
	for _, g := range file.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %+v", g)
		}
		for _, r := range g.Rules {
			seen[r.Alert] = true
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("rule %+v", r)
			}
			if r.For != "" {
				if _, err := time.ParseDuration(r.For); err != nil {
					t.Errorf("%s: for %q: %v", r.Alert, r.For, err)
				}
			}
			if strings.Count(r.Expr, "(") != strings.Count(r.Expr, ")") || strings.Count(r.Expr, "{") != strings.Count(r.Expr, "}") {
				t.Errorf("%s: unbalanced expression %q", r.Alert, r.Expr)
			}
			ms := metricRE.FindAllString(r.Expr, -1)
			if len(ms) == 0 {
				t.Errorf("%s: no plasmavmc metric in %q", r.Alert, r.Expr)
			}
			for _, m := range ms {
				if !known[m] {
					t.Errorf("%s: unknown metric %s", r.Alert, m)
				}
			}
		}
	}
	for _, a := range []string{"PlasmaVMCHostSuspect", "PlasmaVMCHostDown", "PlasmaVMCHostFenced", "PlasmaVMCFailoverFailed", "PlasmaVMCMigrationFailed"} {
		if !seen[a] {
			t.Errorf("alert %s missing", a)
		}
	}
}

// TestOperationDeadline: an operation whose agent never reports ends FAILED after the
// operation timeout, saying what the VM waits for; the VM itself is left alone.
func TestOperationDeadline(t *testing.T) {
	e := newEnv(t)
	c := e.haController(func(c *controller.Config) { c.HA.OperationTimeout = time.Second })
	root := c.as(e.token("root", ""))
	e.registerImages(root)
	e.agent("h1", 10, 8, 4096) // holds its lease, never reports a status
	resp, err := root.vms.CreateVM(context.Background(), connect.NewRequest(sharedVM("silent", 512, true, 0)))
	if err != nil {
		t.Fatal(err)
	}
	opID, id := resp.Msg.Operation.Id, resp.Msg.Vm.Id
	waitFor(t, 15*time.Second, "create operation failed by its deadline", func() bool {
		return e.op(opID).State == pb.OperationState_OPERATION_STATE_FAILED
	})
	op := e.op(opID)
	t.Logf("reason: %s", op.Reason)
	for _, want := range []string{"no final status within 1s", "SCHEDULED", "h1"} {
		if !strings.Contains(op.Reason, want) {
			t.Errorf("reason %q lacks %q", op.Reason, want)
		}
	}
	if vm := e.vm(id); vm.Host != "h1" || vm.GetStatus().GetState() != pb.VMState_VM_STATE_SCHEDULED {
		t.Errorf("the VM was touched: host %q state %v", vm.Host, vm.GetStatus().GetState())
	}
}
