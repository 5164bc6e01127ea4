package driver_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"plasmacloud.dev/plasmavmc/internal/driver"
	"plasmacloud.dev/plasmavmc/internal/guest/guestlab"
)

// hostsDir is where scripts/libvirt.sh keeps its fake hosts.
const hostsDir = "/tmp/plasma-hosts"

// keepHostsEnv, when set, leaves the fake hosts of a failed test running (with their logs and
// the VMs' state directories) for a post-mortem.
const keepHostsEnv = "PLASMAVMC_KEEP_FAKE_HOSTS"

// fakeHost is one fake host (scripts/libvirt.sh host: a libvirtd in its own PID + mount
// namespace and cgroup) with a driver on it.
type fakeHost struct {
	*eventLog
	name     string
	uri      string // its libvirt URI, also the peer-to-peer migration URI
	stateDir string
	d        *driver.Libvirt
}

func libvirtSh(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command(filepath.Join(guestlab.RepoRoot(t), "scripts", "libvirt.sh"), args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("scripts/libvirt.sh %s: %v\n%s", strings.Join(args, " "), err, ee.Stderr)
		}
		t.Fatalf("scripts/libvirt.sh %s: %v", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out))
}

// hostName is a fake host name unique to this test process.
func hostName(suffix string) string {
	return fmt.Sprintf("drv%d-%s", os.Getpid(), suffix)
}

// startFakeHost starts a fake host and opens a driver on it; both go (the host fenced and
// removed) when the test ends.
func startFakeHost(t testing.TB, suffix string) *fakeHost {
	t.Helper()
	name := hostName(suffix)
	t.Cleanup(func() {
		if t.Failed() && os.Getenv(keepHostsEnv) != "" {
			t.Logf("%s set: fake host %s left running for a post-mortem (scripts/libvirt.sh host remove %s)", keepHostsEnv, name, name)
			return
		}
		if out, err := exec.Command(filepath.Join(guestlab.RepoRoot(t), "scripts", "libvirt.sh"), "host", "remove", name).CombinedOutput(); err != nil {
			t.Logf("scripts/libvirt.sh host remove %s: %v\n%s", name, err, out)
		}
	})
	libvirtSh(t, "host", "start", name)
	// Short: the heartbeat socket lives under it (unix socket paths are limited to 107 bytes).
	state, err := os.MkdirTemp("/tmp", "pvmc-"+suffix+"-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() || os.Getenv(keepHostsEnv) == "" {
			os.RemoveAll(state)
		}
	})
	h := &fakeHost{name: name, uri: libvirtSh(t, "host", "uri", name), stateDir: state}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	h.d, err = driver.Open(ctx, driver.Config{
		Socket:    filepath.Join(hostsDir, name, "run", "libvirt-sock"),
		RunDir:    filepath.Join(hostsDir, name, "run", "qemu"),
		StateDir:  state,
		RedialMax: time.Second,
		Log:       slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo})).With("host", suffix),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.d.Close() })
	h.eventLog = recordEvents(t, h.d)
	return h
}

// initPID is the host's namespace init as the root namespace sees it.
func (h *fakeHost) initPID(t testing.TB) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(hostsDir, h.name, "init.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// restartLibvirtd SIGKILLs the host's libvirtd (QEMUs stay) and starts it again in the host's
// namespaces.
func (h *fakeHost) restartLibvirtd(t testing.TB) {
	t.Helper()
	init := h.initPID(t)
	files, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", init))
	killed := false
	for _, f := range files {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile("/proc/" + s + "/comm")
			if strings.TrimSpace(string(comm)) == "libvirtd" {
				pid, _ := strconv.Atoi(s)
				if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				killed = true
			}
		}
	}
	if !killed {
		t.Fatalf("no libvirtd under %s's init %d", h.name, init)
	}
	time.Sleep(200 * time.Millisecond)
	out, err := exec.Command("nsenter", "-t", strconv.Itoa(init), "-m", "-p", "--",
		"/usr/sbin/libvirtd", "-d", "-p", "/run/libvirt/libvirtd.pid").CombinedOutput()
	if err != nil {
		t.Fatalf("restarting libvirtd in %s: %v\n%s", h.name, err, out)
	}
}

