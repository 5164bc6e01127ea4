package harness

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// Subnets are leased machine-wide through lock files: subnet k belongs to whoever holds
// an exclusive flock on netLockDir/net-<k>.lock. The kernel drops the lock when its holder
// dies, however it dies, so a crashed test binary never keeps a subnet. A holder creates
// its namespaces and links only after taking the lock and removes them before releasing
// it; so anything named after subnet k while nobody holds k's lock is a leftover of a
// dead holder, and whoever takes the lock may delete it.
const (
	netLockDir = "/run/plasmacloud-harness"
	netNSDir   = "/run/netns" // where `ip netns add` names namespaces
	netSubnets = 256
)

// netName matches the names the harness gives to root links (pch12) and namespaces
// (pch12-hub, pch12-h0) and captures the subnet number.
var netName = regexp.MustCompile(`^` + netPrefix + `([0-9]{1,3})(-.+)?$`)

// subnetLease is this process's exclusive use of subnet k, held until release.
type subnetLease struct {
	k    int
	lock *os.File
}

// name returns the name of one of the lease's objects: pch<k>-<suffix>, or pch<k> for
// an empty suffix.
func (l *subnetLease) name(suffix string) string {
	if suffix == "" {
		return netPrefix + strconv.Itoa(l.k)
	}
	return netPrefix + strconv.Itoa(l.k) + "-" + suffix
}

// rootLink is the name of the root namespace's end of the veth pair to the hub.
func (l *subnetLease) rootLink() string { return l.name("") }

// ip returns the address 10.77.k.host.
func (l *subnetLease) ip(host int) string { return fmt.Sprintf("10.77.%d.%d", l.k, host) }

// release gives the subnet back; its namespaces must be gone by then.
func (l *subnetLease) release() { _ = l.lock.Close() }

// tryLockSubnet takes subnet k's lock without waiting; it returns nil and no error
// when someone else holds it.
func tryLockSubnet(k int) (*subnetLease, error) {
	if err := os.MkdirAll(netLockDir, 0o755); err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(netLockDir, fmt.Sprintf("net-%d.lock", k)), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("harness: %w", err)
	}
	// flock locks belong to the open file description: a second open in this same
	// process conflicts with the first, so two tests of one binary never share k.
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("harness: locking subnet %d: %w", k, err)
	}
	return &subnetLease{k: k, lock: f}, nil
}

// leaseSubnet takes a free subnet: one whose lock nobody holds and which nothing else on
// the machine routes. It starts from a random subnet so that parallel test binaries
// rarely contend for the same lock, and removes what a dead previous holder left.
func leaseSubnet(ipPath string) (*subnetLease, error) {
	start := rand.IntN(netSubnets)
	var conflicts []string
	for j := range netSubnets {
		k := (start + j) % netSubnets
		l, err := tryLockSubnet(k)
		if err != nil {
			return nil, err
		}
		if l == nil {
			continue
		}
		if err := removeSubnet(ipPath, k); err != nil {
			l.release()
			return nil, err
		}
		routes, err := outputCmd("", ipPath, "-4", "-o", "route", "show", "table", "all")
		if err != nil {
			l.release()
			return nil, fmt.Errorf("harness: listing routes: %w", err)
		}
		if r := subnetConflict(routes, k); r != "" {
			l.release()
			if len(conflicts) < 3 {
				conflicts = append(conflicts, r)
			}
			continue
		}
		return l, nil
	}
	return nil, fmt.Errorf("%w (routes in the way: %s)", ErrNoSubnet, strings.Join(conflicts, "; "))
}

// subnetConflict returns the first route of `ip -o route show` output that makes subnet
// k unusable, or "": a route to any address of 10.77.k.0/24, or to a prefix of at least
// /16 containing it (someone else uses 10.77.0.0/16). A default route, or a route to a
// wider prefix such as 10.0.0.0/8, does not conflict: the subnet's own route is more
// specific.
func subnetConflict(routes string, k int) string {
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 77, byte(k), 0}), 24)
	for line := range strings.Lines(routes) {
		f := strings.Fields(line)
		for _, field := range f[:min(len(f), 2)] { // "[type] prefix ..."
			p, err := netip.ParsePrefix(field)
			if err != nil {
				a, aerr := netip.ParseAddr(field)
				if aerr != nil || !a.Is4() {
					continue
				}
				p = netip.PrefixFrom(a, 32)
			}
			if p.Bits() >= 16 && p.Overlaps(subnet) {
				return strings.TrimSpace(line)
			}
			break
		}
	}
	return ""
}

// sweepStaleNetworks removes the namespaces and root links of subnets whose holder is
// gone. Errors are ignored: this is housekeeping, and a subnet it cannot clean will be
// cleaned by leaseSubnet before reuse, or reported there.
func sweepStaleNetworks(ipPath string) {
	stale := make(map[int]bool)
	for _, name := range netObjects() {
		if m := netName.FindStringSubmatch(name); m != nil {
			if k, err := strconv.Atoi(m[1]); err == nil && k < netSubnets {
				stale[k] = true
			}
		}
	}
	for k := range stale {
		l, err := tryLockSubnet(k)
		if err != nil || l == nil {
			continue // held: a live test's network
		}
		_ = removeSubnet(ipPath, k)
		l.release()
	}
}

// netObjects lists the namespaces (by their names under /run/netns) and the root
// namespace's links that look like the harness's.
func netObjects() []string {
	var out []string
	if ents, err := os.ReadDir(netNSDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), netPrefix) {
				out = append(out, e.Name())
			}
		}
	}
	if ifs, err := net.Interfaces(); err == nil {
		for _, i := range ifs {
			if strings.HasPrefix(i.Name, netPrefix) {
				out = append(out, i.Name)
			}
		}
	}
	return out
}

// subnetObjects returns the namespaces and links of netObjects that belong to subnet k.
func subnetObjects(k int) (namespaces, links []string) {
	for _, name := range netObjects() {
		m := netName.FindStringSubmatch(name)
		if m == nil || m[1] != strconv.Itoa(k) {
			continue
		}
		if m[2] == "" {
			links = append(links, name)
		} else {
			namespaces = append(namespaces, name)
		}
	}
	return namespaces, links
}

// removeSubnet deletes everything named after subnet k — the root link first, which takes
// its hub end along, then the namespaces, whose links and nftables tables go with them —
// and verifies that nothing is left. The caller holds k's lock.
//
// A namespace in which a process still runs outlives its name until the process exits;
// it is unreachable then (its links are gone with the hub), so nothing leaks but the
// process, which the harness kills with its test.
func removeSubnet(ipPath string, k int) error {
	namespaces, links := subnetObjects(k)
	var errs []error
	for _, l := range links {
		if err := runCmd("", ipPath, "link", "del", l); err != nil {
			errs = append(errs, err)
		}
	}
	// Hosts first, so their veths are not left in a half-deleted hub.
	for _, ns := range namespaces {
		if !strings.HasSuffix(ns, "-hub") {
			if err := runCmd("", ipPath, "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, ns := range namespaces {
		if strings.HasSuffix(ns, "-hub") {
			if err := runCmd("", ipPath, "netns", "del", ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if ns, ls := subnetObjects(k); len(ns)+len(ls) > 0 {
		errs = append(errs, fmt.Errorf("still present after removal: %s", strings.Join(append(ns, ls...), ", ")))
	}
	return errors.Join(errs...)
}
