// Package e2e holds PlasmaVMC's end-to-end acceptance tests: a real ChainFire cluster
// (pkg/chainfiretest), real `plasmavmc server` controllers (bin/plasmavmc), real
// `plasmavmc-agent` processes (bin/plasmavmc-agent), real libvirtd and QEMU (TCG) booting
// the tiny guest (scripts/guest.sh), and for the authorization test real `iam server`
// replicas (bin/iam). Run as root after `make build` with PLASMA_BIN_DIR=/work/main/bin
// (without it the binaries are built by the test).
//
// Isolation: the agents of this package talk to fake hosts of their own
// (`scripts/libvirt.sh host start NAME`: one libvirtd per PID + mount namespace), never to
// the system libvirtd other packages' tests share. An agent destroys every PlasmaVMC
// domain of its libvirtd that is not assigned to it (no orphans), so two agents on one
// libvirtd would fight; and the libvirtd-restart test may kill its libvirtd without
// disturbing anyone. Tests run one after the other; each fake host is fenced (its
// libvirtd and QEMUs killed) when the package ends.
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
	"plasmacloud.dev/proto/plasmavmc/v1/plasmavmcv1connect"
)

// Generous bounds: QEMU TCG shares two cores with other work.
const (
	bootTimeout = 120 * time.Second
	waitTimeout = 90 * time.Second
	// guestMiB is the guests' memory: the tiny guest does not come up in 64 MiB (QEMU
	// idles, nothing on the serial console), 96 MiB boots in about 5 s.
	guestMiB = 96
)

// fakeHosts are the fake hosts this test binary started, fenced by TestMain.
var fakeHosts = struct {
	sync.Mutex
	names []string
}{}

func TestMain(m *testing.M) {
	code := m.Run()
	fakeHosts.Lock()
	for _, name := range fakeHosts.names {
		root, _ := harness.WorkspaceRoot()
		_ = exec.Command(filepath.Join(root, "scripts", "libvirt.sh"), "host", "fence", name).Run()
		if keep := os.Getenv(harness.LogDirEnv); code != 0 && keep != "" {
			// The fake host's own logs (its init, libvirtd, QEMUs) go with the failed run's.
			dst := filepath.Join(keep, "e2e", "fakehosts", name)
			_ = os.MkdirAll(dst, 0o755)
			_ = exec.Command("cp", "-r", filepath.Join(hostsDir(), name, "init.log"),
				filepath.Join(hostsDir(), name, "log"), dst).Run()
		}
		// Fenced, healed, its directory and cgroup gone.
		_ = exec.Command(filepath.Join(root, "scripts", "libvirt.sh"), "host", "remove", name).Run()
	}
	fakeHosts.Unlock()
	os.Exit(code)
}

func hostsDir() string {
	if d := os.Getenv("PLASMA_HOSTS"); d != "" {
		return d
	}
	return "/tmp/plasma-hosts"
}

// fakeHost is one libvirtd in its own PID + mount namespace.
type fakeHost struct {
	name string
	sock string
}

var (
	hostsMu  sync.Mutex
	hostByID = map[string]*fakeHost{}
)

// startFakeHost starts (once per test binary) the fake host named "pve<pid>-<suffix>";
// it stays up for the following tests and is fenced by TestMain.
func startFakeHost(t testing.TB, suffix string) *fakeHost {
	t.Helper()
	hostsMu.Lock()
	defer hostsMu.Unlock()
	if h := hostByID[suffix]; h != nil {
		h.ensureLibvirtd(t)
		return h
	}
	name := fmt.Sprintf("pve%d-%s", os.Getpid(), suffix)
	fakeHosts.Lock()
	fakeHosts.names = append(fakeHosts.names, name)
	fakeHosts.Unlock()
	out, err := exec.Command(filepath.Join(guestlab.RepoRoot(t), "scripts", "libvirt.sh"), "host", "start", name).CombinedOutput()
	if err != nil {
		t.Fatalf("scripts/libvirt.sh host start %s: %v\n%s", name, err, out)
	}
	h := &fakeHost{name: name, sock: filepath.Join(hostsDir(), name, "run", "libvirt-sock")}
	hostByID[suffix] = h
	return h
}

