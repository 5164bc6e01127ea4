package chaos

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
)

// networkOptions returns cluster options that run every member in a network namespace
// of its own (chainfiretest.Options.Network), so that nemeses can cut links between
// members. The test process still reaches every member whatever is cut.
func networkOptions(*testing.T) chainfiretest.Options {
	return chainfiretest.Options{Network: true}
}

// healNetwork removes every network fault (a no-op on a loopback cluster).
func (e *env) healNetwork() {
	if e.c.Net != nil {
		e.logf("heal network")
		e.c.Heal()
	}
}

// The network nemeses.
var (
	leaderIsolate = nemesis{name: "leader isolated from the majority", network: true, cycle: func(ctx context.Context, e *env) {
		l := e.leaderOr()
		e.logf("isolate %s", e.c.Members[l].Name)
		e.c.Isolate(l)
		// Long enough for the majority to elect a leader and move on, and for the old
		// leader to notice it lost its quorum.
		sleep(ctx, 2*electionTimeout()+e.jitter(2*time.Second))
		e.healNetwork()
		e.ready(l)
	}}
	oneWayCut = nemesis{name: "one-way cut", network: true, cycle: func(ctx context.Context, e *env) {
		l := e.leaderOr()
		fs := e.except(l)
		f := fs[e.intn(len(fs))]
		switch e.intn(3) {
		case 0:
			// The leader's messages are lost; the followers' still arrive, so it hears
			// the vote requests of the new term.
			for _, f := range fs {
				e.logf("cut %s -> %s", e.c.Members[l].Name, e.c.Members[f].Name)
				e.c.Cut(l, f)
			}
		case 1:
			// One follower stops hearing the leader: pre-vote keeps it from deposing a
			// leader the other follower still hears.
			e.logf("cut %s -> %s", e.c.Members[l].Name, e.c.Members[f].Name)
			e.c.Cut(l, f)
		default:
			// The leader stops hearing one follower's answers.
			e.logf("cut %s -> %s", e.c.Members[f].Name, e.c.Members[l].Name)
			e.c.Cut(f, l)
		}
		sleep(ctx, 2*electionTimeout()+e.jitter(2*time.Second))
		e.healNetwork()
		e.ready(e.members()...)
	}}
)

// More network nemeses: a follower cut off (the majority must not notice beyond one
// slow member), and a degraded network (every member's link delayed and lossy at once:
// heartbeats late, retransmissions, leader changes at random).
var (
	followerIsolate = nemesis{name: "follower isolated", network: true, cycle: func(ctx context.Context, e *env) {
		l := e.leaderOr()
		fs := e.except(l)
		f := fs[e.intn(len(fs))]
		e.logf("isolate follower %s", e.c.Members[f].Name)
		e.c.Isolate(f)
		// The isolated follower times out and campaigns, raising its term; pre-vote
		// keeps it from deposing the healthy leader when it comes back.
		sleep(ctx, 2*electionTimeout()+e.jitter(2*time.Second))
		e.healNetwork()
		e.ready(f)
	}}
	degradedNetwork = nemesis{name: "delay + loss on every link", network: true, cycle: func(ctx context.Context, e *env) {
		// Per member: 20-120 ms each way (a round trip up to a quarter second, half the
		// election timeout) and 0-10% loss.
		for _, m := range e.members() {
			delay := time.Duration(20+e.intn(101)) * time.Millisecond
			loss := float64(e.intn(11)) / 100
			e.logf("netem %s: delay %v loss %.0f%%", e.c.Members[m].Name, delay, 100*loss)
			e.c.Netem(m, delay, loss)
		}
		sleep(ctx, 3*electionTimeout()+e.jitter(2*time.Second))
		e.healNetwork()
		e.ready(e.members()...)
	}}
)

// networkNemeses are the nemeses that cut or degrade the network.
func networkNemeses() []nemesis {
	return []nemesis{leaderIsolate, oneWayCut, followerIsolate, degradedNetwork}
}

func TestChaosLeaderIsolate(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{leaderIsolate}, duration: workloadDuration()})
}

func TestChaosOneWayCut(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{oneWayCut}, duration: workloadDuration()})
}

func TestChaosFollowerIsolate(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{followerIsolate}, duration: workloadDuration()})
}

func TestChaosDegradedNetwork(t *testing.T) {
	runChaos(t, run{nemeses: []nemesis{degradedNetwork}, duration: workloadDuration()})
}

// TestChaosDeposedLeaderRestart: a leader cut off from its peers still appends the
// writes it is sent to its own log, where they can never commit; once healed, it
// follows the new leader and truncates that uncommitted tail ("clearing log suffix").
// SIGKILLed afterwards, it must restart on its data directory and catch up, and none
// of the writes it accepted while isolated may ever show up.
func TestChaosDeposedLeaderRestart(t *testing.T) {
	e := newEnv(t, 3, networkOptions(t))
	key, ghost := prefix+"deposed", prefix+"uncommitted"
	for round := range scaled(2, 6) {
		l := e.mustLeader()
		maj := e.client(time.Second, e.endpoints(e.except(l)...)...)
		old := e.client(time.Second, e.endpoints(l)...)
		writeThrough(t, maj, key, fmt.Sprintf("before-%d", round))

		e.logf("isolate %s", e.c.Members[l].Name)
		e.c.Isolate(l)
		for i := range 5 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err := old.Put(ctx, ghost, fmt.Sprintf("ghost-%d-%d", round, i))
			cancel()
			if err == nil {
				t.Errorf("round %d: the isolated leader acknowledged a write", round)
			}
		}
		after := fmt.Sprintf("after-%d", round)
		writeThrough(t, maj, key, after)
		e.healNetwork()
		e.ready(l)
		waitValue(t, e.client(time.Second, e.endpoints(l)...), key, after)
		truncated := false
		for _, line := range strings.Split(e.c.Members[l].Logs(), "\n") {
			if strings.Contains(line, "clearing log suffix") {
				truncated = true
				e.logf("%s: %s", e.c.Members[l].Name, line)
			}
		}
		if !truncated {
			e.logf("round %d: %s did not have to truncate its log this time", round, e.c.Members[l].Name)
		}

		e.kill(l)
		e.startMember(l)
		if err := e.waitReady(l, 30*time.Second); err != nil {
			t.Fatalf("round %d: %s does not restart after truncating its log: %v", round, e.c.Members[l].Name, err)
		}
		waitValue(t, e.client(time.Second, e.endpoints(l)...), key, after)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		r, err := maj.Get(ctx, ghost)
		cancel()
		if err != nil {
			t.Fatalf("read %s: %v", ghost, err)
		}
		if len(r.Kvs) > 0 {
			t.Errorf("round %d: a write the isolated leader took was committed: %s=%s", round, ghost, r.Kvs[0].Value)
		}
	}
}

// waitValue waits until a serializable read of key through cli (one member) returns
// want: that member has applied the write.
func waitValue(t *testing.T, cli *chainfire.Client, key, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var got string
	for {
		r, err := cli.Get(ctx, key, chainfire.WithSerializable())
		if err == nil && len(r.Kvs) > 0 {
			if got = string(r.Kvs[0].Value); got == want {
				return
			}
		}
		if !sleep(ctx, 50*time.Millisecond) {
			t.Fatalf("%s is %q on %v, want %q (last error %v)", key, got, cli.Endpoints(), want, err)
		}
	}
}
