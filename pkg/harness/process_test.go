package harness_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
)

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// procState returns the state letter of /proc/PID/stat (R, S, T, Z, ...), or "" when the
// process is gone.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	// The command name is in parentheses and may contain spaces; the state follows it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// waitState polls until pid's state satisfies ok or the deadline passes.
func waitState(t *testing.T, pid int, ok func(string) bool, what string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := procState(pid)
		if ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d: state %q, want %s", pid, st, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -2
}

func TestExitAndLogs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		wantCode int // 0 means Wait returns nil
		wantLogs []string
	}{
		{"stdout and stderr", []string{"print", "a", "b"}, 0, []string{"out:a\n", "err:a\n", "out:b\n", "err:b\n"}},
		{"exit status", []string{"exit", "3"}, 3, []string{"ended at", "exit status 3"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := harness.StartProcess(t, helper(t, "p", tt.args...))
			err := p.Wait(testContext(t))
			if tt.wantCode == 0 && err != nil {
				t.Fatalf("Wait = %v, want nil", err)
			}
			if tt.wantCode != 0 && exitCode(err) != tt.wantCode {
				t.Fatalf("Wait = %v, want exit status %d", err, tt.wantCode)
			}
			if p.Running() {
				t.Error("Running after exit")
			}
			logs := p.Logs()
			for _, want := range append(tt.wantLogs, "=== harness: p start #1") {
				if !strings.Contains(logs, want) {
					t.Errorf("logs lack %q:\n%s", want, logs)
				}
			}
			if !strings.HasSuffix(p.LogPath(), "p.log") {
				t.Errorf("LogPath = %q", p.LogPath())
			}
		})
	}
}

func TestKill(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	p := harness.StartProcess(t, helper(t, "k", "sleep"))
	if _, err := p.WaitLog(ctx, regexp.MustCompile(`ready`)); err != nil {
		t.Fatal(err)
	}
	pid := p.Pid()
	if err := p.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if p.Running() {
		t.Fatal("Running after Kill")
	}
	if st := procState(pid); st != "" {
		t.Errorf("pid %d still exists in state %q after Kill", pid, st)
	}
	if err := p.Wait(ctx); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Wait after Kill = %v, want signal: killed", err)
	}
	if err := p.Kill(); !errors.Is(err, harness.ErrNotRunning) {
		t.Errorf("second Kill = %v, want ErrNotRunning", err)
	}
	for name, f := range map[string]func() error{"Stop": p.Stop, "Cont": p.Cont, "Terminate": func() error { return p.Terminate(time.Second) }} {
		if err := f(); !errors.Is(err, harness.ErrNotRunning) {
			t.Errorf("%s after exit = %v, want ErrNotRunning", name, err)
		}
	}
}

func TestStopCont(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	p := harness.StartProcess(t, helper(t, "s", "sleep"))
	if _, err := p.WaitLog(ctx, regexp.MustCompile(`ready`)); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	waitState(t, p.Pid(), func(s string) bool { return s == "T" }, "T (stopped)")
	if !p.Running() {
		t.Error("a stopped process must count as running")
	}
	if err := p.Cont(); err != nil {
		t.Fatalf("Cont: %v", err)
	}
	waitState(t, p.Pid(), func(s string) bool { return s == "S" || s == "R" }, "S or R (running)")
}