// initPID is the fake host's PID 1 (as the root namespace sees it).
func (h *fakeHost) initPID(t testing.TB) int {
	b, err := os.ReadFile(filepath.Join(hostsDir(), h.name, "init.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// libvirtdPID finds the fake host's libvirtd: a child of its init (libvirtd -d
// daemonizes, so it is reparented there) named libvirtd; 0 when none.
func (h *fakeHost) libvirtdPID(t testing.TB) int {
	init := h.initPID(t)
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", init))
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile("/proc/" + s + "/comm")
			if strings.TrimSpace(string(comm)) == "libvirtd" {
				pid, _ := strconv.Atoi(s)
				return pid
			}
		}
	}
	return 0
}

// ensureLibvirtd checks, before a test reuses the fake host, that its libvirtd still runs.
// A libvirtd that died between tests (seen once in CI, cause unknown: the fake host's
// libvirtd log is shown to find out) is restarted, so one death fails at most the test it
// happened in rather than every later test on the host.
func (h *fakeHost) ensureLibvirtd(t testing.TB) {
	t.Helper()
	if h.libvirtdPID(t) != 0 {
		return
	}
	initLog, _ := os.ReadFile(filepath.Join(hostsDir(), h.name, "init.log"))
	lvLog, _ := os.ReadFile(filepath.Join(hostsDir(), h.name, "log", "libvirtd.log"))
	t.Logf("WARNING: fake host %s: libvirtd is gone; restarting it.\ninit.log:\n%s\nlibvirtd.log (end):\n%s",
		h.name, initLog, tail(string(lvLog)))
	h.restartLibvirtd(t)
	deadline := time.Now().Add(waitTimeout)
	for {
		out, err := exec.Command("virsh", "-c", "qemu+unix:///system?socket="+h.sock, "version").CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("fake host %s: restarted libvirtd does not answer: %v\n%s", h.name, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// restartLibvirtd starts libvirtd again inside the fake host's namespaces.
func (h *fakeHost) restartLibvirtd(t testing.TB) {
	t.Helper()
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(h.initPID(t)), "-m", "-p", "--",
		"/usr/sbin/libvirtd", "-d", "-p", "/run/libvirt/libvirtd.pid").CombinedOutput()
	if err != nil {
		t.Fatalf("restarting libvirtd in %s: %v\n%s", h.name, err, out)
	}
}

// env is one PlasmaVMC installation: ChainFire, controllers, agents on fake hosts, one
// local pool directory (shared by the agents: one machine) holding the tiny guest's
// images, and a driver per fake host to look at libvirt directly.
type env struct {
	t        testing.TB
	cf       *chainfiretest.Cluster
	cfc      *chainfire.Client
	st       *state.Store
	ctrlBin  string
	agentBin string
	ctrls    []*harness.Process
	urls     []string
	agents   map[string]*agentProc
	pool     string
	stateDir string
	drivers  map[string]*driver.Libvirt // by fake host name
	iamURLs  []string
	extra    []string // extra controller flags
	// perAgentState gives every agent its own state directory (stateDir/<host>): the HA
	// tests, where one VM may have a domain on two hosts.
	perAgentState bool
	// wrap, when set, wraps the next agents' command lines (the HA tests join a cgroup).
	wrap func([]string) []string
	// hb is the HA tests' heartbeat watcher (watchHeartbeats); addHAHost adds hosts to it.
	hb *hbWatch

	mu      sync.Mutex
	created []string // VM ids, whose domains cleanup destroys
}

type agentProc struct {
	*harness.Process
	host     *fakeHost
	url      string
	stateDir string
}

type envOptions struct {
	cfSize      int
	controllers int
	ctrlArgs    []string // extra controller flags (IAM)
	// deferControllers: the test starts them with startControllers (after IAM is up).
	deferControllers bool
}

// newEnv starts ChainFire and the controllers and prepares the pool; agents come with
// addAgent.
func newEnv(t testing.TB, o envOptions) *env {
	t.Helper()
	harness.RequireRoot(t)
	g := guestlab.BuildGuest(t)
	if o.cfSize == 0 {
		o.cfSize = 1
	}
	if o.controllers == 0 {
		o.controllers = 1
	}
	e := &env{t: t, agents: map[string]*agentProc{}, drivers: map[string]*driver.Libvirt{},
		ctrlBin:  harness.Binary(t, "plasmacloud.dev/plasmavmc/cmd/plasmavmc"),
		agentBin: harness.Binary(t, "plasmacloud.dev/plasmavmc/cmd/plasmavmc-agent"),
		pool:     t.TempDir()}
	// Short: heartbeat sockets live under it (unix socket paths are limited to 107 bytes).
	dir, err := os.MkdirTemp("/tmp", "pve-")
	if err != nil {
		t.Fatal(err)
	}
	e.stateDir = dir
	e.cf = chainfiretest.Start(t, o.cfSize, chainfiretest.Options{})
	if e.cfc, err = chainfire.New(chainfire.Config{Endpoints: e.cf.Endpoints(), RequestTimeout: 3 * time.Second}); err != nil {
		t.Fatal(err)
	}
	e.st = state.New(e.cfc, nil)
	// Registered first, so it runs last: after the agents (registered later) are killed,
	// destroy the domains this test created, then close the drivers.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		e.mu.Lock()
		ids := append([]string(nil), e.created...)
		e.mu.Unlock()
		for _, d := range e.drivers {
			for _, id := range ids {
				_ = d.Destroy(ctx, id)
				_ = d.Undefine(ctx, id)
			}
			d.Close()
		}
		e.cfc.Close()
		os.RemoveAll(e.stateDir)
	})

	// The tiny guest's files in the pool (hard links: the pool is on the same disk) and a
	// small qcow2 base for disks.
	images := filepath.Join(e.pool, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{"tiny-kernel": g.Kernel, "tiny-initrd": g.Initrd} {
		if err := os.Link(src, filepath.Join(images, name)); err != nil {
			if out, err := exec.Command("cp", src, filepath.Join(images, name)).CombinedOutput(); err != nil {
				t.Fatalf("cp %s: %v\n%s", src, err, out)
			}
		}
	}
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(images, "base"), "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}

	if !o.deferControllers {
		e.startControllers(o.controllers, o.ctrlArgs)
	}
	return e
}

// startControllers starts n controllers (--auth none unless args are given) and waits
// until they are ready.
func (e *env) startControllers(n int, ctrlArgs []string) {
	t := e.t
	t.Helper()
	ports, err := harness.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	e.extra = ctrlArgs
	for i := range n {
		u := fmt.Sprintf("http://127.0.0.1:%d", ports[i])
		args := []string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]),
			"--chainfire-endpoints", strings.Join(e.cf.Endpoints(), ","), "--leader-lease-ttl", "2s",
			"--replica-id", fmt.Sprintf("pvmc%d", i+1)}
		if len(ctrlArgs) == 0 {
			args = append(args, "--auth", "none")
		}
		args = append(args, ctrlArgs...)
		p := harness.StartProcess(t, harness.ProcessConfig{Name: fmt.Sprintf("pvmc%d", i+1), Path: e.ctrlBin,
			Args: args, ReadyURL: u + "/readyz"})
		e.ctrls = append(e.ctrls, p)
		e.urls = append(e.urls, u)
	}
	for _, p := range e.ctrls {
		waitReady(t, p)
	}
}

