package harness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
)

// Bounds of the port range FreePorts hands out. The range stops below the kernel's
// ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default), so that a port
// a test node listens on is never also picked as the source port of an outgoing
// connection while the node is down between a Kill and a Restart.
const (
	minPort          = 10000
	defaultEphemeral = 32768
)

// portAllocator hands out ports sequentially from a random starting point. Sequential
// allocation from a random base keeps two test binaries running side by side (go test
// runs packages in parallel) in disjoint windows of the range with high probability,
// which independent random picks would not.
//
// It is process-wide state on purpose: ports are a machine-wide resource, and two tests
// of the same binary must never be given the same port.
type portAllocator struct {
	mu     sync.Mutex
	lo, hi int          // candidate range [lo, hi)
	next   int          // next candidate; 0 until first use
	given  map[int]bool // ports already handed out by this process
}

var ports = &portAllocator{given: make(map[int]bool)}

// ErrNoFreePorts is returned by FreePorts when the range has no n ports left that can be
// bound on 127.0.0.1.
var ErrNoFreePorts = errors.New("harness: not enough free ports")

// FreePorts returns n distinct TCP ports on 127.0.0.1 that were free when it was called
// and that no earlier call in this process returned.
//
// All n ports are bound at once while they are chosen and released before FreePorts
// returns, so a port listened on by anything else (an etcd, a dev cluster) is never
// returned. Another process can still take a port between this call and the moment the
// child binds it; the window is short and the random base makes it unlikely. FreePorts is
// safe for concurrent use.
func FreePorts(n int) ([]int, error) {
	if n <= 0 {
		return nil, fmt.Errorf("harness: FreePorts(%d): n must be positive", n)
	}
	return ports.take(n)
}

func (a *portAllocator) take(n int) ([]int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.next == 0 {
		a.lo, a.hi = minPort, ephemeralLow()
		a.next = a.lo + rand.IntN(a.hi-a.lo)
	}
	var (
		out       []int
		listeners []net.Listener
	)
	defer func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}()
	for tried := 0; len(out) < n && tried < a.hi-a.lo; tried++ {
		p := a.next
		a.next++
		if a.next >= a.hi {
			a.next = a.lo
		}
		if a.given[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // in use by someone else
		}
		listeners = append(listeners, l)
		out = append(out, p)
	}
	if len(out) < n {
		return nil, fmt.Errorf("%w: wanted %d in [%d,%d), found %d", ErrNoFreePorts, n, a.lo, a.hi, len(out))
	}
	for _, p := range out {
		a.given[p] = true
	}
	return out, nil
}

// ephemeralLow returns the first port of the kernel's ephemeral range, or its default
// when /proc is unreadable or the range is too low to leave room below it.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return defaultEphemeral
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return defaultEphemeral
	}
	lo, err := strconv.Atoi(f[0])
	if err != nil || lo < minPort+1000 {
		return defaultEphemeral
	}
	return lo
}
