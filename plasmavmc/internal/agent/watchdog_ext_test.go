package agent_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/plasmavmc/internal/agent"
)

const agentPkg = "plasmacloud.dev/plasmavmc/cmd/plasmavmc-agent"

// shortDir is a state directory short enough for unix sockets.
func shortDir(t *testing.T) string {
	dir, err := os.MkdirTemp("/tmp", "pvw-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// killWatchdog ends the watchdog of dir (by its pid file) and waits for it to exit.
func killWatchdog(t *testing.T, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, agent.WatchdogPIDName))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(10 * time.Second)
	for syscall.Kill(pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
}

// wdStatus queries the watchdog of dir (zero and an error when it does not answer).
func wdStatus(dir string) (agent.WatchdogStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return agent.QueryWatchdog(ctx, dir, nil, "")
}

func wdPet(t *testing.T, dir string, remaining time.Duration) agent.WatchdogStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := agent.QueryWatchdog(ctx, dir, &remaining, "test")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestWatchdogProcess runs the real `plasmavmc-agent watchdog` (no libvirtd behind it:
// its fence can only begin, which is what this test looks at; the lab test watches it
// destroy real domains): it starts idle, a second one for the same state directory exits
// at once, pets keep it armed and quiet, and once they stop it fences when the last
// pet's validity runs out.
func TestWatchdogProcess(t *testing.T) {
	bin := harness.Binary(t, agentPkg)
	dir := shortDir(t)
	args := []string{"watchdog", "--state-dir", dir, "--libvirt-socket", filepath.Join(dir, "no-libvirtd.sock"), "--host-name", "w"}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = testWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	waitFor(t, 10*time.Second, "watchdog answering", func() bool { _, err := wdStatus(dir); return err == nil })

	t.Run("single-instance", func(t *testing.T) {
		st, _ := wdStatus(dir)
		if st.State != "idle" || st.PID != cmd.Process.Pid {
			t.Fatalf("status: %+v", st)
		}
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "already runs") {
			t.Fatalf("second watchdog: %v\n%s", err, out)
		}
	})

	t.Run("pets-keep-it-quiet", func(t *testing.T) {
		for range 15 {
			if st := wdPet(t, dir, time.Second); st.State != "armed" {
				t.Fatalf("status after a pet: %+v", st)
			}
			time.Sleep(200 * time.Millisecond)
		}
		if st, _ := wdStatus(dir); st.Fences != 0 || st.State != "armed" {
			t.Fatalf("status: %+v", st)
		}
	})

	t.Run("no-pets-fences", func(t *testing.T) {
		wdPet(t, dir, 500*time.Millisecond)
		deadline := time.Now().Add(500 * time.Millisecond)
		waitFor(t, 5*time.Second, "watchdog fencing", func() bool { st, _ := wdStatus(dir); return st.State == "fencing" })
		t.Logf("MEASURE watchdog: fencing began %v after the pet's validity ran out (no libvirtd: it retries)",
			time.Since(deadline).Round(time.Millisecond))
		if time.Now().Before(deadline) {
			t.Fatal("fenced before the validity ran out")
		}
	})
}

// TestWatchdogHandover runs in-process agents (fake hypervisor, real ChainFire) that
// start the real watchdog: the first agent starts it and pets it; replacing the agent
// (stopped, a new one started) hands the pets over without a fence; with no agent the
// watchdog fences once the last validity runs out.
func TestWatchdogHandover(t *testing.T) {
	bin := harness.Binary(t, agentPkg)
	l, fnet := newFakeLab(t, 1, chainfiretest.Options{})
	h := l.fakeHost(fnet, "a")
	t.Cleanup(func() { killWatchdog(t, h.stateDir) })
	config := func() agent.Config {
		cfg := l.fakeConfig(h)
		cfg.LeaseTTL, cfg.FenceMargin = 4*time.Second, time.Second
		cfg.NoWatchdog, cfg.WatchdogCommand = false, []string{bin, "watchdog"}
		cfg.LibvirtSocket = filepath.Join(h.stateDir, "no-libvirtd.sock") // the watchdog must not touch a real libvirtd
		return cfg
	}
	stop1 := l.runAgent(config())
	var first agent.WatchdogStatus
	waitFor(t, 20*time.Second, "watchdog started by the agent and armed", func() bool {
		st, err := wdStatus(h.stateDir)
		first = st
		inst, _ := l.alive("a")
		return err == nil && st.State == "armed" && st.Instance == inst && inst != ""
	})
	t.Logf("watchdog pid %d armed by instance %s", first.PID, first.Instance)

	stop1()
	time.Sleep(500 * time.Millisecond) // the agent is down for a moment
	l.runAgent(config())
	waitFor(t, 10*time.Second, "new agent petting", func() bool {
		st, _ := wdStatus(h.stateDir)
		return st.Instance != "" && st.Instance != first.Instance
	})
	time.Sleep(5 * time.Second) // longer than a lease's validity
	st, err := wdStatus(h.stateDir)
	if err != nil || st.PID != first.PID || st.Fences != 0 || st.State != "armed" {
		t.Fatalf("after the agent restart: %+v %v (want the same watchdog, armed, no fence)", st, err)
	}
	if b, _ := os.ReadFile(filepath.Join(h.stateDir, agent.WatchdogLogName)); strings.Contains(string(b), "SELF-FENCE") {
		t.Fatalf("watchdog fenced:\n%s", b)
	}
}