func waitReady(t testing.TB, p *harness.Process) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatalf("%s not ready: %v\n%s", p.Name(), err, tail(p.Logs()))
	}
}

// tail is the end of a log, for failure messages.
func tail(s string) string {
	if len(s) > 6000 {
		return "..." + s[len(s)-6000:]
	}
	return s
}

// addAgent starts an agent named host on the fake host fh (capacity 32 vCPUs, memMiB;
// extra flags appended) and waits until it is ready.
func (e *env) addAgent(host string, fh *fakeHost, memMiB int, extra ...string) *agentProc {
	t := e.t
	t.Helper()
	a := e.startAgent(host, fh, memMiB, extra...)
	waitReady(t, a.Process)
	if _, ok := e.drivers[fh.name]; !ok {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		d, err := driver.Open(ctx, driver.Config{Socket: fh.sock, StateDir: a.stateDir})
		if err != nil {
			t.Fatal(err)
		}
		e.drivers[fh.name] = d
	}
	return a
}

// startAgent starts an agent named host on the fake host fh without waiting for it.
func (e *env) startAgent(host string, fh *fakeHost, memMiB int, extra ...string) *agentProc {
	t := e.t
	t.Helper()
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	stateDir := e.stateDir
	if e.perAgentState {
		stateDir = filepath.Join(e.stateDir, host)
	}
	args := []string{"--host-name", host, "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"--chainfire-endpoints", strings.Join(e.cf.Endpoints(), ","), "--libvirt-socket", fh.sock,
		"--pool-local", e.pool, "--state-dir", stateDir, "--capacity-vcpus", "32",
		"--capacity-memory-mib", strconv.Itoa(memMiB), "--stop-timeout", "10s", "--lease-ttl", "5s"}
	p := harness.StartProcess(t, harness.ProcessConfig{Name: "agent-" + host, Path: e.agentBin, ReadyURL: u + "/readyz",
		Args: append(args, extra...), Wrap: e.wrap})
	a := &agentProc{Process: p, host: fh, url: u, stateDir: stateDir}
	e.agents[host] = a
	return a
}

