package e2e

// The HA tests' installation: fake hosts whose agents run inside the host's own cgroup (so
// a power-off kills the agent, its watchdog, libvirtd and every QEMU at once, and an
// isolation cuts the agent's ChainFire traffic and nothing else), each agent with its own
// state directory (serial logs, heartbeat sockets: two copies of a VM on two hosts never
// share a file), every pool on one directory (the "shared" pool of the issue: one machine),
// and a heartbeat watcher that follows every VM's serial log on every host — the
// split-brain checker.

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// HA timings for the tests: short, so a failover fits the 30 s of the acceptance with room
// for QEMU TCG on two loaded cores. The fence delay covers the agents' fence margin (the
// self-fence fires fenceMargin before the lease can expire) plus the destroy.
const (
	haLeaseTTL    = "4s"
	haFenceMargin = "1s"
	haFenceDelay  = "3s"
	haHealthEvery = "500ms"
)

// haCtrlArgs are the controllers' HA flags.
var haCtrlArgs = []string{"--fence-delay", haFenceDelay, "--health-interval", haHealthEvery}

// newHAEnv starts ChainFire (3 members: a controller leader change must not lose it) and
// n controllers with the HA flags (and ctrlArgs), and registers the guest's images in both pools.
func newHAEnv(t *testing.T, controllers int, ctrlArgs ...string) *env {
	t.Helper()
	e := newEnv(t, envOptions{cfSize: 3, controllers: controllers, deferControllers: true})
	e.perAgentState = true
	e.startControllers(controllers, append(append([]string{"--auth", "none"}, haCtrlArgs...), ctrlArgs...))
	c := e.api(0, "")
	e.registerImages(c)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, format := range map[string]string{"tiny-kernel": "kernel", "tiny-initrd": "initrd", "base": "qcow2"} {
		if _, err := c.img.RegisterImage(ctx, connect.NewRequest(&pb.RegisterImageRequest{Image: &pb.Image{
			Name: name, Pool: "shared", Format: format, Path: "images/" + name}})); err != nil {
			t.Fatalf("register %s in the shared pool: %v", name, err)
		}
	}
	return e
}

// haSpec is an HA guest: failover on, one overlay disk on the shared pool.
func haSpec(priority int32, knobs ...string) *pb.VMSpec {
	s := spec(knobs...)
	s.Disks = []*pb.Disk{{Name: "root", Image: "base", Pool: "shared"}}
	s.Ha = &pb.HAPolicy{Failover: true, Priority: priority}
	return s
}

// hostCgroup is the fake host's cgroup (scripts/libvirt.sh host cgroup NAME).
func hostCgroup(t testing.TB, fh *fakeHost) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(guestlab.RepoRoot(t), "scripts", "libvirt.sh"), "host", "cgroup", fh.name).CombinedOutput()
	if err != nil {
		t.Fatalf("libvirt.sh host cgroup %s: %v\n%s", fh.name, err, out)
	}
	return strings.TrimSpace(string(out))
}

