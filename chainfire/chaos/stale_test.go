package chaos

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
)

// readResult is one linearizable read through a deposed leader.
type readResult struct {
	how    string // "get" or "txn"
	phase  string
	value  string
	modRev int64 // mod revision of the value read
	rev    int64 // header revision of the response
	member uint64
	err    error
	call   time.Time
}

// staleReads collects reads through an old leader; each was invoked after the write
// of want had been acknowledged, so each must fail or return want.
type staleReads struct {
	mu      sync.Mutex
	results []readResult
}

// read reads key through cli (pinned to the old leader) with a Get, or with a
// read-only Txn, and records the result.
func (s *staleReads) read(cli *chainfire.Client, key, how, phase string, timeout time.Duration) {
	r := readResult{how: how, phase: phase, call: time.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if how == "get" {
		resp, err := cli.Get(ctx, key)
		r.err = err
		if err == nil {
			r.rev, r.member = resp.Header.GetRevision(), resp.Header.GetMemberId()
			if len(resp.Kvs) > 0 {
				r.value, r.modRev = string(resp.Kvs[0].Value), resp.Kvs[0].ModRevision
			}
		}
	} else {
		resp, err := cli.Txn(ctx).Then(chainfire.OpGet(key)).Commit()
		r.err = err
		if err == nil {
			r.rev, r.member = resp.Header.GetRevision(), resp.Header.GetMemberId()
			if len(resp.Responses) == 1 {
				if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
					r.value, r.modRev = string(kvs[0].Value), kvs[0].ModRevision
				}
			}
		}
	}
	s.mu.Lock()
	s.results = append(s.results, r)
	s.mu.Unlock()
}

// check fails the test for every read that returned something other than want, and
// logs a summary per phase.
func (s *staleReads) check(t *testing.T, round int, want, old string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	type tally struct{ fresh, failed int }
	phases := map[string]*tally{}
	var order []string
	for _, r := range s.results {
		p := phases[r.phase]
		if p == nil {
			p = &tally{}
			phases[r.phase] = p
			order = append(order, r.phase)
		}
		switch {
		case r.err != nil:
			p.failed++
		case r.value == want:
			p.fresh++
		default:
			t.Errorf("round %d: STALE READ through the old leader (%s, %s, invoked %s): got %q (mod revision %d, response revision %d, member %x), want %q (the value before was %q)",
				round, r.how, r.phase, r.call.Format("15:04:05.000"), r.value, r.modRev, r.rev, r.member, want, old)
		}
	}
	var b strings.Builder
	for _, ph := range order {
		fmt.Fprintf(&b, "; %s: %d fresh, %d failed", ph, phases[ph].fresh, phases[ph].failed)
	}
	t.Logf("round %d: reads through the old leader%s", round, b.String())
	s.results = nil
}

// burst starts n reads (alternating Get and read-only Txn) in the background; wait
// waits for them.
func (s *staleReads) burst(cli *chainfire.Client, key, phase string, n int, timeout time.Duration) (wait func()) {
	var wg sync.WaitGroup
	for i := range n {
		how := "get"
		if i%2 == 1 {
			how = "txn"
		}
		wg.Go(func() { s.read(cli, key, how, phase, timeout) })
	}
	return wg.Wait
}

// loop reads one at a time for d.
func (s *staleReads) loop(cli *chainfire.Client, key, phase string, d, timeout time.Duration) {
	for end, i := time.Now().Add(d), 0; time.Now().Before(end); i++ {
		how := "get"
		if i%2 == 1 {
			how = "txn"
		}
		s.read(cli, key, how, phase, timeout)
		time.Sleep(10 * time.Millisecond)
	}
}

// writeThrough writes key=val through cli and fails the test if it cannot.
func writeThrough(t *testing.T, cli *chainfire.Client, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for {
		resp, err := cli.Put(ctx, key, val)
		if err == nil {
			t.Logf("wrote %s=%s at revision %d", key, val, resp.Header.GetRevision())
			return
		}
		t.Logf("write %s=%s: %v (writing again)", key, val, err)
		if ctx.Err() != nil {
			t.Fatalf("write %s=%s through the majority: %v", key, val, err)
		}
		// An indeterminate outcome: write again (the value is the same).
		time.Sleep(50 * time.Millisecond)
	}
}