func TestTerminate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		args     []string
		stop     bool // SIGSTOP before Terminate
		timeout  time.Duration
		wantErr  error // errors.Is target
		wantCode int   // exit status when wantErr is nil; 0 means nil error
		wantLog  string
	}{
		{name: "graceful", args: []string{"graceful", "0"}, timeout: 10 * time.Second, wantLog: "got SIGTERM"},
		{name: "exit status", args: []string{"graceful", "4"}, timeout: 10 * time.Second, wantCode: 4},
		{name: "stopped first", args: []string{"graceful", "0"}, stop: true, timeout: 10 * time.Second, wantLog: "got SIGTERM"},
		{name: "ignores SIGTERM", args: []string{"ignore-term"}, timeout: 300 * time.Millisecond, wantErr: harness.ErrTerminateTimeout, wantLog: "signal: killed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := harness.StartProcess(t, helper(t, "t", tt.args...))
			if _, err := p.WaitLog(testContext(t), regexp.MustCompile(`ready`)); err != nil {
				t.Fatal(err)
			}
			if tt.stop {
				if err := p.Stop(); err != nil {
					t.Fatal(err)
				}
				waitState(t, p.Pid(), func(s string) bool { return s == "T" }, "T (stopped)")
			}
			err := p.Terminate(tt.timeout)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Terminate = %v, want %v", err, tt.wantErr)
				}
			case tt.wantCode != 0:
				if exitCode(err) != tt.wantCode {
					t.Fatalf("Terminate = %v, want exit status %d", err, tt.wantCode)
				}
			case err != nil:
				t.Fatalf("Terminate = %v, want nil", err)
			}
			if p.Running() {
				t.Error("Running after Terminate")
			}
			if tt.wantLog != "" && !strings.Contains(p.Logs(), tt.wantLog) {
				t.Errorf("logs lack %q:\n%s", tt.wantLog, p.Logs())
			}
		})
	}
}

func TestRestart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	p := harness.StartProcess(t, helper(t, "r", "sleep", "--data-dir", "/somewhere"))
	ready := regexp.MustCompile(`ready pid=(\d+) args=(.*)`)
	first, err := p.WaitLog(ctx, ready)
	if err != nil {
		t.Fatal(err)
	}
	pid1 := p.Pid()
	if err := p.Start(); !errors.Is(err, harness.ErrRunning) {
		t.Errorf("Start while running = %v, want ErrRunning", err)
	}
	if err := p.Restart(); err != nil { // kills the running process first
		t.Fatalf("Restart: %v", err)
	}
	second, err := p.WaitLog(ctx, ready) // only the new run's output counts
	if err != nil {
		t.Fatal(err)
	}
	if pid2 := p.Pid(); pid2 == pid1 || second != fmt.Sprintf("ready pid=%d args=sleep --data-dir /somewhere", pid2) {
		t.Errorf("after Restart: pid %d (was %d), line %q (was %q)", pid2, pid1, second, first)
	}
	if procState(pid1) != "" {
		t.Errorf("old pid %d still exists", pid1)
	}
	// Restart of an exited process just starts it, with arguments changed by SetArgs.
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	p.SetArgs("sleep", "--data-dir", "/elsewhere")
	if err := p.Restart(); err != nil {
		t.Fatal(err)
	}
	if m, err := p.WaitLog(ctx, ready); err != nil || !strings.HasSuffix(m, "/elsewhere") {
		t.Errorf("after SetArgs: %q, %v", m, err)
	}
	logs := p.Logs()
	for _, want := range []string{"start #1", "start #2", "start #3", "signal: killed"} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

func TestWaitLogExited(t *testing.T) {
	t.Parallel()
	p := harness.StartProcess(t, helper(t, "w", "exit", "1"))
	_, err := p.WaitLog(testContext(t), regexp.MustCompile(`never printed`))
	if err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("WaitLog on exiting process = %v, want an error saying it exited", err)
	}
}

func TestWaitReady(t *testing.T) {
	t.Parallel()
	ports, err := harness.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("becomes ready", func(t *testing.T) {
		t.Parallel()
		addr := "127.0.0.1:" + strconv.Itoa(ports[0])
		cfg := helper(t, "ready", "serve", addr, "300ms")
		cfg.ReadyURL = "http://" + addr + "/readyz"
		p := harness.StartProcess(t, cfg)
		start := time.Now()
		if err := p.WaitReady(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d < 250*time.Millisecond {
			t.Errorf("ready after %v, before the server said so", d)
		}
	})
	t.Run("exits instead", func(t *testing.T) {
		t.Parallel()
		cfg := helper(t, "dies", "exit", "1")
		cfg.ReadyURL = fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[1])
		p := harness.NewProcess(t, cfg)
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		err := p.WaitReady(testContext(t))
		if !errors.Is(err, harness.ErrNotRunning) {
			t.Fatalf("WaitReady = %v, want ErrNotRunning", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
		defer cancel()
		err := harness.WaitHTTP(ctx, fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[1]), 200)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("WaitHTTP = %v, want DeadlineExceeded", err)
		}
	})
}