// addHAHost starts a fresh fake host (never reused across tests: power-off kills it) and
// an agent on it that runs inside the host's cgroup, with its own state directory and both
// pools on the env's pool directory; the heartbeat watcher, if any, follows the host.
func (e *env) addHAHost(name string) (*fakeHost, *agentProc) {
	t := e.t
	t.Helper()
	fh := startFakeHost(t, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()%1e6))
	cg := hostCgroup(t, fh)
	e.wrap = func(argv []string) []string {
		// Join the host's cgroup before exec: every (re)start of the agent, and the watchdog
		// it spawns, live and die with the host.
		return append([]string{"sh", "-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg}, argv...)
	}
	defer func() { e.wrap = nil }()
	a := e.addAgent(name, fh, 4096, "--pool-shared", e.pool, "--lease-ttl", haLeaseTTL, "--fence-margin", haFenceMargin)
	t.Cleanup(func() { killWatchdog(a) })
	if e.hb != nil {
		e.hb.add(name, a)
	}
	e.waitHostState(e.api(0, ""), name, pb.HostState_HOST_STATE_UP, waitTimeout)
	return fh, a
}

// killWatchdog kills the agent's watchdog (detached from the agent on purpose: it outlives
// agent restarts) when the test ends.
func killWatchdog(a *agentProc) {
	b, err := os.ReadFile(filepath.Join(a.stateDir, "watchdog.pid"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// powerOff kills everything of the fake host at once — its libvirtd, every QEMU, the agent
// and its watchdog — like pulling the plug.
func (e *env) powerOff(fh *fakeHost) {
	t := e.t
	t.Helper()
	if err := os.WriteFile(filepath.Join(hostCgroup(t, fh), "cgroup.kill"), []byte("1"), 0o644); err != nil {
		t.Fatalf("power off %s: %v", fh.name, err)
	}
}

// isolate cuts the host's processes (the agent) from every ChainFire member; heal undoes it.
func (e *env) isolate(fh *fakeHost) {
	t := e.t
	t.Helper()
	args := []string{"host", "isolate", fh.name}
	for _, ep := range e.cf.Endpoints() {
		args = append(args, ep[strings.LastIndex(ep, ":")+1:])
	}
	if out, err := exec.Command(filepath.Join(guestlab.RepoRoot(t), "scripts", "libvirt.sh"), args...).CombinedOutput(); err != nil {
		t.Fatalf("isolate %s: %v\n%s", fh.name, err, out)
	}
	t.Cleanup(func() { e.heal(fh) })
}

func (e *env) heal(fh *fakeHost) {
	if out, err := exec.Command(filepath.Join(guestlab.RepoRoot(e.t), "scripts", "libvirt.sh"), "host", "heal", fh.name).CombinedOutput(); err != nil {
		e.t.Errorf("heal %s: %v\n%s", fh.name, err, out)
	}
}

// hbSeen is one heartbeat line seen in a VM's serial log on a host.
type hbSeen struct {
	host string
	seq  int64
	boot string
	at   time.Time
}

// hbKey identifies one heartbeat line of one copy.
type hbKey struct {
	host, id, boot string
	seq            int64
}

var hbLine = regexp.MustCompile(`PLASMA-HB seq=(\d+) boot=([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})`)

// hbWatch follows the serial log of every VM on every watched host (polling every 100 ms)
// and keeps every heartbeat with the time it was first seen.
type hbWatch struct {
	mu    sync.Mutex
	dirs  map[string]string // host -> agent state dir
	known map[hbKey]bool
	// panics keeps the serial output around each guest kernel panic seen (by VM id and
	// host), which a restart would truncate away.
	panics map[string]string
	seen   map[string][]hbSeen // VM id -> heartbeats in the order seen
	done   chan struct{}
	ended  chan struct{}
}

func (e *env) watchHeartbeats() *hbWatch {
	w := &hbWatch{dirs: map[string]string{}, known: map[hbKey]bool{}, seen: map[string][]hbSeen{}, panics: map[string]string{},
		done: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(w.ended)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-tick.C:
				w.poll()
			}
		}
	}()
	e.t.Cleanup(w.stop)
	e.hb = w
	return w
}

// add watches the agent's host.
func (w *hbWatch) add(host string, a *agentProc) {
	w.mu.Lock()
	w.dirs[host] = a.stateDir
	w.mu.Unlock()
}

func (w *hbWatch) stop() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	<-w.ended
}

func (w *hbWatch) poll() {
	w.mu.Lock()
	dirs := make(map[string]string, len(w.dirs))
	for h, d := range w.dirs {
		dirs[h] = d
	}
	w.mu.Unlock()
	for host, dir := range dirs {
		logs, _ := filepath.Glob(filepath.Join(dir, "*", "serial.log"))
		for _, path := range logs {
			id := filepath.Base(filepath.Dir(path))
			w.read(host, id, path)
		}
	}
}

// read re-reads the whole serial log (a few KB: the guest boots quiet) and records the
// heartbeats not seen before on this host. Re-reading, rather than following an offset,
// does not depend on whether a QEMU truncates or appends to a log left by an earlier copy
// (a VM migrated away and back).
func (w *hbWatch) read(host, id, path string) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	if i := strings.LastIndexByte(string(b), '\n'); i >= 0 {
		b = b[:i+1] // complete lines only: QEMU may be writing the last one
	} else {
		return
	}
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if i := strings.Index(string(b), "Kernel panic"); i >= 0 {
		k := id + " on " + host
		if _, ok := w.panics[k]; !ok {
			w.panics[k] = string(b[max(i-3000, 0):min(i+1000, len(b))])
		}
	}
	for _, m := range hbLine.FindAllStringSubmatch(string(b), -1) {
		seq, _ := strconv.ParseInt(m[1], 10, 64)
		k := hbKey{host: host, id: id, boot: m[2], seq: seq}
		if w.known[k] {
			continue
		}
		w.known[k] = true
		w.seen[id] = append(w.seen[id], hbSeen{host: host, seq: seq, boot: m[2], at: now})
	}
}