// TestChaosStaleReadPausedLeader: while the leader is paused (SIGSTOP), the others
// elect a new leader and a write goes through them; reads of that key are then sent to
// the paused old leader (they wait in its socket buffers) and it is resumed: having
// slept through the election, it must not answer from its old view. Every read must
// fail or return the new value, the queued ones and those sent just after SIGCONT.
func TestChaosStaleReadPausedLeader(t *testing.T) {
	e := newEnv(t, 3, chainfiretest.Options{})
	key := prefix + "stale"
	for round := range scaled(3, 10) {
		l := e.mustLeader()
		maj := e.client(time.Second, e.endpoints(e.except(l)...)...)
		old := e.client(2*time.Second, e.endpoints(l)...)
		before, after := fmt.Sprintf("old-%d", round), fmt.Sprintf("new-%d", round)
		writeThrough(t, maj, key, before)
		var s staleReads
		s.loop(old, key, "warm-up", 100*time.Millisecond, 2*time.Second)
		s.check(t, round, before, "")

		e.pause(l)
		writeThrough(t, maj, key, after)
		e.logf("wrote %s through the majority", after)
		queued := s.burst(old, key, "queued while paused", 8, 5*time.Second)
		time.Sleep(200 * time.Millisecond)
		e.resume(l)
		s.loop(old, key, "after SIGCONT", time.Second, 2*time.Second)
		queued()
		s.check(t, round, after, before)
		e.ready(l)
	}
}

// TestChaosStaleReadIsolatedLeader: the leader is cut off from the other members
// (the test still reaches it); the majority elects a new leader and takes a write.
// Reads through the old leader must fail while it is isolated — it cannot confirm its
// leadership — and after healing must return the new value; reads in flight across
// the heal too.
func TestChaosStaleReadIsolatedLeader(t *testing.T) {
	e := newEnv(t, 3, networkOptions(t))
	key := prefix + "stale"
	for round := range scaled(3, 10) {
		l := e.mustLeader()
		maj := e.client(time.Second, e.endpoints(e.except(l)...)...)
		old := e.client(2*time.Second, e.endpoints(l)...)
		before, after := fmt.Sprintf("old-%d", round), fmt.Sprintf("new-%d", round)
		writeThrough(t, maj, key, before)
		var s staleReads
		s.loop(old, key, "warm-up", 100*time.Millisecond, 2*time.Second)
		s.check(t, round, before, "")

		e.logf("isolate %s", e.c.Members[l].Name)
		e.c.Isolate(l)
		writeThrough(t, maj, key, after)
		e.logf("wrote %s through the majority", after)
		s.loop(old, key, "isolated", 1500*time.Millisecond, time.Second)
		// The minority refuses writes too.
		wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := old.Put(wctx, prefix+"minority", fmt.Sprintf("ghost-%d", round)); err == nil {
			t.Errorf("round %d: the isolated old leader acknowledged a write", round)
		}
		wcancel()
		inFlight := s.burst(old, key, "in flight across the heal", 8, 6*time.Second)
		time.Sleep(300 * time.Millisecond)
		e.healNetwork()
		s.loop(old, key, "after healing", time.Second, 2*time.Second)
		inFlight()
		s.mu.Lock()
		var isolatedOK int
		for _, r := range s.results {
			if r.phase == "isolated" && r.err == nil {
				isolatedOK++
			}
		}
		s.mu.Unlock()
		if isolatedOK > 0 {
			// Not stale as long as it is the new value (checked below), but an isolated
			// member cannot know it: worth a look.
			t.Logf("round %d: %d reads through the isolated old leader succeeded", round, isolatedOK)
		}
		s.check(t, round, after, before)
		e.ready(l)
	}
}
