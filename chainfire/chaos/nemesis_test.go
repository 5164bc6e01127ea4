package chaos

import (
	"context"
	"fmt"
	"time"

	"plasmacloud.dev/pkg/chainfire"
)

// A nemesis injects one kind of fault per cycle and undoes it before the cycle ends,
// leaving every member of the cluster running and ready (or failing the test). Cycles
// run on the test's goroutine, between calm periods, while the workload runs.
type nemesis struct {
	name string
	// network says the nemesis needs the cluster on a harness network
	// (chainfiretest.Options.Network).
	network bool
	cycle   func(ctx context.Context, e *env)
}

// hold is how long a fault lasts: a random time around d.
func (e *env) hold(ctx context.Context, d time.Duration) { sleep(ctx, e.jitter(d)) }

// ready waits until each member in idx is ready again, failing the test after 30 s.
func (e *env) ready(idx ...int) {
	e.t.Helper()
	for _, i := range idx {
		if err := e.waitReady(i, 30*time.Second); err != nil {
			e.t.Fatalf("%s not ready again: %v", e.c.Members[i].Name, err)
		}
	}
}

// leaderOr returns the leader, or a random member when none is found quickly.
func (e *env) leaderOr() int {
	if l := e.leader(5 * time.Second); l >= 0 {
		return l
	}
	m := e.members()
	e.logf("no leader found; picking a random member")
	return m[e.intn(len(m))]
}

// randomMember returns a random member of the cluster.
func (e *env) randomMember() int {
	m := e.members()
	return m[e.intn(len(m))]
}

// The process nemeses.
var (
	leaderKill = nemesis{name: "leader SIGKILL + restart", cycle: func(ctx context.Context, e *env) {
		l := e.leaderOr()
		e.kill(l)
		e.hold(ctx, 1500*time.Millisecond)
		e.startMember(l)
		e.ready(l)
	}}
	memberKill = nemesis{name: "random member SIGKILL + restart", cycle: func(ctx context.Context, e *env) {
		i := e.randomMember()
		e.kill(i)
		e.hold(ctx, 1500*time.Millisecond)
		e.startMember(i)
		e.ready(i)
	}}
	leaderPause = nemesis{name: "leader SIGSTOP + SIGCONT", cycle: func(ctx context.Context, e *env) {
		l := e.leaderOr()
		e.pause(l)
		// Longer than the election timeout: the others elect a new leader meanwhile.
		sleep(ctx, 2*electionTimeout()+e.jitter(1500*time.Millisecond))
		e.resume(l)
		e.ready(l)
	}}
	quorumLoss = nemesis{name: "kill two of three + restart", cycle: func(ctx context.Context, e *env) {
		m := e.members()
		a := m[e.intn(len(m))]
		rest := e.except(a)
		b := rest[e.intn(len(rest))]
		e.kill(a)
		e.kill(b)
		e.hold(ctx, 2*time.Second)
		e.startMember(a)
		e.startMember(b)
		e.ready(a, b)
	}}
	rollingRestart = nemesis{name: "rolling graceful restart (SIGTERM)", cycle: func(ctx context.Context, e *env) {
		for _, i := range e.members() {
			e.terminate(i)
			e.startMember(i)
			e.ready(i)
			if !sleep(ctx, e.jitter(time.Second)) {
				return
			}
		}
	}}
	// gracefulRestart is one step of rollingRestart, for the mixed nemesis.
	gracefulRestart = nemesis{name: "member SIGTERM + start", cycle: func(ctx context.Context, e *env) {
		i := e.randomMember()
		if e.intn(2) == 0 {
			i = e.leaderOr()
		}
		e.terminate(i)
		e.startMember(i)
		e.ready(i)
	}}
	membership = nemesis{name: "add a member, remove one", cycle: addRemove}
)

// originals is the size of the cluster the tests start with; membership changes keep
// at least two of those members, because the workload's clients only know their
// endpoints.
const originals = 3

// addRemove adds a member (MemberAdd, then a new process with
// --initial-cluster-state existing), waits until it is ready, then removes another
// member — the leader half of the time — and stops it.
func addRemove(ctx context.Context, e *env) {
	e.t.Helper()
	mems := e.members()
	cli := e.client(2*time.Second, e.endpoints(mems...)...)
	actx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := e.c.AddMember(func(peerURL string) error {
		e.logf("member add %s", peerURL)
		_, err := cli.MemberAdd(actx, []string{peerURL})
		return err
	})
	added := len(e.c.Members) - 1
	e.logf("started %s", m.Name)
	e.ready(added)
	// Candidates keep at least two of the original members.
	left := 0
	for _, i := range mems {
		if i < originals {
			left++
		}
	}
	var cands []int
	for _, i := range mems {
		if i >= originals || left > 2 {
			cands = append(cands, i)
		}
	}
	victim := cands[e.intn(len(cands))]
	if l := e.leader(5 * time.Second); l >= 0 && contains(cands, l) && e.intn(2) == 0 {
		victim = l
	}
	var id uint64
	for {
		ml, err := cli.MemberList(actx)
		if err != nil {
			e.t.Fatalf("member list: %v", err)
		}
		for _, mm := range ml.Members {
			if mm.Name == e.c.Members[victim].Name {
				id = mm.ID
			}
		}
		if id != 0 {
			break
		}
		if !sleep(actx, 100*time.Millisecond) {
			e.t.Fatalf("%s not in the member list", e.c.Members[victim].Name)
		}
	}
	e.logf("member remove %s (%x)", e.c.Members[victim].Name, id)
	e.removeMember(cli, victim, id)
	e.terminate(victim)
}

// removeMember removes member victim (raft id) through cli and checks that the call
// answers, successfully, within 5 s and that the member list no longer has it.
func (e *env) removeMember(cli *chainfire.Client, victim int, id uint64) {
	e.t.Helper()
	name := e.c.Members[victim].Name
	wasLeader := e.leader(time.Second) == victim
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	start := time.Now()
	_, err := cli.MemberRemove(ctx, id)
	cancel()
	if err != nil {
		e.t.Errorf("member remove %s (leader: %v) failed after %v: %v", name, wasLeader, time.Since(start).Round(time.Millisecond), err)
	}
	e.mu.Lock()
	e.removed[victim] = true
	e.mu.Unlock()
	// Whatever the answer, the member must be gone from the list the others serve.
	rest := e.client(2*time.Second, e.endpoints(e.members()...)...)
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		ml, err := rest.MemberList(ctx)
		gone := err == nil
		for _, m := range ml.GetMembers() {
			if m.ID == id {
				gone = false
			}
		}
		if gone {
			return
		}
		if !sleep(ctx, 100*time.Millisecond) {
			e.t.Errorf("%s still in the member list 10 s after its removal (last error %v)", name, err)
			return
		}
	}
}

// processNemeses are the nemeses that need no network namespaces.
func processNemeses() []nemesis {
	return []nemesis{leaderKill, memberKill, leaderPause, quorumLoss, gracefulRestart, membership}
}

// describeNemeses lists nemesis names for logs.
func describeNemeses(ns []nemesis) string {
	s := ""
	for i, n := range ns {
		if i > 0 {
			s += ", "
		}
		s += n.name
	}
	return fmt.Sprintf("[%s]", s)
}

// needsNetwork reports whether any nemesis needs a harness network.
func needsNetwork(ns []nemesis) bool {
	for _, n := range ns {
		if n.network {
			return true
		}
	}
	return false
}
