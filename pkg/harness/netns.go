package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Errors returned by Network methods; wrapped with context, test them with errors.Is.
var (
	// ErrNoSuchHost means a host index is out of range.
	ErrNoSuchHost = errors.New("harness: no such host")
	// ErrInvalidFault means a fault was described inconsistently: a host in two groups of
	// a partition, a cut from a host to itself, a negative delay, a loss outside [0, 1].
	ErrInvalidFault = errors.New("harness: invalid network fault")
	// ErrNetworkClosed means the Network's test has ended and its namespaces are gone.
	ErrNetworkClosed = errors.New("harness: network closed")
	// ErrNoSubnet means every /24 of 10.77.0.0/16 is leased by a running test or routed
	// by something else on the machine.
	ErrNoSubnet = errors.New("harness: no free subnet in " + netSupernet)
	// ErrDelayUnsupported means Netem cannot delay packets: the kernel has no netem
	// queueing discipline (CONFIG_NET_SCH_NETEM) and the user-space fallback (iptables,
	// NFQUEUE) failed too. Loss needs neither.
	ErrDelayUnsupported = errors.New("harness: cannot delay packets")
)

// Names and addresses of a Network. Subnet k (0..255) of netSupernet is 10.77.k.0/24; its
// hosts are 10.77.k.1, 10.77.k.2, ... and the test process is 10.77.k.254.
const (
	netSupernet = "10.77.0.0/16"
	netPrefix   = "pch" // PlasmaCloud harness: root link pch<k>, namespaces pch<k>-hub, pch<k>-h<i>
	netTable    = "pch_harness"
	netRootHost = 254
	// MaxHosts is the largest number of hosts one Network can hold.
	MaxHosts = 253
	// hostIf is the name of a host's interface inside its namespace.
	hostIf = "eth0"
	// cmdTimeout bounds every ip/nft/tc command, which normally takes milliseconds.
	cmdTimeout = 30 * time.Second
)

// Host is one machine of a Network: a network namespace with one interface (eth0) on the
// network's subnet (no IPv6 address on it) and lo, and no default route.
type Host struct {
	// Name is the network namespace, as `ip netns list` shows it (e.g. "pch12-h0").
	Name string
	// IP is the host's IPv4 address (e.g. "10.77.12.1"), on which its processes listen
	// and by which the test process and the other hosts reach it.
	IP string
}

// Network is a private IPv4 network of hosts for one test, with faults that can be
// injected between them: partitions, isolation, one-way cuts, packet loss and delay.
//
// Its topology is a star. A hub namespace holds a Linux bridge; every host is a network
// namespace joined to the bridge by a veth pair; one more veth pair joins the bridge to
// the root namespace, where the test process runs, so the test reaches every host (and
// every host reaches the test process at RootIP). Nothing is routed beyond the subnet.
//
// Faults are nftables rules in a table (ip pch_harness) of each host's namespace that
// drop packets on arrival by source address, so they act on established TCP connections
// too, and the sender sees silence, as on a real partition, not an error. Cuts never
// involve the test process: it keeps reaching every host whatever is cut, so a test can
// always observe and drive its processes (Netem alone degrades a host's whole link,
// the test's traffic included). Faults accumulate until Heal.
//
// All methods are safe for concurrent use; the fault methods serialize and each returns
// once its rules are installed in every namespace. A Network belongs to the test it was
// created with and is removed when that test ends.
type Network struct {
	t           testing.TB
	ip, nft, tc string // absolute paths of the tools
	lease       *subnetLease
	hub         string // hub namespace

	mu       sync.Mutex
	closed   bool
	hosts    []Host
	cuts     map[[2]int]bool // {from, to}: packets from host from to host to are dropped
	isolated map[int]bool    // hosts cut from every other host, including later ones
	loss     map[int]float64 // per host, probability of losing a packet on its link
	delay    map[int]time.Duration
	rendered map[string]string // namespace -> last nft script applied, to skip no-ops

	queues          map[int]*delayQueue // hosts delayed in user space
	noNetem         bool                // tc netem failed: the kernel has none
	forceQueueDelay bool                // tests: use the user-space delay even with netem
	delayChain      bool                // the hub's iptables chain exists
}

