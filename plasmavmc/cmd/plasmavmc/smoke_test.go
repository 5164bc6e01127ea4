package main_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestServerSmoke runs the real `plasmavmc server --auth none` against a real ChainFire,
// registers a host by hand as an agent would, and drives the client commands: image
// register, vm create → SCHEDULED, list, show, stop, host list, operation show, host
// get/events/drain/undrain, vm migrate (refused); then a graceful SIGTERM.
func TestServerSmoke(t *testing.T) {
	cf := chainfiretest.Start(t, 1, chainfiretest.Options{})
	bin := harness.Build(t, "plasmacloud.dev/plasmavmc/cmd/plasmavmc")
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	p := harness.StartProcess(t, harness.ProcessConfig{Name: "plasmavmc", Path: bin, ReadyURL: u + "/readyz",
		Args: []string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--auth", "none",
			"--chainfire-endpoints", strings.Join(cf.Endpoints(), ","), "--leader-lease-ttl", "2s", "--log-level", "debug",
			"--health-interval", "200ms", "--fence-delay", "3s", "--migration-timeout", "90s", "--migration-auto-converge=false"}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	// A host, as an agent registers it.
	c, err := chainfire.New(chainfire.Config{Endpoints: cf.Endpoints()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st := state.New(c, nil)
	if err := st.RegisterHost(ctx, &pb.Host{Name: "h1", Capacity: &pb.Resources{Vcpus: 4, MemoryMib: 4096}, Pools: []string{"local"}, AgentVersion: "smoke"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, state.AliveKey("h1"), "agent-1"); err != nil {
		t.Fatal(err)
	}

	cli := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = append(cmd.Environ(), "PLASMA_PLASMAVMC_ENDPOINTS="+u, "PLASMA_TOKEN=", "HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := cli(args...)
		if err != nil {
			t.Fatalf("plasmavmc %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	must("image", "register", "tiny-kernel", "--pool", "local", "--format", "kernel", "--path", "tiny/vmlinuz")
	must("image", "register", "tiny-initrd", "--pool", "local", "--format", "initrd", "--path", "tiny/initrd")
	out := must("vm", "create", "web", "--project", "demo", "--vcpus", "1", "--memory", "128",
		"--kernel", "tiny-kernel", "--initrd", "tiny-initrd", "--request-id", "smoke-1", "-o", "json")
	var created struct {
		VM *struct {
			ID string `json:"id"`
		} `json:"vm"`
		Operation *struct {
			ID string `json:"id"`
		} `json:"operation"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.VM == nil {
		t.Fatalf("create output %q: %v", out, err)
	}
	id := created.VM.ID
	// The same request id again: the same VM.
	again := must("vm", "create", "web", "--project", "demo", "--vcpus", "1", "--memory", "128",
		"--kernel", "tiny-kernel", "--initrd", "tiny-initrd", "--request-id", "smoke-1", "-o", "json")
	if !strings.Contains(again, id) {
		t.Fatalf("retry made another VM: %s", again)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		out = must("vm", "show", id, "-o", "json")
		if strings.Contains(out, `"VM_STATE_SCHEDULED"`) && strings.Contains(strings.ReplaceAll(out, " ", ""), `"host":"h1"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not scheduled: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out = must("vm", "list"); !strings.Contains(out, "scheduled") || !strings.Contains(out, "web") {
		t.Fatalf("vm list:\n%s", out)
	}
	if out = must("host", "list"); !strings.Contains(out, "h1") || !strings.Contains(out, "up") || !strings.Contains(out, "128/4096") {
		t.Fatalf("host list:\n%s", out)
	}
	if out = must("vm", "stop", id, "--force"); !strings.Contains(out, "vm.stop") {
		t.Fatalf("vm stop:\n%s", out)
	}
	if out = must("operation", "show", created.Operation.ID); !strings.Contains(out, "vm.create") {
		t.Fatalf("operation show:\n%s", out)
	}
	// Bad input: the CLI exits non-zero with the code and the field.
	out, err = cli("vm", "create", "big", "--project", "demo", "--memory", "999999", "--kernel", "tiny-kernel")
	if err == nil || !strings.Contains(out, "invalid_argument") || !strings.Contains(out, "memory_mib") {
		t.Fatalf("oversized create: %v\n%s", err, out)
	}
	out, err = cli("vm", "show", "not-an-id")
	if err == nil || !strings.Contains(out, "invalid_argument") {
		t.Fatalf("bad id: %v\n%s", err, out)
	}
	// HA verbs: host get/events, vm migrate refused for a VM that does not run, a drain
	// that cannot move the (stopped, host-local) VM fails naming it, undrain.
	if out = must("host", "get", "h1"); !strings.Contains(strings.ReplaceAll(out, " ", ""), `"state":"HOST_STATE_UP"`) {
		t.Fatalf("host get:\n%s", out)
	}
	deadline = time.Now().Add(15 * time.Second)
	for {
		out = must("host", "events", "h1")
		if strings.Contains(out, "h1") && strings.Contains(out, "up") && strings.Contains(out, "agent alive") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host events:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err = cli("vm", "migrate", id, "--to", "h1", "--timeout", "30s")
	if err == nil || !strings.Contains(out, "failed_precondition") || !strings.Contains(out, "not running") {
		t.Fatalf("vm migrate of a stopped VM: %v\n%s", err, out)
	}
	out, err = cli("host", "drain", "h1", "--wait", "--wait-timeout", "20s")
	if err == nil || !strings.Contains(out, "host.drain") || !strings.Contains(out, "drain failed") || !strings.Contains(out, "VM web ("+id+"): no host has room") {
		t.Fatalf("host drain: %v\n%s", err, out)
	}
	if out = must("host", "list"); !strings.Contains(out, "maintenance") || !strings.Contains(out, "drained") {
		t.Fatalf("host list after drain:\n%s", out)
	}
	if out = must("host", "undrain", "h1"); !strings.Contains(out, "up") {
		t.Fatalf("host undrain:\n%s", out)
	}
	// /readyz says loudly that auth is off; metrics are served.
	resp, err := exec.CommandContext(ctx, "curl", "-s", u+"/readyz").Output()
	if err == nil && !strings.Contains(string(resp), "AUTH DISABLED") {
		t.Fatalf("/readyz: %s", resp)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(15 * time.Second)
	for p.Running() {
		if time.Now().After(deadline) {
			t.Fatal("server did not exit after SIGTERM")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Leadership was handed over: the leader key is gone.
	g, err := c.Get(ctx, state.KeyLeader)
	if err != nil || len(g.Kvs) != 0 {
		t.Fatalf("leader key after SIGTERM: %v %v", g, err)
	}
}
