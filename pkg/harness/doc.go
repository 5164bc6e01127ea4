// Package harness runs real PlasmaCloud binaries as child processes of a Go test and
// injects process faults into them: SIGKILL, SIGSTOP/SIGCONT, SIGTERM with a deadline,
// restart on the same arguments (and therefore the same data directory); and network
// faults between them, each process on a host of its own (see Network faults).
//
// It is the third and fourth tier of the testing pyramid in docs: the suite's services are
// started exactly as an operator starts them, on loopback ports from [FreePorts], and a
// test talks to them over the network like any client.
//
// A typical test:
//
//	bin := harness.Binary(t, "plasmacloud.dev/chainfire/cmd/chainfire")
//	ports, err := harness.FreePorts(2)
//	if err != nil {
//		t.Fatal(err)
//	}
//	c := harness.NewCluster(t)
//	c.Add(harness.ProcessConfig{
//		Name:     "cf1",
//		Path:     bin,
//		Args:     []string{"server", "--name", "cf1", "--data-dir", t.TempDir(), ...},
//		ReadyURL: fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[0]),
//	})
//	if err := c.Start(); err != nil {
//		t.Fatal(err)
//	}
//	if err := c.WaitReady(ctx); err != nil {
//		t.Fatal(err)
//	}
//	c.Proc(0).Kill() // SIGKILL, then Restart() on the same data directory
//
// # Ownership and cleanup
//
// Every [Process] belongs to the testing.TB it was created with. When that test ends the
// harness kills the process and every process in its process group, and, if the test
// failed, prints the last lines of each process's log (stdout and stderr interleaved) to
// the test output; when PLASMA_TEST_LOG_DIR is set, the full logs are also copied there.
//
// # Binaries
//
// [Binary] returns $PLASMA_BIN_DIR/<name> when that variable is set (`make test` sets it
// after `make build`), and otherwise builds the command from the workspace once per test
// binary with [Build].
//
// # Network faults
//
// [NewNetwork] gives a test a private IPv4 network of hosts, each a network namespace,
// and [ProcessConfig.Wrap] runs a process inside one ([Network.Wrap] returns the hook,
// `ip netns exec NAME`, which execs in place and keeps the pid), so the same Process
// methods kill, pause and restart it. Processes listen on their host's IP with fixed
// ports — every host has its own port space — and the test process reaches all of them
// directly, from the root namespace, whatever the faults:
//
//	nw := harness.NewNetwork(t, 3) // before the processes: cleanups run in reverse
//	for i, h := range nw.Hosts() {
//		c.Add(harness.ProcessConfig{
//			Name:     fmt.Sprintf("cf%d", i+1),
//			Path:     bin,
//			Args:     []string{"server", "--listen-client-urls", "http://" + h.IP + ":2379", ...},
//			ReadyURL: "http://" + h.IP + ":2379/readyz",
//			Wrap:     nw.Wrap(i),
//		})
//	}
//	...
//	nw.Partition([]int{0}, []int{1, 2}) // or Isolate(0), Cut(0, 1), Netem(0, delay, loss)
//	...
//	nw.Heal()
//
// Layout. Network k owns the subnet 10.77.k.0/24 (k in 0..255) and these objects, all
// named after it: namespace pch<k>-hub holding a bridge br0; namespaces pch<k>-h<i>, host
// i, each with eth0 at 10.77.k.<i+1>/24 (a veth whose other end, h<i>, is a port of
// br0); and the link pch<k> of the root namespace, at 10.77.k.254/24 ([Network.RootIP]),
// whose other end is br0's port uplink. Hosts have no default route (and eth0 no IPv6
// address), so nothing they send leaves the subnet. The bridge is in a namespace of its
// own rather than in the root namespace because bridged packets traverse the root
// namespace's iptables FORWARD chain when br_netfilter is loaded, and Docker sets that
// chain's policy to drop; the root namespace only gains one interface and one on-link
// route.
//
// Allocation. The subnet, and with it every name, is leased through an exclusive flock
// on /run/plasmacloud-harness/net-<k>.lock, tried from a random k onwards, so tests of
// one binary (t.Parallel) and of parallel binaries (go test -p N) never share one; the
// lock files stay (at most 256 empty files), the locks go with their holders. A subnet
// that anything else on the machine routes (a route to an address of 10.77.k.0/24 or to
// a prefix of at least /16 around it) is skipped.
//
// Cleanup. The network is removed in t.Cleanup — after the test's processes, when it
// was created before them — including when the test fails or panics; cleanup checks that
// no namespace or link is left and fails the test otherwise. The kernel releases the
// lease of a test binary that dies without cleaning up (SIGKILL, go test -timeout), and
// the next NewNetwork on the machine deletes what it left. `ip netns list | grep pch`
// and `ip link | grep pch` show what exists.
//
// Faults are nftables rules in a table `ip pch_harness` in each host's namespace, at the
// prerouting hook, that drop packets on arrival by source address: senders see silence
// as on a real partition, never an error, and established TCP connections are cut too
// (and resume on their next retransmission after Heal). [Network.Partition],
// [Network.Isolate] and [Network.Cut] accumulate; [Network.Heal] removes everything at
// once, atomically per namespace. ARP is never dropped, so healing is immediate.
// [Network.Netem] adds loss (nftables numgen rules on both ends of a host's veth) and
// delay (tc netem qdiscs on both ends; on kernels without CONFIG_NET_SCH_NETEM, iptables
// NFQUEUE rules in the hub and goroutines of the test process that hold each packet).
// IPv4 only; the faults never touch the test process's traffic, except for a host's
// Netem, which degrades the whole link.
//
// Such tests need root: NewNetwork calls [RequireRoot], and [RequireCommand] for ip, nft
// and tc; delay without netem needs iptables too (packages iproute2, nftables, iptables,
// installed by scripts/deps.sh).
//
// The package imports nothing from PlasmaCloud's services, so any module may use it;
// a test enforces that.
package harness