// TestCleanupKillsGroup checks that a test's end kills the processes its processes
// started, not only the processes themselves.
func TestCleanupKillsGroup(t *testing.T) {
	t.Parallel()
	var child, parent int
	t.Run("inner", func(t *testing.T) {
		p := harness.StartProcess(t, helper(t, "spawner", "spawn"))
		m, err := p.WaitLog(testContext(t), regexp.MustCompile(`child pid=(\d+)`))
		if err != nil {
			t.Fatal(err)
		}
		child, _ = strconv.Atoi(strings.TrimPrefix(m, "child pid="))
		parent = p.Pid()
	})
	if child == 0 {
		t.Fatal("no child pid")
	}
	for _, pid := range []int{parent, child} {
		// An orphan is reparented and reaped by init or a subreaper: gone or a zombie.
		waitState(t, pid, func(s string) bool { return s == "" || s == "Z" }, "gone")
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	c := harness.NewCluster(t)
	for i := range 3 {
		c.Add(helper(t, fmt.Sprintf("n%d", i+1), "graceful", "0"))
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	if got := len(c.Running()); got != 3 {
		t.Fatalf("%d running, want 3", got)
	}
	if err := c.WaitReady(ctx); err != nil { // no ReadyURLs: nothing to wait for
		t.Fatal(err)
	}
	if err := c.Proc(1).Kill(); err != nil {
		t.Fatal(err)
	}
	if got := len(c.Running()); got != 2 {
		t.Fatalf("%d running after one Kill, want 2", got)
	}
	if err := c.Start(); err != nil { // starts only the dead one
		t.Fatal(err)
	}
	// Every helper must have installed its SIGTERM handler ("ready") before Terminate.
	for _, p := range c.Procs() {
		if _, err := p.WaitLog(ctx, regexp.MustCompile("ready")); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Terminate(10 * time.Second); err != nil {
		t.Fatalf("Terminate: %v", err)
	}
	for _, p := range c.Procs() {
		if p.Running() || !strings.Contains(p.Logs(), "got SIGTERM") {
			t.Errorf("%v: running=%v, logs:\n%s", p, p.Running(), p.Logs())
		}
	}
	if err := c.Kill(); err != nil { // nothing left to kill
		t.Errorf("Kill of an exited cluster = %v", err)
	}
}

func TestFreePorts(t *testing.T) {
	t.Parallel()
	seen := map[int]bool{}
	for range 5 {
		ps, err := harness.FreePorts(20)
		if err != nil {
			t.Fatal(err)
		}
		if len(ps) != 20 {
			t.Fatalf("got %d ports, want 20", len(ps))
		}
		for _, p := range ps {
			if seen[p] {
				t.Fatalf("port %d handed out twice", p)
			}
			seen[p] = true
			if p < 1024 || p > 65535 {
				t.Fatalf("port %d out of range", p)
			}
		}
	}
	if _, err := harness.FreePorts(0); err == nil {
		t.Error("FreePorts(0) succeeded")
	}
}

func TestSignalExitedPid(t *testing.T) {
	t.Parallel()
	p := harness.StartProcess(t, helper(t, "x", "exit", "0"))
	if err := p.Wait(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGUSR1); !errors.Is(err, harness.ErrNotRunning) {
		t.Errorf("Signal after exit = %v, want ErrNotRunning", err)
	}
	if p.Pid() == 0 {
		t.Error("Pid after exit is 0, want the last pid")
	}
}

func TestWaitNeverStarted(t *testing.T) {
	t.Parallel()
	p := harness.NewProcess(t, helper(t, "n", "sleep"))
	if err := p.Wait(testContext(t)); !errors.Is(err, harness.ErrNotRunning) {
		t.Errorf("Wait = %v, want ErrNotRunning", err)
	}
	if p.Running() || p.Pid() != 0 || p.Logs() != "" {
		t.Errorf("never started: running=%v pid=%d logs=%q", p.Running(), p.Pid(), p.Logs())
	}
}
