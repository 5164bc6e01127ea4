package chaos

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
)

// prefix holds every key the chaos workload writes; the watchers watch it.
const prefix = "chaos/"

// run describes one chaos test: the nemeses to draw from (one kind, or several for a
// mixed test) and how long to run them.
type run struct {
	nemeses []nemesis
	// duration is how long the nemesis keeps injecting faults (the workload runs a
	// little longer on both sides).
	duration time.Duration
	// calm is the mean pause between two fault cycles.
	calm time.Duration
	// cycles, when positive, caps the number of fault cycles.
	cycles int
}

// runChaos starts a 3-member cluster, three watchers and the workload, lets the
// nemesis loose for r.duration, heals everything, and checks the history, the watch
// streams and the members' stores.
func runChaos(t *testing.T, r run) {
	if r.calm == 0 {
		r.calm = 2 * time.Second
	}
	opts := chainfiretest.Options{}
	if needsNetwork(r.nemeses) {
		opts = networkOptions(t)
	}
	e := newEnv(t, 3, opts)
	eps := e.endpoints(e.members()...)

	var watchers []*Watcher
	for i := range 3 {
		w, err := StartWatcher(i, rotate(eps, i), prefix)
		if err != nil {
			t.Fatal(err)
		}
		watchers = append(watchers, w)
	}
	stopWatchers := func() {
		for _, w := range watchers {
			w.Stop()
		}
		watchers = nil
	}
	defer stopWatchers()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	w, err := StartWorkload(ctx, WorkloadConfig{Endpoints: eps, Prefix: prefix})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()

	// The nemesis runs on the test's goroutine (it may fail the test).
	t.Logf("nemeses %s for %v", describeNemeses(r.nemeses), r.duration)
	sleep(context.Background(), r.calm)
	nctx, ncancel := context.WithTimeout(context.Background(), r.duration)
	cycles := 0
	for (r.cycles == 0 || cycles < r.cycles) && sleep(nctx, e.jitter(r.calm)) {
		n := r.nemeses[e.intn(len(r.nemeses))]
		e.logf("nemesis: %s", n.name)
		n.cycle(nctx, e)
		cycles++
	}
	ncancel()
	e.healAll()
	e.logf("healed after %d fault cycles", cycles)

	// Liveness: with every member back, writes succeed again.
	live := e.client(2*time.Second, e.endpoints(e.members()...)...)
	lctx, lcancel := context.WithTimeout(context.Background(), 15*time.Second)
	lresp, err := live.Put(lctx, prefix+"liveness", "live")
	lcancel()
	if err != nil {
		t.Fatalf("no write succeeds 15 s after healing: %v", err)
	}
	extra := []Append{{Key: prefix + "liveness", Value: "live", Status: StatusOK, Revision: lresp.Header.Revision}}
	sleep(context.Background(), time.Second)
	w.Stop()

	// A last write marks the end: every watcher and member must get there.
	sctx, scancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer scancel()
	resp, err := live.Put(sctx, prefix+"end", "end")
	if err != nil {
		t.Fatalf("final write: %v", err)
	}
	final := resp.Header.Revision
	extra = append(extra, Append{Key: prefix + "end", Value: "end", Status: StatusOK, Revision: final})
	var streams [][]Event
	for _, w := range watchers {
		if err := w.WaitRevision(sctx, final); err != nil {
			t.Errorf("watcher %d: %v", w.ID, err)
		}
	}
	var reconnects []int64
	for _, w := range watchers {
		streams = append(streams, w.Events())
		reconnects = append(reconnects, w.Reconnects())
	}
	stopWatchers()

	ops := w.History.Ops()
	appends := w.Appends()
	var acked int
	for _, a := range appends {
		if a.Status == StatusOK {
			acked++
		}
	}
	t.Logf("history: %d ops: %s; appends: %d, %d acknowledged; watch reconnects %v; final revision %d",
		len(ops), Counts(ops), len(appends), acked, reconnects, final)
	checkAll(t, e, ops, appends, streams, final, extra)
}

// checkAll runs every checker and fails the test with what they found.
func checkAll(t *testing.T, e *env, ops []Op, appends []Append, streams [][]Event, final int64, extra []Append) {
	t.Helper()
	var failed bool
	report := func(what string, problems []string) {
		if len(problems) == 0 {
			return
		}
		failed = true
		t.Errorf("%s: %d problems:\n  %s", what, len(problems), strings.Join(problems, "\n  "))
	}
	wr := CheckWatches(streams, final, true, ops, appends, extra)
	report("watch streams", wr.Problems)
	report("revisions", CheckRevisions(ops))
	start := time.Now()
	lin := CheckLinearizable(ops, wr.Applied, 3*time.Minute, t.Name())
	t.Logf("porcupine: %d operations (%d indeterminate writes resolved by the watch streams) checked in %v",
		lin.Checked, lin.Resolved, time.Since(start).Round(time.Millisecond))
	report("linearizability", lin.Problems)
	if len(lin.TimedOut) > 0 {
		report("linearizability", []string{"check timed out (neither proven nor refuted) for " + strings.Join(lin.TimedOut, ", ")})
	}
	var running []int
	for _, i := range e.members() {
		if e.c.Members[i].Running() {
			running = append(running, i)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	report("members' final state", CheckMembers(ctx, e.endpoints(running...), prefix, final, wr.State))
	if failed {
		if dir, err := ArtifactDir(); err == nil {
			path := filepath.Join(dir, sanitize(t.Name())+"-history.jsonl")
			if f, err := os.Create(path); err == nil {
				WriteJSON(f, ops)
				f.Close()
				t.Logf("full history: %s", path)
			}
		}
	}
}

// workloadDuration is how long each single-fault test injects faults.
func workloadDuration() time.Duration { return scaled(25*time.Second, 3*time.Minute) }

func TestChaosLeaderKill(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{leaderKill}, duration: workloadDuration()})
}

func TestChaosMemberKill(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{memberKill}, duration: workloadDuration()})
}

func TestChaosLeaderPause(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{leaderPause}, duration: workloadDuration()})
}

func TestChaosQuorumLoss(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{quorumLoss}, duration: workloadDuration()})
}

func TestChaosRollingRestart(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{rollingRestart}, duration: workloadDuration()})
}

func TestChaosMembership(t *testing.T) {
	// Each cycle adds a member and removes another for good.
	runChaos(t, run{nemeses: []nemesis{membership}, duration: workloadDuration(), calm: 3 * time.Second})
}

func TestChaosMixed(t *testing.T) {
	ns := processNemeses()
	ns = append(ns, networkNemeses()...)
	runChaos(t, run{nemeses: ns, duration: scaled(40*time.Second, 6*time.Minute)})
}

// TestChaosMemberRemoveLeader removes the leader, through the leader itself, while the
// workload runs: the call must answer (the leader steps down; README, runbook), the
// member list must drop it, and the history must check as in every chaos test.
func TestChaosMemberRemoveLeader(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{{name: "remove the leader through itself", cycle: func(ctx context.Context, e *env) {
		l := e.leaderOr()
		cli := e.client(2*time.Second, e.endpoints(l)...)
		ml, err := cli.MemberList(ctx)
		if err != nil {
			t.Fatalf("member list: %v", err)
		}
		var id uint64
		for _, m := range ml.Members {
			if m.Name == e.c.Members[l].Name {
				id = m.ID
			}
		}
		e.logf("member remove %s (the leader) through itself", e.c.Members[l].Name)
		e.removeMember(cli, l, id)
		e.terminate(l)
	}}}, duration: 10 * time.Second, cycles: 1})
}
