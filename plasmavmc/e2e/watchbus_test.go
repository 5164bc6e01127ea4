package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestAgentOverWatchBus: the agent follows its assigned VMs over a real WatchBus replica
// (--watchbus-endpoints), authenticated as an IAM service account holding events.watch.
// An agent with a wrong secret gets Unauthenticated. A VM is created → RUNNING with a
// heartbeat and stopped → STOPPED through the watch; then the replica is SIGKILLed and a
// second one (the agent's other endpoint) started: a start still reaches the agent.
func TestAgentOverWatchBus(t *testing.T) {
	e := newEnv(t, envOptions{})
	dir := t.TempDir()
	iamURL, admin := startIAM(t, e, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Two roles, two service accounts, bound globally: WatchBus's own (its policy stream)
	// and the agent's (its Subscribe).
	secrets := map[string]string{}
	for _, a := range []struct{ sa, role, perm string }{
		{"watchbus", "policy-watch", "iam.policy.watch"},
		{"agent-wb1", "vm-agent", "events.watch"},
	} {
		if _, err := admin.CreateRole(ctx, &iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: a.role, Permissions: []string{a.perm}}}); err != nil {
			t.Fatal(err)
		}
		sa, err := admin.CreateServiceAccount(ctx, &iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: a.sa, RateLimitExempt: true}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
			Principal: "serviceaccount:" + a.sa, Role: a.role, Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
			t.Fatal(err)
		}
		secrets[a.sa] = filepath.Join(dir, a.sa+".secret")
		if err := os.WriteFile(secrets[a.sa], []byte(sa.ClientSecret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	wrong := filepath.Join(dir, "wrong.secret")
	if err := os.WriteFile(wrong, []byte("not-the-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Two replicas' ports; only the first runs until it is killed, so the agent (given
	// both endpoints) is on wb1 and must move to wb2.
	ports, err := harness.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	wbBin := harness.Binary(t, "plasmacloud.dev/watchbus/cmd/watchbus")
	var wbURLs []string
	wbs := make([]*harness.Process, 2)
	newWB := func(i int) *harness.Process {
		u := fmt.Sprintf("http://127.0.0.1:%d", ports[i])
		return harness.NewProcess(t, harness.ProcessConfig{Name: fmt.Sprintf("wb%d", i+1), Path: wbBin, ReadyURL: u + "/readyz",
			Args: []string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]),
				"--chainfire-endpoints", strings.Join(e.cf.Endpoints(), ","), "--iam-endpoints", iamURL,
				"--iam-client-id", "watchbus", "--iam-client-secret-file", secrets["watchbus"]}})
	}
	for i := range wbs {
		wbs[i] = newWB(i)
		wbURLs = append(wbURLs, fmt.Sprintf("http://127.0.0.1:%d", ports[i]))
	}
	start := time.Now()
	if err := wbs[0].Start(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, wbs[0])
	measure(t, "WatchBus replica start → ready", time.Since(start).Round(10*time.Millisecond))
	wbFlags := func(secret string) []string {
		return []string{"--watchbus-endpoints", strings.Join(wbURLs, ","), "--iam-endpoints", iamURL,
			"--client-id", "agent-wb1", "--client-secret-file", secret}
	}
	fh := startFakeHost(t, "a")

	// A wrong secret: the agent's WatchBus stream is refused. It runs first and alone on
	// the fake host (an agent destroys the domains of its libvirtd not assigned to it), with
	// too little capacity for any VM to be placed on it.
	t.Run("wrong secret", func(t *testing.T) {
		start := time.Now()
		bad := e.startAgent("wbbad", fh, 32, wbFlags(wrong)...)
		wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
		line, err := bad.WaitLog(wctx, regexp.MustCompile(`(?i)unauthenticated`))
		wcancel()
		if err != nil {
			t.Fatalf("agent with a wrong secret logged no Unauthenticated in 60 s: %v\n%s", err, tail(bad.Logs()))
		}
		measure(t, "wrong secret → Unauthenticated logged", time.Since(start).Round(10*time.Millisecond))
		t.Logf("wrong-secret agent: %s", strings.TrimSpace(line))
		// Not ready: its assigned VMs would never converge (it polls: the error is
		// published as it is logged).
		code, body := readyz(bad.url)
		for deadline := time.Now().Add(10 * time.Second); code == http.StatusOK && time.Now().Before(deadline); {
			time.Sleep(100 * time.Millisecond)
			code, body = readyz(bad.url)
		}
		t.Logf("wrong-secret agent /readyz: %d %s", code, strings.TrimSpace(body))
		if code == http.StatusOK {
			t.Errorf("agent with a wrong secret stays ready: %s", body)
		}
		if err := bad.Kill(); err != nil {
			t.Fatal(err)
		}
		delete(e.agents, "wbbad")
	})
	if t.Failed() {
		t.FailNow()
	}

	start = time.Now()
	ag := e.addAgent("wb1", fh, 2048, wbFlags(secrets["agent-wb1"])...)
	measure(t, "agent over WatchBus start → ready", time.Since(start).Round(10*time.Millisecond))
	if !strings.Contains(ag.Logs(), "watchbus=true") {
		t.Fatalf("agent does not say it watches over WatchBus:\n%s", tail(ag.Logs()))
	}
	c := e.api(0, "")
	e.registerImages(c)

	vm := e.create(c, "demo", "wbvm", spec())
	vm, took := e.waitVM(c, vm.Id, bootTimeout, "running with a heartbeat", running(""))
	measure(t, "create → RUNNING with a heartbeat (over WatchBus)", took.Round(10*time.Millisecond))
	if vm.Host != "wb1" {
		t.Fatalf("VM placed on %q, want wb1", vm.Host)
	}
	boot1 := vm.GetStatus().GetBootId()

	if _, err := c.vm.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: vm.Id, TimeoutSeconds: 10})); err != nil {
		t.Fatal(err)
	}
	_, took = e.waitVM(c, vm.Id, waitTimeout, "STOPPED", inState(pb.VMState_VM_STATE_STOPPED))
	measure(t, "stop → STOPPED (over WatchBus)", took.Round(10*time.Millisecond))

	// wb1 dies; the start is written while no replica runs, wb2 comes up afterwards.
	if err := wbs[0].Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if _, err := c.vm.StartVM(ctx, connect.NewRequest(&pb.StartVMRequest{Id: vm.Id})); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	if v, err := get(ctx, c, vm.Id); err == nil {
		t.Logf("2 s after the start with no WatchBus replica up: %s", v.GetStatus().GetState())
	}
	start = time.Now()
	if err := wbs[1].Start(); err != nil {
		t.Fatal(err)
	}
	waitReady(t, wbs[1])
	measure(t, "second WatchBus replica start → ready", time.Since(start).Round(10*time.Millisecond))
	_, took = e.waitVM(c, vm.Id, bootTimeout, "RUNNING (QEMU up) after the WatchBus failover", inState(pb.VMState_VM_STATE_RUNNING))
	measure(t, "wb2 ready → RUNNING (the start reached the agent; QEMU up)", took.Round(10*time.Millisecond))
	_, took2 := e.waitVM(c, vm.Id, bootTimeout, "running with a new boot after the WatchBus failover", running(boot1))
	measure(t, "wb2 ready → RUNNING with a new heartbeat", (took + took2).Round(10*time.Millisecond))
	measure(t, "wb1 SIGKILL → RUNNING again (start written during the outage)", time.Since(killed).Round(10*time.Millisecond))
	if code, body := readyz(ag.url); code != http.StatusOK {
		t.Errorf("agent not ready after the failover: %d %s", code, body)
	}
}

