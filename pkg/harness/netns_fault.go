package harness

import (
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// delayChain is the iptables chain (mangle table, hub namespace) of the rules feeding
// delay queues.
const delayChain = "pch-delay"

// lossScale is the resolution of packet loss: a probability is applied as
// `numgen random mod lossScale < p*lossScale`.
const lossScale = 1_000_000

// Partition splits the network: packets between hosts in different groups are dropped,
// both ways. Hosts in no group keep all their links, and hosts in one group keep theirs
// with each other. For a majority/minority split of five hosts:
//
//	nw.Partition([]int{0, 1, 2}, []int{3, 4})
//
// The partition adds to the faults in force; Heal removes all of them. It returns an
// error wrapping ErrNoSuchHost for an index out of range and ErrInvalidFault when a host
// is in two groups; then nothing changes.
func (nw *Network) Partition(groups ...[]int) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	group := make(map[int]int)
	for g, hosts := range groups {
		for _, h := range hosts {
			if err := nw.checkHostLocked(h); err != nil {
				return err
			}
			if prev, ok := group[h]; ok && prev != g {
				return fmt.Errorf("%w: host %d is in groups %d and %d of a partition", ErrInvalidFault, h, prev, g)
			}
			group[h] = g
		}
	}
	for a, ga := range group {
		for b, gb := range group {
			if ga != gb {
				nw.cuts[[2]int{a, b}] = true
			}
		}
	}
	return nw.applyLocked()
}

// Isolate cuts host i off from every other host, both ways, including hosts added later;
// the test process still reaches it. It adds to the faults in force; Heal removes them.
// It returns an error wrapping ErrNoSuchHost for an index out of range.
func (nw *Network) Isolate(i int) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if err := nw.checkHostLocked(i); err != nil {
		return err
	}
	nw.isolated[i] = true
	return nw.applyLocked()
}

// Cut drops the packets host from sends to host to, one way: packets from to to from
// still flow (a UDP datagram gets through; a TCP connection, which needs both ways, does
// not). Cut(a, b) and Cut(b, a) together are Partition([]int{a}, []int{b}). It adds to
// the faults in force; Heal removes them. It returns an error wrapping ErrNoSuchHost for
// an index out of range and ErrInvalidFault when from == to.
func (nw *Network) Cut(from, to int) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if err := nw.checkHostLocked(from); err != nil {
		return err
	}
	if err := nw.checkHostLocked(to); err != nil {
		return err
	}
	if from == to {
		return fmt.Errorf("%w: Cut(%d, %d): a host cannot be cut from itself", ErrInvalidFault, from, to)
	}
	nw.cuts[[2]int{from, to}] = true
	return nw.applyLocked()
}

// Heal removes every fault: cuts, partitions, isolation, and the loss and delay of
// Netem. Packets flow again as soon as it returns; TCP connections that survived the
// fault resume on their next retransmission. It returns the errors of the hosts it could
// not heal.
func (nw *Network) Heal() error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.closed {
		return ErrNetworkClosed
	}
	clear(nw.cuts)
	clear(nw.isolated)
	clear(nw.loss)
	var errs []error
	for i := range nw.delay {
		errs = append(errs, nw.setDelayLocked(i, 0))
	}
	errs = append(errs, nw.applyLocked())
	return errors.Join(errs...)
}

// Netem degrades host i's link, both ways, from the next packet on: each packet to or
// from the host (the test process's included) is lost with probability loss, in [0, 1],
// and the others are delayed by delay, so a round trip takes 2*delay longer. A later call
// replaces the host's settings; ClearNetem or Heal remove them, letting delayed packets
// go at once.
//
// Loss is an nftables rule (numgen random) on each end of the host's veth, so it needs
// nothing but nftables. It drops IPv4 packets only, never ARP, so that no neighbor cache
// is left in a failed state that would outlast the fault: the link is whole again as
// soon as ClearNetem or Heal returns.
//
// Delay is a tc netem queueing discipline on each end of the veth. On kernels built
// without netem (CONFIG_NET_SCH_NETEM) it falls back to holding the packets in user space
// (iptables NFQUEUE rules in the hub feeding goroutines of the test process), which keeps
// their order but adds the test process's scheduling latency, milliseconds on a busy
// machine, to the delay. When neither works a non-zero delay returns an error wrapping
// ErrDelayUnsupported. Invalid arguments return ErrInvalidFault, a bad index
// ErrNoSuchHost.
func (nw *Network) Netem(i int, delay time.Duration, loss float64) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if err := nw.checkHostLocked(i); err != nil {
		return err
	}
	if delay < 0 || !(loss >= 0 && loss <= 1) {
		return fmt.Errorf("%w: Netem(%d, %v, %v): want delay >= 0 and loss in [0, 1]", ErrInvalidFault, i, delay, loss)
	}
	if err := nw.setDelayLocked(i, delay); err != nil {
		return err
	}
	if loss > 0 {
		nw.loss[i] = loss
	} else {
		delete(nw.loss, i)
	}
	return nw.applyLocked()
}

