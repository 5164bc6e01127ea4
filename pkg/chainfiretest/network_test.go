package chainfiretest_test

import (
	"fmt"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
)

// TestNetworkIsolateLeader runs a three-member cluster in network namespaces, isolates
// the leader, and checks that the other two elect a new leader while the isolated one
// steps down, and that after Heal the old leader rejoins as a follower.
func TestNetworkIsolateLeader(t *testing.T) {
	t.Parallel()
	c := chainfiretest.Start(t, 3, chainfiretest.Options{Network: true})
	for i, m := range c.Members {
		if want := fmt.Sprintf("http://%s:2379", c.Net.Host(i).IP); m.ClientURL != want {
			t.Fatalf("member %d ClientURL %s, want %s", i, m.ClientURL, want)
		}
	}
	old := c.MustLeader()
	var rest []int
	for i := range c.Members {
		if i != old {
			rest = append(rest, i)
		}
	}

	start := time.Now()
	c.Isolate(old)
	l := c.LeaderAmong(15*time.Second, rest...)
	if l < 0 {
		t.Fatalf("members %v elected no leader with member %d isolated", rest, old)
	}
	t.Logf("leader %s isolated; %s leads after %v", c.Members[old].Name, c.Members[l].Name, time.Since(start).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "the isolated leader steps down", func() bool {
		return c.Metric(old, "chainfire_server_is_leader") == 0
	})

	c.Heal()
	start = time.Now()
	c.WaitReady() // the old leader is caught up and knows the new leader
	waitFor(t, 10*time.Second, "one leader, not the old one", func() bool {
		leaders := 0
		for i := range c.Members {
			if c.Metric(i, "chainfire_server_is_leader") == 1 {
				leaders++
			}
		}
		return leaders == 1 && c.Metric(old, "chainfire_server_is_leader") == 0
	})
	t.Logf("healed; all members ready with one leader after %v", time.Since(start).Round(time.Millisecond))
}

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