// clients are the API's Connect clients on one controller URL, sending token (if any).
type clients struct {
	vm  plasmavmcv1connect.VMServiceClient
	img plasmavmcv1connect.ImageServiceClient
	hst plasmavmcv1connect.HostServiceClient
	op  plasmavmcv1connect.OperationServiceClient
}

func (e *env) api(i int, token string) clients {
	var opts []connect.ClientOption
	if token != "" {
		opts = append(opts, connect.WithInterceptors(bearer(token)))
	}
	hc := &http.Client{Timeout: 20 * time.Second}
	u := e.urls[i]
	return clients{
		vm:  plasmavmcv1connect.NewVMServiceClient(hc, u, opts...),
		img: plasmavmcv1connect.NewImageServiceClient(hc, u, opts...),
		hst: plasmavmcv1connect.NewHostServiceClient(hc, u, opts...),
		op:  plasmavmcv1connect.NewOperationServiceClient(hc, u, opts...),
	}
}

type bearer string

func (b bearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, r connect.AnyRequest) (connect.AnyResponse, error) {
		r.Header().Set("Authorization", "Bearer "+string(b))
		return next(ctx, r)
	}
}
func (b bearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (b bearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// registerImages registers the pool's files (tiny-kernel, tiny-initrd, base) through c.
func (e *env) registerImages(c clients) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for name, format := range map[string]string{"tiny-kernel": "kernel", "tiny-initrd": "initrd", "base": "qcow2"} {
		if _, err := c.img.RegisterImage(ctx, connect.NewRequest(&pb.RegisterImageRequest{Image: &pb.Image{
			Name: name, Pool: "local", Format: format, Path: "images/" + name}})); err != nil {
			e.t.Fatalf("register %s: %v", name, err)
		}
	}
}

// spec is the tiny guest's spec; knobs are appended to the kernel command line.
func spec(knobs ...string) *pb.VMSpec {
	return &pb.VMSpec{Vcpus: 1, MemoryMib: guestMiB, Boot: &pb.Boot{KernelImage: "tiny-kernel", InitrdImage: "tiny-initrd",
		Cmdline: strings.Join(append([]string{guestlab.Cmdline}, knobs...), " ")}}
}

// create creates a VM and records it for cleanup.
func (e *env) create(c clients, project, name string, s *pb.VMSpec) *pb.VM {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.vm.CreateVM(ctx, connect.NewRequest(&pb.CreateVMRequest{Name: name, Project: project, Spec: s,
		RequestId: fmt.Sprintf("%s-%s-%d", project, name, time.Now().UnixNano())}))
	if err != nil {
		e.t.Fatalf("create %s/%s: %v", project, name, err)
	}
	e.track(resp.Msg.Vm.Id)
	return resp.Msg.Vm
}

func (e *env) track(id string) {
	e.mu.Lock()
	e.created = append(e.created, id)
	e.mu.Unlock()
}

// get returns the VM with its status (nil when it does not exist).
func get(ctx context.Context, c clients, id string) (*pb.VM, error) {
	resp, err := c.vm.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: id}))
	if connect.CodeOf(err) == connect.CodeNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return resp.Msg.Vm, nil
}