// ClearNetem removes host i's loss and delay (see Netem); it does nothing if the host
// has none. It returns an error wrapping ErrNoSuchHost for an index out of range.
func (nw *Network) ClearNetem(i int) error {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if err := nw.checkHostLocked(i); err != nil {
		return err
	}
	delete(nw.loss, i)
	return errors.Join(nw.setDelayLocked(i, 0), nw.applyLocked())
}

// checkHostLocked returns an error unless i is a host of an open network.
func (nw *Network) checkHostLocked(i int) error {
	if nw.closed {
		return ErrNetworkClosed
	}
	if i < 0 || i >= len(nw.hosts) {
		return fmt.Errorf("%w: %d (the %s has %d hosts)", ErrNoSuchHost, i, nw, len(nw.hosts))
	}
	return nil
}

// setDelayLocked installs (d > 0) or removes (d == 0) the delay of host i's link: tc
// netem qdiscs on both ends of its veth or, when the kernel has no netem, a user-space
// delayQueue fed by iptables NFQUEUE rules in the hub.
func (nw *Network) setDelayLocked(i int, d time.Duration) error {
	if d == 0 {
		if _, ok := nw.delay[i]; !ok {
			return nil
		}
		var err error
		if q := nw.queues[i]; q != nil {
			err = nw.removeQueueDelayLocked(i)
		} else {
			err = nw.netemLocked(i, "del")
		}
		if err == nil {
			delete(nw.delay, i)
		}
		return err
	}
	if q := nw.queues[i]; q != nil {
		q.setDelay(d)
		nw.delay[i] = d
		return nil
	}
	if !nw.noNetem && !nw.forceQueueDelay {
		err := nw.netemLocked(i, "replace", "netem", "delay", fmt.Sprintf("%dus", d.Microseconds()), "limit", "100000")
		if err == nil || !strings.Contains(err.Error(), "qdisc kind is unknown") {
			if err == nil {
				nw.delay[i] = d
			}
			return err
		}
		nw.noNetem = true // CONFIG_NET_SCH_NETEM is off: use the queue from now on
	}
	return nw.queueDelayLocked(i, d)
}

