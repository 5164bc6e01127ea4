package harness_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
)

// reach reports, for every ordered pair of hosts, whether a packet from the first gets
// to the second: reach[from][to].
type reach [][]bool

func (r reach) String() string {
	var b strings.Builder
	for from := range r {
		for to := range r[from] {
			if from != to && !r[from][to] {
				fmt.Fprintf(&b, " %d->%d", from, to)
			}
		}
	}
	if b.Len() == 0 {
		return "nothing blocked"
	}
	return "blocked:" + b.String()
}

// expect builds the reach matrix of n hosts in which blocked(from, to) packets are lost.
func expect(n int, blocked func(from, to int) bool) reach {
	r := make(reach, n)
	for from := range n {
		r[from] = make([]bool, n)
		for to := range n {
			r[from][to] = from == to || !blocked(from, to)
		}
	}
	return r
}

// udpReach measures the reach matrix with one-way UDP datagrams: every host sends one
// (twice) to every other host, then each says which arrived. Tags of earlier rounds are
// told apart by the round number.
func udpReach(t *testing.T, ctx context.Context, nw *harness.Network, round int) reach {
	t.Helper()
	hosts := nw.Hosts()
	for from, h := range hosts {
		for to, o := range hosts {
			if from == to {
				continue
			}
			q := url.Values{"to": {fmt.Sprintf("%s:%d", o.IP, probeUDP)}, "msg": {fmt.Sprintf("r%d:%d>%d", round, from, to)}}
			for range 2 {
				if code, body, err := get(ctx, probeURL(h, "/send?"+q.Encode())); err != nil || code != 200 {
					t.Fatalf("host %d sending to host %d: %d %s %v", from, to, code, body, err)
				}
			}
		}
	}
	time.Sleep(300 * time.Millisecond) // a datagram on a veth takes microseconds
	got := expect(len(hosts), func(int, int) bool { return true })
	for to, o := range hosts {
		code, body, err := get(ctx, probeURL(o, "/received"))
		if err != nil || code != 200 {
			t.Fatalf("host %d received: %d %s %v", to, code, body, err)
		}
		for line := range strings.Lines(body) {
			var r, from, to2 int
			if _, err := fmt.Sscanf(strings.TrimSpace(line), "r%d:%d>%d", &r, &from, &to2); err == nil && r == round && to2 == to {
				got[from][to] = true
			}
		}
	}
	return got
}

// tcpReach measures, concurrently, whether each host can fetch from each other host over
// a new TCP connection, which needs packets both ways.
func tcpReach(t *testing.T, ctx context.Context, nw *harness.Network) reach {
	t.Helper()
	hosts := nw.Hosts()
	got := expect(len(hosts), func(int, int) bool { return false })
	var wg sync.WaitGroup
	var mu sync.Mutex
	for from, h := range hosts {
		for to, o := range hosts {
			if from == to {
				continue
			}
			wg.Go(func() {
				code, _, err := get(ctx, probeURL(h, "/fetch?url="+url.QueryEscape(probeURL(o, "/ping"))))
				mu.Lock()
				defer mu.Unlock()
				got[from][to] = err == nil && code == 200
			})
		}
	}
	wg.Wait()
	return got
}

// both is the TCP reach matrix implied by a one-way one.
func (r reach) both() reach {
	return expect(len(r), func(from, to int) bool { return !r[from][to] || !r[to][from] })
}

// checkRootReaches checks that the test process reaches every host.
func checkRootReaches(t *testing.T, ctx context.Context, nw *harness.Network) {
	t.Helper()
	for i, h := range nw.Hosts() {
		if code, _, err := get(ctx, probeURL(h, "/ping")); err != nil || code != 200 {
			t.Errorf("test process cannot reach host %d: %d %v", i, code, err)
		}
	}
}

// checkReach checks both the one-way (UDP) and the two-way (TCP) reach of the hosts.
func checkReach(t *testing.T, ctx context.Context, nw *harness.Network, round int, want reach) {
	t.Helper()
	if got := udpReach(t, ctx, nw, round); got.String() != want.String() {
		t.Errorf("UDP: %v, want %v", got, want)
	}
	if got, want := tcpReach(t, ctx, nw), want.both(); got.String() != want.String() {
		t.Errorf("TCP: %v, want %v", got, want)
	}
	checkRootReaches(t, ctx, nw)
}