// firstOn is the VM's first heartbeat seen on host after t0 (ok false: none yet).
func (w *hbWatch) firstOn(id, host string, t0 time.Time) (hbSeen, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, h := range w.seen[id] {
		if h.host == host && h.at.After(t0) {
			return h, true
		}
	}
	return hbSeen{}, false
}

// countOn counts the VM's heartbeats seen on host after t0.
func (w *hbWatch) countOn(id, host string, t0 time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, h := range w.seen[id] {
		if h.host == host && h.at.After(t0) {
			n++
		}
	}
	return n
}

// lastOn is the last heartbeat of the VM seen on host.
func (w *hbWatch) lastOn(id, host string) (hbSeen, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.seen[id]
	for i := len(s) - 1; i >= 0; i-- {
		if s[i].host == host {
			return s[i], true
		}
	}
	return hbSeen{}, false
}

// copyGap splits a host's heartbeats of one VM into copies: the guest beats every second,
// so a longer silence (or a new boot id) on the same host is another copy (e.g. the VM
// migrated away and back).
const copyGap = 2500 * time.Millisecond

// hbCopy is one run of a VM on one host: the first and last heartbeat seen.
type hbCopy struct {
	host        string
	boot        string
	first, last time.Time
}

// copies returns the VM's copies on every host, in order of their first heartbeat.
func (w *hbWatch) copies(id string) []hbCopy {
	w.mu.Lock()
	defer w.mu.Unlock()
	open := map[string]*hbCopy{}
	var all []*hbCopy
	for _, h := range w.seen[id] {
		c := open[h.host]
		if c == nil || c.boot != h.boot || h.at.Sub(c.last) > copyGap {
			c = &hbCopy{host: h.host, boot: h.boot, first: h.at, last: h.at}
			open[h.host] = c
			all = append(all, c)
		}
		c.last = h.at
	}
	out := make([]hbCopy, len(all))
	for i, c := range all {
		out[i] = *c
	}
	sort.Slice(out, func(i, j int) bool { return out[i].first.Before(out[j].first) })
	return out
}

// checkNoOverlap fails the test if any VM's heartbeat was seen on two hosts in
// overlapping time windows: two copies on different hosts whose first-to-last windows
// overlap (strictly: heartbeats read in the same 100 ms poll do not count, as a loaded
// poller may read a migration's last source line and first destination line together).
// It logs every VM's copies.
func (w *hbWatch) checkNoOverlap(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	ids := make([]string, 0, len(w.seen))
	for id := range w.seen {
		ids = append(ids, id)
	}
	w.mu.Unlock()
	sort.Strings(ids)
	w.mu.Lock()
	for k, text := range w.panics {
		t.Logf("guest kernel panic of %s:\n%s", k, text)
	}
	w.mu.Unlock()
	for _, id := range ids {
		cs := w.copies(id)
		var desc []string
		for _, c := range cs {
			desc = append(desc, fmt.Sprintf("%s [%s .. %s]", c.host, c.first.Format("15:04:05.000"), c.last.Format("15:04:05.000")))
		}
		t.Logf("heartbeat windows of %s: %s", id, strings.Join(desc, ", "))
		for i := range cs {
			for j := i + 1; j < len(cs); j++ {
				a, b := cs[i], cs[j]
				if a.host != b.host && b.first.Before(a.last) && a.first.Before(b.last) {
					t.Errorf("SPLIT BRAIN: VM %s heartbeat on %s [%s .. %s] and on %s [%s .. %s]", id,
						a.host, a.first.Format("15:04:05.000"), a.last.Format("15:04:05.000"),
						b.host, b.first.Format("15:04:05.000"), b.last.Format("15:04:05.000"))
				}
			}
		}
	}
}

// runningOn counts the fake hosts on which a domain of the VM runs (virsh, independent of
// the agents).
func runningOn(t testing.TB, id string, hosts ...*fakeHost) []string {
	t.Helper()
	var on []string
	for _, fh := range hosts {
		out, err := exec.Command("virsh", "-c", "qemu+unix:///system?socket="+fh.sock, "list", "--state-running", "--name").CombinedOutput()
		if err != nil {
			continue // a powered-off host runs nothing
		}
		if strings.Contains(string(out), id) {
			on = append(on, fh.name)
		}
	}
	return on
}

// percentile of sorted durations (nearest rank).
func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// hostState polls the host until its API state is want.
func (e *env) waitHostState(c clients, host string, want pb.HostState, limit time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	var last *pb.Host
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.hst.GetHost(ctx, connect.NewRequest(&pb.GetHostRequest{Name: host}))
		cancel()
		if err == nil {
			last = resp.Msg.Host
			if last.State == want {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("host %s: state %v not reached in %v (last %v)", host, want, limit, last)
}