// netemLocked runs `tc qdisc <verb> dev <if> root <args>` on both ends of host i's veth.
// Deleting a qdisc that is not there is not an error.
func (nw *Network) netemLocked(i int, verb string, args ...string) error {
	var errs []error
	for _, end := range [][2]string{{nw.hosts[i].Name, hostIf}, {nw.hub, fmt.Sprintf("h%d", i)}} {
		argv := append([]string{nw.tc, "-n", end[0], "qdisc", verb, "dev", end[1], "root"}, args...)
		if err := runCmd("", argv...); err != nil && !(verb == "del" && strings.Contains(err.Error(), "handle of zero")) {
			errs = append(errs, fmt.Errorf("harness: delay of host %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}

// queueRules returns the iptables rule specifications (without -A/-D) that send the
// packets bridged from and to host i to NFQUEUE queue i; with --queue-bypass, packets
// pass undelayed when no queue is bound.
func queueRules(i int) [][]string {
	var out [][]string
	for _, dir := range []string{"--physdev-in", "--physdev-out"} {
		out = append(out, []string{"-m", "physdev", dir, fmt.Sprintf("h%d", i),
			"-j", "NFQUEUE", "--queue-num", strconv.Itoa(i), "--queue-bypass"})
	}
	return out
}

// queueDelayLocked delays host i's link by d in user space (see delayQueue).
func (nw *Network) queueDelayLocked(i int, d time.Duration) error {
	ipt, err := lookCommand("iptables")
	if err != nil {
		return fmt.Errorf("%w: the kernel has no tc netem, and %v", ErrDelayUnsupported, err)
	}
	iptables := func(args ...string) error {
		return runCmd("", append([]string{nw.ip, "netns", "exec", nw.hub, ipt, "-w", "-t", "mangle"}, args...)...)
	}
	if !nw.delayChain {
		if err := errors.Join(iptables("-N", delayChain), iptables("-A", "FORWARD", "-j", delayChain)); err != nil {
			return fmt.Errorf("%w: %v", ErrDelayUnsupported, err)
		}
		nw.delayChain = true
	}
	q, err := openDelayQueue(filepath.Join(netNSDir, nw.hub), uint16(i), d)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDelayUnsupported, err)
	}
	for _, r := range queueRules(i) {
		if err := iptables(append([]string{"-A", delayChain}, r...)...); err != nil {
			for _, r := range queueRules(i) {
				_ = iptables(append([]string{"-D", delayChain}, r...)...)
			}
			_ = q.close()
			return fmt.Errorf("%w: %v", ErrDelayUnsupported, err)
		}
	}
	nw.queues[i] = q
	nw.delay[i] = d
	return nil
}

// removeQueueDelayLocked removes host i's queue rules, then lets its held packets go
// and closes the queue.
func (nw *Network) removeQueueDelayLocked(i int) error {
	ipt, err := lookCommand("iptables")
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range queueRules(i) {
		argv := append([]string{nw.ip, "netns", "exec", nw.hub, ipt, "-w", "-t", "mangle", "-D", delayChain}, r...)
		if err := runCmd("", argv...); err != nil {
			errs = append(errs, fmt.Errorf("harness: removing delay of host %d: %w", i, err))
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...) // the queue stays, so that packets still flow
	}
	err = nw.queues[i].close()
	delete(nw.queues, i)
	return err
}

// applyLocked brings every namespace's nftables rules in line with the faults in force:
// each host's ingress chain drops packets from the hosts cut from it and, for a lossy
// host, random packets arriving on its link; the hub's chain drops random packets
// leaving lossy hosts. Each namespace's chain is replaced in one nft transaction, and
// namespaces whose rules did not change are skipped.
func (nw *Network) applyLocked() error {
	if nw.closed {
		return ErrNetworkClosed
	}
	var errs []error
	apply := func(ns, script string) {
		if nw.rendered[ns] == script {
			return
		}
		if err := runCmd(script, nw.ip, "netns", "exec", ns, nw.nft, "-f", "-"); err != nil {
			delete(nw.rendered, ns) // unknown state: rewrite next time
			errs = append(errs, fmt.Errorf("harness: updating nftables rules in %s: %w", ns, err))
			return
		}
		nw.rendered[ns] = script
	}
	drops := dropSources(len(nw.hosts), nw.cuts, nw.isolated)
	for i, h := range nw.hosts {
		rules := []string{"flush chain ip " + netTable + " ingress"}
		if len(drops[i]) > 0 {
			ips := make([]string, len(drops[i]))
			for j, src := range drops[i] {
				ips[j] = nw.hosts[src].IP
			}
			rules = append(rules, fmt.Sprintf("add rule ip %s ingress ip saddr { %s } counter drop", netTable, strings.Join(ips, ", ")))
		}
		if p, ok := nw.loss[i]; ok {
			rules = append(rules, fmt.Sprintf("add rule ip %s ingress iifname %q %scounter drop", netTable, hostIf, lossMatch(p)))
		}
		apply(h.Name, lines(rules...))
	}
	hub := []string{"flush chain bridge " + netTable + " loss"}
	for _, i := range slices.Sorted(maps.Keys(nw.loss)) {
		hub = append(hub, fmt.Sprintf("add rule bridge %s loss iifname \"h%d\" ether type ip %scounter drop", netTable, i, lossMatch(nw.loss[i])))
	}
	apply(nw.hub, lines(hub...))
	return errors.Join(errs...)
}

// lossMatch returns the nft match (with a trailing space) that selects packets with
// probability p, in (0, 1]: a random number compared with p's share of lossScale, or
// nothing at all for p = 1. Probabilities below 1/lossScale round up to it.
func lossMatch(p float64) string {
	n := max(int(p*lossScale), 1)
	if n >= lossScale {
		return ""
	}
	return fmt.Sprintf("numgen random mod %d < %d ", lossScale, n)
}

// dropSources returns, for each of n hosts, the sorted indices of the hosts whose
// packets it must drop: those cut towards it, and every other host when either end is
// isolated.
func dropSources(n int, cuts map[[2]int]bool, isolated map[int]bool) [][]int {
	out := make([][]int, n)
	for to := range n {
		for from := range n {
			if from != to && (cuts[[2]int{from, to}] || isolated[from] || isolated[to]) {
				out[to] = append(out[to], from)
			}
		}
	}
	return out
}

// describeLocked summarizes the faults in force, "" when there are none.
func (nw *Network) describeLocked() string {
	var parts []string
	var cuts []string
	for c := range nw.cuts {
		cuts = append(cuts, fmt.Sprintf("%d->%d", c[0], c[1]))
	}
	sort.Strings(cuts)
	if len(cuts) > 0 {
		parts = append(parts, "cut "+strings.Join(cuts, " "))
	}
	for _, i := range slices.Sorted(maps.Keys(nw.isolated)) {
		parts = append(parts, fmt.Sprintf("host %d isolated", i))
	}
	for _, i := range slices.Sorted(maps.Keys(nw.loss)) {
		parts = append(parts, fmt.Sprintf("host %d loses %.2f%% of packets", i, 100*nw.loss[i]))
	}
	for _, i := range slices.Sorted(maps.Keys(nw.delay)) {
		parts = append(parts, fmt.Sprintf("host %d delayed %v each way", i, nw.delay[i]))
	}
	return strings.Join(parts, "; ")
}