// TestNetworkFaults applies each kind of fault to a three-host network and checks, from
// inside the hosts, which packets get through — one way with UDP, both ways with TCP —
// that the test process still reaches every host, and that Heal restores everything.
func TestNetworkFaults(t *testing.T) {
	t.Parallel()
	nw := harness.NewNetwork(t, 3)
	startProbes(t, nw)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	round := 0
	open := expect(3, func(int, int) bool { return false })
	checkReach(t, ctx, nw, round, open)

	tests := []struct {
		name    string
		fault   func() error
		blocked func(from, to int) bool
	}{
		{"partition 0|1,2", func() error { return nw.Partition([]int{0}, []int{1, 2}) },
			func(from, to int) bool { return (from == 0) != (to == 0) }},
		{"partition 0|1, 2 unlisted", func() error { return nw.Partition([]int{0}, []int{1}) },
			func(from, to int) bool { return from+to == 1 }},
		{"isolate 1", func() error { return nw.Isolate(1) },
			func(from, to int) bool { return from == 1 || to == 1 }},
		{"cut 0->1 one way", func() error { return nw.Cut(0, 1) },
			func(from, to int) bool { return from == 0 && to == 1 }},
		{"faults accumulate", func() error {
			return errors.Join(nw.Cut(2, 0), nw.Partition([]int{1}, []int{2}))
		}, func(from, to int) bool { return from == 2 && to == 0 || from+to == 3 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.fault(); err != nil {
				t.Fatal(err)
			}
			round++
			checkReach(t, ctx, nw, round, expect(3, tt.blocked))
			if err := nw.Heal(); err != nil {
				t.Fatal(err)
			}
			round++
			checkReach(t, ctx, nw, round, open)
		})
	}

	t.Run("invalid", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			err  error
			want error
		}{
			{"host in two groups", nw.Partition([]int{0}, []int{0, 1}), harness.ErrInvalidFault},
			{"cut to itself", nw.Cut(1, 1), harness.ErrInvalidFault},
			{"partition unknown host", nw.Partition([]int{0}, []int{3}), harness.ErrNoSuchHost},
			{"isolate unknown host", nw.Isolate(-1), harness.ErrNoSuchHost},
			{"cut unknown host", nw.Cut(0, 7), harness.ErrNoSuchHost},
		} {
			if !errors.Is(tc.err, tc.want) {
				t.Errorf("%s: %v, want %v", tc.name, tc.err, tc.want)
			}
		}
		round++
		checkReach(t, ctx, nw, round, open) // rejected faults changed nothing
	})
}