// The isolate helper: this test binary re-executed with dialHelperEnv set reads commands on
// stdin and answers one line each on stdout: "dial ADDR" (connect, 2 s timeout; the connection
// is kept), "echo" (send a line on it and read it back, 2 s timeout). Answers: "ok" or "err ...".
const dialHelperEnv = "PLASMAVMC_DRIVER_TEST_DIAL_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(dialHelperEnv) == "1" {
		dialHelper(os.Stdin, os.Stdout)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func dialHelper(in io.Reader, out io.Writer) {
	var conn net.Conn
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		var err error
		switch cmd {
		case "dial":
			var c net.Conn
			if c, err = net.DialTimeout("tcp", arg, 2*time.Second); err == nil {
				if conn != nil {
					conn.Close()
				}
				conn = c
			}
		case "echo":
			if conn == nil {
				err = errors.New("no connection")
				break
			}
			conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err = io.WriteString(conn, "ping\n"); err == nil {
				var line string
				line, err = bufio.NewReader(conn).ReadString('\n')
				if err == nil && line != "ping\n" {
					err = fmt.Errorf("got %q", line)
				}
			}
		default:
			err = fmt.Errorf("unknown command %q", cmd)
		}
		if err != nil {
			fmt.Fprintf(out, "err %v\n", err)
		} else {
			fmt.Fprintln(out, "ok")
		}
	}
}

// helper is a running dial helper.
type helper struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// startHelper starts a dial helper, inside the cgroup directory cg when it is not "".
func startHelper(t *testing.T, cg string) *helper {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), dialHelperEnv+"=1")
	if cg != "" {
		f, err := os.Open(cg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
	return &helper{cmd: cmd, in: in, out: bufio.NewScanner(out)}
}

// do sends one command and returns the answer.
func (h *helper) do(t *testing.T, cmd string) string {
	t.Helper()
	if _, err := fmt.Fprintln(h.in, cmd); err != nil {
		t.Fatal(err)
	}
	if !h.out.Scan() {
		t.Fatalf("helper: no answer to %q: %v", cmd, h.out.Err())
	}
	return h.out.Text()
}

// echoServer accepts connections and echoes lines until the test ends.
func echoServer(t *testing.T) (addr string, port int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String(), ln.Addr().(*net.TCPAddr).Port
}

// TestFakeHostIsolate checks scripts/libvirt.sh host cgroup/isolate/heal: TCP from the host's
// cgroup to the isolated ports is dropped, nothing else is, and heal restores it. No libvirtd
// is needed for this.
func TestFakeHostIsolate(t *testing.T) {
	guestlab.BuildGuest(t) // root, and the lab's scripts
	name := hostName("iso")
	t.Cleanup(func() { libvirtSh(t, "host", "remove", name) })
	cg := libvirtSh(t, "host", "cgroup", name)
	if cg != "/sys/fs/cgroup/plasma-hosts/"+name && cg != "/sys/fs/cgroup/unified/plasma-hosts/"+name {
		t.Fatalf("host cgroup = %q", cg)
	}
	cut, cutPort := echoServer(t)
	other, _ := echoServer(t)

	inside := startHelper(t, cg)
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", inside.cmd.Process.Pid)); err != nil || !strings.Contains(string(b), "/plasma-hosts/"+name) {
		t.Fatalf("helper not in the host's cgroup: %s %v", b, err)
	}
	outside := startHelper(t, "")
	// Connected before the cut: a socket created in the cgroup is cut too.
	early := startHelper(t, cg)
	if got := early.do(t, "dial "+cut); got != "ok" {
		t.Fatalf("dial before isolate: %s", got)
	}
	// Created outside, moved in later: its socket stays outside the cut (a socket belongs to the
	// cgroup its creator was in).
	moved := startHelper(t, "")
	if got := moved.do(t, "dial "+cut); got != "ok" {
		t.Fatalf("dial before isolate: %s", got)
	}
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(moved.cmd.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}

	libvirtSh(t, "host", "isolate", name, strconv.Itoa(cutPort))
	t.Cleanup(func() { libvirtSh(t, "host", "heal", name) })
	for _, c := range []struct {
		name string
		h    *helper
		cmd  string
		ok   bool
	}{
		{"in the cgroup: new connection to a cut port", inside, "dial " + cut, false},
		{"in the cgroup: another port", inside, "dial " + other, true},
		{"in the cgroup: connection made before the cut", early, "echo", false},
		{"outside the cgroup: cut port", outside, "dial " + cut, true},
		{"moved in after connecting: old connection", moved, "echo", true},
		{"moved in: new connection", moved, "dial " + cut, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := c.h.do(t, c.cmd)
			if (got == "ok") != c.ok {
				t.Fatalf("%s: %s, want ok=%v", c.cmd, got, c.ok)
			}
		})
	}

	libvirtSh(t, "host", "heal", name)
	t.Run("healed", func(t *testing.T) {
		if got := inside.do(t, "dial "+cut); got != "ok" {
			t.Fatalf("dial after heal: %s", got)
		}
		if got := inside.do(t, "echo"); got != "ok" {
			t.Fatalf("echo after heal: %s", got)
		}
		if out, err := exec.Command("nft", "list", "chain", "inet", "plasma_hosts", "h_"+name).CombinedOutput(); err == nil {
			t.Fatalf("chain left after heal:\n%s", out)
		}
	})
}