// waitVM polls the VM until cond holds (or fails the test after limit, printing the VM
// and the agents' log tails). It returns the VM and how long it took.
func (e *env) waitVM(c clients, id string, limit time.Duration, what string, cond func(*pb.VM) bool) (*pb.VM, time.Duration) {
	e.t.Helper()
	start := time.Now()
	var last *pb.VM
	var lastErr error
	for time.Since(start) < limit {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		vm, err := get(ctx, c, id)
		cancel()
		if err == nil && cond(vm) {
			return vm, time.Since(start)
		}
		last, lastErr = vm, err
		time.Sleep(50 * time.Millisecond)
	}
	var logs strings.Builder
	for name, a := range e.agents {
		fmt.Fprintf(&logs, "\n--- agent %s:\n%s", name, tail(a.Logs()))
		if b, err := os.ReadFile(filepath.Join(a.stateDir, id, "serial.log")); err == nil {
			s := string(b)
			if len(s) > 1500 {
				s = "..." + s[len(s)-1500:]
			}
			fmt.Fprintf(&logs, "\n--- serial log of %s on %s:\n%s", id, name, s)
		}
	}
	e.t.Fatalf("VM %s: %s not reached in %v; last %s (err %v)%s", id, what, limit, protojson.Format(last), lastErr, logs.String())
	return nil, 0
}

// running: RUNNING with a fresh heartbeat whose boot id differs from notBoot (if set).
func running(notBoot string) func(*pb.VM) bool {
	return func(vm *pb.VM) bool {
		s := vm.GetStatus()
		return s.GetState() == pb.VMState_VM_STATE_RUNNING && s.GetBootId() != "" && s.GetBootId() != notBoot &&
			s.GetHeartbeat().GetHealthy()
	}
}

func inState(st pb.VMState) func(*pb.VM) bool {
	return func(vm *pb.VM) bool { return vm.GetStatus().GetState() == st }
}

// domain looks the VM's domain up on the fake host (ok false: no such domain).
func (e *env) domain(fh *fakeHost, id string) (driver.Domain, bool) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := e.drivers[fh.name].Get(ctx, id)
	if errors.Is(err, driver.ErrNotFound) {
		return d, false
	}
	if err != nil {
		e.t.Fatalf("driver.Get %s: %v", id, err)
	}
	return d, true
}

// countDomains counts the fake host's domains named for id (plasma-<id>) through virsh,
// independently of the driver: a duplicate would show here.
func countDomains(t testing.TB, fh *fakeHost, id string) int {
	out, err := exec.Command("virsh", "-c", "qemu+unix:///system?socket="+fh.sock, "list", "--all", "--name").CombinedOutput()
	if err != nil {
		t.Fatalf("virsh list: %v\n%s", err, out)
	}
	n := 0
	for _, l := range strings.Fields(string(out)) {
		if strings.Contains(l, id) {
			n++
		}
	}
	return n
}

// waitOp waits for the operation to end and returns it.
func (e *env) waitOp(c clients, id string, limit time.Duration) *pb.Operation {
	e.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := c.op.GetOperation(ctx, connect.NewRequest(&pb.GetOperationRequest{Id: id}))
		cancel()
		if err == nil && resp.Msg.Operation.State != pb.OperationState_OPERATION_STATE_RUNNING &&
			resp.Msg.Operation.State != pb.OperationState_OPERATION_STATE_UNSPECIFIED {
			return resp.Msg.Operation
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("operation %s not finished in %v (last %v, err %v)", id, limit, resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cli runs bin/plasmavmc against the first controller.
func (e *env) cli(token string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.ctrlBin, args...)
	cmd.Env = append(os.Environ(), "PLASMA_PLASMAVMC_ENDPOINTS="+strings.Join(e.urls, ","), "PLASMA_TOKEN="+token, "HOME="+e.t.TempDir())
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// qemuPID is the pid (in this PID namespace) of the QEMU running the VM's domain, found
// by its command line (the driver reports the pid inside the fake host's namespace); 0
// when there is none.
func qemuPID(id string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.HasPrefix(string(b), "/usr/bin/qemu-system") {
			continue
		}
		if strings.Contains(string(b), "guest="+driver.DomainPrefix+id) {
			pid, _ := strconv.Atoi(strings.Split(f, "/")[2])
			return pid
		}
	}
	return 0
}

var measureRE = regexp.MustCompile(`\s+`)

// measure logs a figure in a greppable line (MEASURE what: value).
func measure(t testing.TB, what string, v any) {
	t.Helper()
	t.Logf("MEASURE %s: %v", measureRE.ReplaceAllString(what, " "), v)
}