// TestNetworkCutsEstablishedConnections: a partition stops the packets of a TCP
// connection opened before it (nothing is exempted by connection tracking), and after
// Heal the same connection resumes.
func TestNetworkCutsEstablishedConnections(t *testing.T) {
	t.Parallel()
	nw := harness.NewNetwork(t, 2)
	startProbes(t, nw)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	h0, h1 := nw.Host(0), nw.Host(1)
	count := func() int {
		t.Helper()
		_, body, err := get(ctx, probeURL(h1, "/count"))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(body)
		return n
	}
	waitGrowth := func(what string) {
		t.Helper()
		start := count()
		deadline := time.Now().Add(10 * time.Second)
		for count() < start+5 {
			if time.Now().After(deadline) {
				t.Fatalf("%s: stream from host 0 to host 1 stuck at %d lines", what, count())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if _, _, err := get(ctx, probeURL(h1, "/follow?url="+url.QueryEscape(probeURL(h0, "/stream")))); err != nil {
		t.Fatal(err)
	}
	waitGrowth("before the partition")

	if err := nw.Partition([]int{0}, []int{1}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // lines already in flight or buffered drain
	stalled := count()
	time.Sleep(time.Second)
	if n := count(); n != stalled {
		t.Fatalf("the established stream delivered %d lines during the partition", n-stalled)
	}
	checkRootReaches(t, ctx, nw)

	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	waitGrowth("after Heal") // the same connection: /follow opens only one
}

// TestNetworkNetem: total loss on a host's link cuts it from everyone, the test process
// included, and ClearNetem restores it; half loss loses about half the packets; delay
// slows round trips by twice the delay (with tc netem, or the user-space queue on
// kernels without it), and Heal removes it.
func TestNetworkNetem(t *testing.T) {
	t.Parallel()
	nw := harness.NewNetwork(t, 2)
	startProbes(t, nw)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	h0, h1 := nw.Host(0), nw.Host(1)

	if err := nw.Netem(0, 0, 1); err != nil {
		t.Fatal(err)
	}
	short, cancelShort := context.WithTimeout(ctx, time.Second)
	if code, _, err := get(short, probeURL(h0, "/ping")); err == nil {
		t.Errorf("host 0 answered the test process (%d) with 100%% loss", code)
	}
	cancelShort()
	if code, body, err := get(ctx, probeURL(h1, "/fetch?url="+url.QueryEscape(probeURL(h0, "/ping")))); err != nil || code != http.StatusBadGateway {
		t.Errorf("host 1 fetching from host 0 with 100%% loss: %d %q %v", code, body, err)
	}
	if err := nw.ClearNetem(0); err != nil {
		t.Fatal(err)
	}
	checkReach(t, ctx, nw, 1, expect(2, func(int, int) bool { return false }))

	// Half the datagrams from host 1 to host 0 get lost: the bounds are 8 standard
	// deviations of a binomial(200, 0.5) wide.
	if err := nw.Netem(0, 0, 0.5); err != nil {
		t.Fatal(err)
	}
	const sent = 200
	for i := range sent {
		q := url.Values{"to": {fmt.Sprintf("%s:%d", h0.IP, probeUDP)}, "msg": {fmt.Sprintf("loss%d", i)}}
		if code, body, err := get(ctx, probeURL(h1, "/send?"+q.Encode())); err != nil || code != 200 {
			t.Fatalf("host 1 sending: %d %s %v", code, body, err)
		}
	}
	if err := nw.ClearNetem(0); err != nil { // or /received might be lost too
		t.Fatal(err)
	}
	_, body, err := get(ctx, probeURL(h0, "/received"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(body, "loss"); n < 40 || n > 160 {
		t.Errorf("host 0 received %d of %d datagrams with 50%% loss", n, sent)
	}

	// Delay: dialing takes one round trip, SYN out and SYN-ACK back, each delayed once.
	dial := func() time.Duration {
		t.Helper()
		best := time.Hour
		for range 3 {
			start := time.Now()
			c, err := net.DialTimeout("tcp", fmt.Sprintf("%s:%d", h0.IP, probeHTTP), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
			best = min(best, time.Since(start))
		}
		return best
	}
	const delay = 100 * time.Millisecond
	if err := nw.Netem(0, delay, 0); err != nil {
		t.Fatal(err) // ErrDelayUnsupported names what is missing
	}
	if rtt := dial(); rtt < 2*delay-5*time.Millisecond {
		t.Errorf("round trip to a host delayed %v each way took %v", delay, rtt)
	}
	checkReach(t, ctx, nw, 2, expect(2, func(int, int) bool { return false }))
	if err := nw.Netem(0, delay/2, 0); err != nil { // a new delay replaces the old
		t.Fatal(err)
	}
	if rtt := dial(); rtt < delay-5*time.Millisecond || rtt >= 2*delay {
		t.Errorf("round trip to a host delayed %v each way took %v", delay/2, rtt)
	}
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	if rtt := dial(); rtt >= delay {
		t.Errorf("round trip after Heal took %v", rtt)
	}

	for _, tc := range []struct {
		name  string
		delay time.Duration
		loss  float64
	}{{"negative delay", -time.Second, 0}, {"loss above 1", 0, 1.5}, {"negative loss", 0, -0.1}} {
		if err := nw.Netem(0, tc.delay, tc.loss); !errors.Is(err, harness.ErrInvalidFault) {
			t.Errorf("%s: %v, want ErrInvalidFault", tc.name, err)
		}
	}
	if err := nw.Netem(5, 0, 0.5); !errors.Is(err, harness.ErrNoSuchHost) {
		t.Errorf("unknown host: %v, want ErrNoSuchHost", err)
	}
	checkRootReaches(t, ctx, nw)
}

// TestNetworkAddHost: a host added at runtime is reachable at once, and faults in force
// apply to it: it cannot reach a host isolated before it came.
func TestNetworkAddHost(t *testing.T) {
	t.Parallel()
	nw := harness.NewNetwork(t, 1)
	if err := nw.Isolate(0); err != nil {
		t.Fatal(err)
	}
	if i := nw.AddHost(); i != 1 || nw.Len() != 2 {
		t.Fatalf("AddHost = %d, Len = %d; want 1, 2", i, nw.Len())
	}
	h0, h1 := nw.Host(0), nw.Host(1)
	if h0.Name == h1.Name || h0.IP == h1.IP || !strings.HasSuffix(h1.IP, ".2") {
		t.Fatalf("hosts %+v, %+v", h0, h1)
	}
	startProbes(t, nw)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	checkReach(t, ctx, nw, 0, expect(2, func(int, int) bool { return true }))
	if err := nw.Heal(); err != nil {
		t.Fatal(err)
	}
	checkReach(t, ctx, nw, 1, expect(2, func(int, int) bool { return false }))
	// The hosts reach the test process at RootIP, whatever the faults.
	l, err := net.Listen("tcp", nw.RootIP()+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "root") })}
	go srv.Serve(l)
	defer srv.Close()
	if err := nw.Isolate(1); err != nil {
		t.Fatal(err)
	}
	fetch := probeURL(h1, "/fetch?url="+url.QueryEscape("http://"+l.Addr().String()+"/"))
	if code, body, err := get(ctx, fetch); err != nil || code != 200 || body != "root" {
		t.Errorf("isolated host 1 fetching from the test process: %d %q %v", code, body, err)
	}
}

// TestNetworkCleanup checks that a network leaves nothing behind — no namespace, no link
// in the root namespace — when its test passes, fails or panics, and when its test binary
// is killed (the next NewNetwork on the machine removes the leftovers).
func TestNetworkCleanup(t *testing.T) {
	t.Parallel()
	t.Run("pass", func(t *testing.T) {
		var names []string
		t.Run("owner", func(t *testing.T) {
			nw := harness.NewNetwork(t, 2)
			names = networkNames(nw.Hosts()[0].Name, nw.Len())
			checkPresent(t, names, true)
		})
		checkPresent(t, names, false)
	})
	for _, mode := range []string{"fail", "panic"} {
		t.Run(mode, func(t *testing.T) {
			out, err := helperCommand(t, mode).CombinedOutput()
			if err == nil {
				t.Fatalf("helper %s passed:\n%s", mode, out)
			}
			names := parseNetworkLine(t, string(out))
			checkPresent(t, names, false)
		})
	}
	t.Run("killed", func(t *testing.T) {
		cmd := helperCommand(t, "hang")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		var line string
		for sc := bufio.NewScanner(stdout); sc.Scan(); {
			if strings.HasPrefix(sc.Text(), "NETWORK ") {
				line = sc.Text()
				break
			}
		}
		names := parseNetworkLine(t, line)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		checkPresent(t, names, true) // the helper had no chance to clean up
		harness.NewNetwork(t, 0)     // sweeps leftovers of dead test binaries
		checkPresent(t, names, false)
	})
}

// helperCommand runs this test binary as a TestNetnsHelperProcess in mode.
func helperCommand(t *testing.T, mode string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(t.Context(), exe, "-test.run=^TestNetnsHelperProcess$", "-test.v")
	cmd.Env = append(os.Environ(), netHelperEnv+"="+mode, "GORACE=atexit_sleep_ms=0")
	return cmd
}

// parseNetworkLine finds the helper's "NETWORK <host namespace>..." line.
func parseNetworkLine(t *testing.T, out string) []string {
	t.Helper()
	for line := range strings.Lines(out) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "NETWORK "); ok {
			hosts := strings.Fields(rest)
			return networkNames(hosts[0], len(hosts))
		}
	}
	t.Fatalf("no NETWORK line in helper output:\n%s", out)
	return nil
}

// networkNames returns the objects of the network whose first host namespace is host0
// ("pch12-h0"): the root link pch12, namespaces pch12-hub and pch12-h0..h<n-1>.
func networkNames(host0 string, n int) []string {
	base, _, _ := strings.Cut(host0, "-")
	names := []string{base, base + "-hub"}
	for i := range n {
		names = append(names, fmt.Sprintf("%s-h%d", base, i))
	}
	return names
}

// checkPresent checks that every named object exists (want) or that none does: the first
// name is a link of the root namespace, the others namespaces.
func checkPresent(t *testing.T, names []string, want bool) {
	t.Helper()
	_, err := net.InterfaceByName(names[0])
	if got := err == nil; got != want {
		t.Errorf("link %s present = %v, want %v", names[0], got, want)
	}
	for _, ns := range names[1:] {
		_, err := os.Stat("/run/netns/" + ns)
		if got := err == nil; got != want {
			t.Errorf("namespace %s present = %v, want %v", ns, got, want)
		}
	}
}