// NewNetwork creates a network of n hosts (n may be 0; see AddHost) for the test t and
// returns it once every host is up and reachable from the test process.
//
// It calls RequireRoot and RequireCommand for ip, nft and tc, so a machine without them
// fails the test with the reason. The network takes a /24 of 10.77.0.0/16 that no other
// test on the machine holds (see the package documentation), and it is removed — every
// namespace, veth, bridge and nftables table — in t.Cleanup, also when the test fails or
// panics. Processes run in its hosts must belong to the same test or to a subtest, so
// that they are killed before the namespaces go (cleanups run last-in first-out): create
// the Network before its processes. NewNetwork fails the test on any error, so it must be
// called from the test's goroutine.
func NewNetwork(t testing.TB, n int) *Network {
	t.Helper()
	RequireRoot(t)
	nw := &Network{
		t:        t,
		ip:       RequireCommand(t, "ip"),
		nft:      RequireCommand(t, "nft"),
		tc:       RequireCommand(t, "tc"),
		cuts:     make(map[[2]int]bool),
		isolated: make(map[int]bool),
		loss:     make(map[int]float64),
		delay:    make(map[int]time.Duration),
		rendered: make(map[string]string),
		queues:   make(map[int]*delayQueue),
	}
	if n < 0 || n > MaxHosts {
		t.Fatalf("harness: NewNetwork(%d): a network holds 0 to %d hosts", n, MaxHosts)
	}
	// Leftovers of test binaries that died without cleaning up (SIGKILL, go test's
	// -timeout) are removed here, by whichever test next creates a network.
	sweepStaleNetworks(nw.ip)
	lease, err := leaseSubnet(nw.ip)
	if err != nil {
		t.Fatal(err)
	}
	nw.lease = lease
	nw.hub = lease.name("hub")
	t.Cleanup(nw.cleanup) // before creating anything, so a half-built network goes too
	if err := nw.createHub(); err != nil {
		t.Fatal(err)
	}
	for range n {
		nw.AddHost()
	}
	return nw
}

// createHub creates the hub namespace with its bridge, and the veth pair from the root
// namespace (pch<k>, holding RootIP) to the bridge.
func (nw *Network) createHub() error {
	root := nw.lease.rootLink()
	steps := []struct {
		stdin string
		argv  []string
	}{
		{"", []string{nw.ip, "netns", "add", nw.hub}},
		{"", []string{nw.ip, "link", "add", root, "type", "veth", "peer", "name", "uplink", "netns", nw.hub}},
		{lines(
			"link set lo up",
			"link add br0 type bridge",
			"link set br0 addrgenmode none",
			"link set br0 up",
			"link set uplink addrgenmode none",
			"link set uplink master br0 up",
		), []string{nw.ip, "-n", nw.hub, "-batch", "-"}},
		{lines(
			"add table bridge "+netTable,
			"add chain bridge "+netTable+" loss { type filter hook prerouting priority -300; policy accept; }",
		), []string{nw.ip, "netns", "exec", nw.hub, nw.nft, "-f", "-"}},
		{lines(
			"link set "+root+" addrgenmode none",
			fmt.Sprintf("addr add %s/24 dev %s", nw.RootIP(), root),
			"link set "+root+" up",
		), []string{nw.ip, "-batch", "-"}},
	}
	for _, s := range steps {
		if err := runCmd(s.stdin, s.argv...); err != nil {
			return fmt.Errorf("harness: creating network %s: %w", nw.lease.name(""), err)
		}
	}
	return nil
}

// AddHost adds one more host to the network, such as the machine of a member added to a
// cluster at runtime, and returns its index. Faults in force apply to it as their
// descriptions say: a host isolated before stays cut from the new one, a partition's
// groups do not include it. AddHost fails the test on error, so it must be called from
// the test's goroutine.
func (nw *Network) AddHost() int {
	nw.t.Helper()
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.closed {
		nw.t.Fatal(ErrNetworkClosed)
	}
	i := len(nw.hosts)
	if i >= MaxHosts {
		nw.t.Fatalf("harness: network %s is full (%d hosts)", nw.lease.name(""), MaxHosts)
	}
	h := Host{Name: nw.lease.name(fmt.Sprintf("h%d", i)), IP: nw.lease.ip(i + 1)}
	port := fmt.Sprintf("h%d", i)
	steps := []struct {
		stdin string
		argv  []string
	}{
		{"", []string{nw.ip, "netns", "add", h.Name}},
		{"", []string{nw.ip, "-n", nw.hub, "link", "add", port, "type", "veth", "peer", "name", hostIf, "netns", h.Name}},
		{lines(
			"link set "+port+" addrgenmode none",
			"link set "+port+" master br0 up",
		), []string{nw.ip, "-n", nw.hub, "-batch", "-"}},
		{lines(
			"link set lo up",
			"link set "+hostIf+" addrgenmode none",
			fmt.Sprintf("addr add %s/24 dev %s", h.IP, hostIf),
			"link set "+hostIf+" up",
		), []string{nw.ip, "-n", h.Name, "-batch", "-"}},
		{lines(
			"add table ip "+netTable,
			"add chain ip "+netTable+" ingress { type filter hook prerouting priority raw; policy accept; }",
		), []string{nw.ip, "netns", "exec", h.Name, nw.nft, "-f", "-"}},
	}
	for _, s := range steps {
		if err := runCmd(s.stdin, s.argv...); err != nil {
			nw.t.Fatalf("harness: adding host %d to network %s: %v", i, nw.lease.name(""), err)
		}
	}
	nw.hosts = append(nw.hosts, h)
	if err := nw.applyLocked(); err != nil {
		nw.t.Fatalf("harness: adding host %d to network %s: %v", i, nw.lease.name(""), err)
	}
	return i
}