// startIAM starts one real IAM replica on e's ChainFire (files in dir) and returns its
// URL and a client holding the bootstrap admin's token; both end with the test.
func startIAM(t *testing.T, e *env, dir string) (string, *iamclient.Client) {
	t.Helper()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	const adminPW = "e2e-admin-pass-1234"
	if err := os.WriteFile(filepath.Join(dir, "master.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "admin.pw"), []byte(adminPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	iamURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	iam := harness.StartProcess(t, harness.ProcessConfig{Name: "iam1", Path: harness.Binary(t, "plasmacloud.dev/iam/cmd/iam"),
		ReadyURL: iamURL + "/readyz", Args: []string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
			"--chainfire-endpoints", strings.Join(e.cf.Endpoints(), ","), "--master-key-file", filepath.Join(dir, "master.key"),
			"--bootstrap-admin-password-file", filepath.Join(dir, "admin.pw"), "--key-publish-delay", "1s"}})
	waitReady(t, iam)
	base, err := iamclient.New(iamclient.Config{Endpoints: []string{iamURL}, RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { base.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := base.Token(ctx, &iamv1.TokenRequest{GrantType: "password", Username: "admin", Password: adminPW})
	if err != nil {
		t.Fatalf("admin login: %v", err)
	}
	return iamURL, base.WithToken(iamclient.StaticToken(r.AccessToken))
}

// readyz returns the status code and body of GET url/readyz (0 when unreachable).
func readyz(url string) (int, string) {
	hc := &http.Client{Timeout: 5 * time.Second}
	resp, err := hc.Get(url + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return resp.StatusCode, b.String()
}
