package agent_test

import (
	"bufio"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/plasmavmc/internal/agent"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// metric scrapes one unlabelled sample from the agent's /metrics.
func metric(t *testing.T, base, name string) float64 {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("metrics: %d %s", code, body)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// alive reads /alive/<host>: the instance and its lease (zero when absent).
func (l *lab) alive(host string) (string, int64) {
	l.t.Helper()
	resp, err := l.c.Get(l.t.Context(), state.AliveKey(host))
	if err != nil || len(resp.Kvs) == 0 {
		return "", 0
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].Lease
}

// TestSelfFence checks the agent's self-fence with a fake hypervisor and a real ChainFire
// (lease TTL 4 s, fence margin 1 s): when ChainFire stops answering (SIGSTOP), the HA
// domain is destroyed at the fence deadline (last renewal sent + TTL - margin), before
// the lease could expire; the non-HA domain keeps running; nothing is started while
// fenced (a crashed VM stays down); after SIGCONT the agent rejoins with a new lease and
// instance, restarts what is assigned and writes rejoined_instance. A revoked lease
// fences at the next renewal.
func TestSelfFence(t *testing.T) {
	l, fnet := newFakeLab(t, 1, chainfiretest.Options{})
	h := l.fakeHost(fnet, "a")
	cfg := l.fakeConfig(h)
	cfg.LeaseTTL, cfg.FenceMargin = 4*time.Second, time.Second
	proxy := newCutProxy(t, l.cf.Endpoints()[0])
	cfg.ChainFireEndpoints = []string{proxy.URL()}
	base := "http://" + cfg.Listener.Addr().String()
	l.runAgent(cfg)
	waitReady(t, base)
	const short = 20 * time.Second

	havm, plain := l.fakeVM("ha", "a", true), l.fakeVM("plain", "a", false)
	l.create(havm)
	l.create(plain)
	l.waitStatus(havm.Id, short, "HA VM running", runningAt(1))
	l.waitStatus(plain.Id, short, "plain VM running", runningAt(1))

	t.Run("keepalive-deadline", func(t *testing.T) {
		inst0, _ := l.alive("a")
		member := l.cf.Members[0]
		if err := member.Stop(); err != nil {
			t.Fatal(err)
		}
		stopped := time.Now()
		resumed := false
		defer func() {
			if !resumed {
				_ = member.Cont()
			}
		}()
		fenceIn := time.Duration(metric(t, base, "plasmavmc_agent_lease_fence_in_seconds") * float64(time.Second))
		deadline := time.Now().Add(fenceIn)
		lastSent := deadline.Add(cfg.FenceMargin - cfg.LeaseTTL) // the last renewal answered was sent then
		waitFor(t, short, "HA domain destroyed", func() bool { d, _ := h.Domain(havm.Id); return !d.Running() })
		destroyed := time.Now()
		t.Logf("MEASURE self-fence (ChainFire SIGSTOP, TTL %v, margin %v): HA domain destroyed %v after the last renewal was sent, %v after the fence deadline, %v after SIGSTOP",
			cfg.LeaseTTL, cfg.FenceMargin, destroyed.Sub(lastSent).Round(time.Millisecond),
			destroyed.Sub(deadline).Round(time.Millisecond), destroyed.Sub(stopped).Round(time.Millisecond))
		if destroyed.After(lastSent.Add(cfg.LeaseTTL)) {
			t.Fatalf("HA domain destroyed %v after the last renewal: after the lease could have expired (TTL %v)",
				destroyed.Sub(lastSent), cfg.LeaseTTL)
		}
		if destroyed.Before(deadline.Add(-100 * time.Millisecond)) {
			t.Fatalf("fenced %v before the deadline", deadline.Sub(destroyed))
		}
		if d, _ := h.Domain(plain.Id); !d.Running() {
			t.Fatal("non-HA domain stopped by the self-fence")
		}
		// Nothing starts while fenced: a crashed VM stays down.
		if err := h.Crash(plain.Id); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		for _, id := range []string{havm.Id, plain.Id} {
			if d, _ := h.Domain(id); d.Running() {
				t.Fatalf("VM %s started while the host is fenced", id)
			}
		}
		if code, _ := get(t, base+"/metrics"); code != 200 || metric(t, base, "plasmavmc_agent_self_fences_total") != 1 ||
			metric(t, base, "plasmavmc_agent_joined") != 0 {
			t.Fatalf("metrics after the fence: fences %v joined %v", metric(t, base, "plasmavmc_agent_self_fences_total"),
				metric(t, base, "plasmavmc_agent_joined"))
		}

		if code, body := get(t, base+"/readyz"); code == http.StatusOK || !strings.Contains(body, "self-fenced") {
			t.Fatalf("readyz while fenced: %d %s", code, body)
		}
		if err := member.Cont(); err != nil {
			t.Fatal(err)
		}
		resumed = true
		cont := time.Now()
		var inst1 string
		waitFor(t, short, "rejoined with a new instance", func() bool {
			inst, lease := l.alive("a")
			if inst == "" || inst == inst0 || lease == 0 {
				return false
			}
			hr, err := l.st.GetHost(t.Context(), "a")
			inst1 = inst
			return err == nil && hr.Host.RejoinedInstance == inst
		})
		t.Logf("MEASURE ChainFire SIGCONT → rejoined_instance written: %v", time.Since(cont).Round(time.Millisecond))
		waitReady(t, base)
		l.waitStatus(havm.Id, short, "HA VM running again after the rejoin", runningAt(1))
		l.waitStatus(plain.Id, short, "plain VM running again after the rejoin", runningAt(1))
		recs, err := agent.ReadFenceRecords(h.stateDir)
		if err != nil || len(recs) != 1 || recs[0].By != "agent" || !slices.Equal(recs[0].Destroyed, []string{havm.Id}) {
			t.Fatalf("fenced file: %+v %v", recs, err)
		}
		t.Logf("fence record: %+v; new instance %s", recs[0], inst1)
	})

	t.Run("lease-revoked", func(t *testing.T) {
		inst0, lease := l.alive("a")
		if lease == 0 {
			t.Fatal("no lease on the alive key")
		}
		revoked := time.Now()
		if _, err := l.c.Revoke(t.Context(), lease); err != nil {
			t.Fatal(err)
		}
		d := waitFor(t, short, "HA domain destroyed after the lease was revoked", func() bool {
			d, _ := h.Domain(havm.Id)
			return !d.Running()
		})
		t.Logf("MEASURE lease revoked → HA domain destroyed: %v", d.Round(time.Millisecond))
		if d > cfg.LeaseTTL {
			t.Fatalf("fence took %v", d)
		}
		waitFor(t, short, "rejoined", func() bool {
			inst, _ := l.alive("a")
			hr, err := l.st.GetHost(t.Context(), "a")
			return inst != "" && inst != inst0 && err == nil && hr.Host.RejoinedInstance == inst
		})
		st := l.waitStatus(havm.Id, short, "HA VM running again", runningAt(1))
		t.Logf("MEASURE lease revoked → HA VM running again after the rejoin: %v (boot %s)", time.Since(revoked).Round(time.Millisecond), st.BootId)
		if d, _ := h.Domain(plain.Id); !d.Running() {
			t.Fatal("non-HA domain stopped")
		}
	})

	t.Run("failed-over-while-fenced", func(t *testing.T) {
		// The agent is cut off from ChainFire (its link only); meanwhile the controller
		// fails the HA VM over to b (epoch 2). After the heal a rejoins without starting
		// it: its copy was destroyed by the fence, and the record is b's now.
		proxy.Cut()
		waitFor(t, short, "HA domain destroyed", func() bool { d, _ := h.Domain(havm.Id); return !d.Running() })
		rec, err := l.st.GetVM(t.Context(), havm.Id)
		if err != nil {
			t.Fatal(err)
		}
		sched := &pb.VMStatus{State: pb.VMState_VM_STATE_SCHEDULED, Host: "b", Reason: "failover from a", Epoch: 2}
		if r, err := l.st.Commit(t.Context(), state.BuildMove(state.Moved(rec.VM, "b"), rec.ModRevision, "a", sched, nil)); err != nil || !r.Succeeded {
			t.Fatalf("move: %v", err)
		}
		inst0, _ := l.alive("a")
		proxy.Heal()
		waitFor(t, short, "rejoined", func() bool {
			inst, _ := l.alive("a")
			hr, err := l.st.GetHost(t.Context(), "a")
			return inst != "" && inst != inst0 && err == nil && hr.Host.RejoinedInstance == inst
		})
		time.Sleep(2 * time.Second)
		if c := callsOf(h, havm.Id); slices.Contains(c[len(c)-1:], "start "+havm.Id) {
			t.Fatalf("a started the VM that failed over to b: %v", c)
		}
		if d, ok := h.Domain(havm.Id); ok && d.Running() {
			t.Fatalf("a runs the VM that failed over to b: %+v", d)
		}
		if d, _ := h.Domain(plain.Id); !d.Running() {
			t.Fatal("non-HA domain stopped")
		}
		if st, _ := l.status(t.Context(), havm.Id); st.GetHost() != "b" || st.GetState() != pb.VMState_VM_STATE_SCHEDULED {
			t.Fatalf("a overwrote the moved VM's status: %v", st)
		}
	})
}