// Len returns the number of hosts.
func (nw *Network) Len() int {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return len(nw.hosts)
}

// Host returns host i; it panics if i is out of range.
func (nw *Network) Host(i int) Host {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return nw.hosts[i]
}

// Hosts returns every host in index order. The slice is a copy.
func (nw *Network) Hosts() []Host {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	return append([]Host(nil), nw.hosts...)
}

// RootIP returns the test process's address on the network, e.g. "10.77.12.254": a
// server the test runs itself, listening there (or on all addresses), is reachable from
// every host, whatever the faults.
func (nw *Network) RootIP() string { return nw.lease.ip(netRootHost) }

// Subnet returns the network's subnet in CIDR notation, e.g. "10.77.12.0/24".
func (nw *Network) Subnet() string { return nw.lease.ip(0) + "/24" }

// Wrap returns a ProcessConfig.Wrap hook that runs the process inside host i, through
// `ip netns exec NAME`, which execs in place: the pid, the signals and the log are the
// wrapped program's, so Kill, Stop, Cont, Terminate and Restart act on it as usual. It
// panics if i is out of range.
func (nw *Network) Wrap(i int) func(argv []string) []string {
	name := nw.Host(i).Name
	ip := nw.ip
	return func(argv []string) []string {
		return append([]string{ip, "netns", "exec", name}, argv...)
	}
}

// Command returns a command that runs name with args inside host i, for one-off
// programs (a probe, a client) the test runs and waits for itself; ctx kills it as
// exec.CommandContext does. It panics if i is out of range.
func (nw *Network) Command(ctx context.Context, i int, name string, args ...string) *exec.Cmd {
	argv := nw.Wrap(i)(append([]string{name}, args...))
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// String names the network and its subnet, for messages.
func (nw *Network) String() string {
	return fmt.Sprintf("network %s (%s)", nw.lease.name(""), nw.Subnet())
}

// cleanup runs when the owning test ends: it removes every namespace and link of the
// network, checks that none is left, and gives the subnet back. When the test failed it
// logs the faults that were in force, which often explain the failure.
func (nw *Network) cleanup() {
	nw.mu.Lock()
	nw.closed = true
	faults := nw.describeLocked()
	queues := nw.queues
	nw.queues = nil
	nw.mu.Unlock()
	if nw.t.Failed() && faults != "" {
		nw.t.Logf("harness: %s at the end of the test: %s", nw, faults)
	}
	var errs []error
	for _, q := range queues { // their sockets would keep the hub namespace alive
		errs = append(errs, q.close())
	}
	errs = append(errs, removeSubnet(nw.ip, nw.lease.k))
	nw.lease.release()
	if err := errors.Join(errs...); err != nil {
		nw.t.Errorf("harness: cleanup of %s: %v", nw, err)
	}
}

// lookCommand finds the program name as RequireCommand does, returning an error
// instead of failing the test.
func lookCommand(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("harness: %s not found in PATH or /usr/sbin, /sbin; install the test dependencies with scripts/deps.sh", name)
}

// runCmd runs argv with stdin and returns an error carrying its output when it fails.
func runCmd(stdin string, argv ...string) error {
	_, err := outputCmd(stdin, argv...)
	return err
}

// outputCmd runs argv with stdin and returns its standard output; the error carries
// the command line and its standard error.
func outputCmd(stdin string, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if stdin != "" {
			msg += "\ninput:\n" + stdin
		}
		return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return stdout.String(), nil
}

// lines joins script lines, each terminated by a newline.
func lines(l ...string) string { return strings.Join(l, "\n") + "\n" }
