package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Errors returned by Process methods; wrapped with context, test them with errors.Is.
var (
	// ErrNotRunning means the call needs a running process and there is none: it was
	// never started, or it has exited (after Kill, Terminate, or on its own).
	ErrNotRunning = errors.New("harness: process not running")
	// ErrRunning means Start was called on a process that is still running.
	ErrRunning = errors.New("harness: process already running")
	// ErrTerminateTimeout means the process did not exit within the deadline after
	// SIGTERM and was killed with SIGKILL.
	ErrTerminateTimeout = errors.New("harness: process did not exit after SIGTERM; killed")
)

// killWait bounds how long Kill waits for the kernel to reap a SIGKILLed process. It only
// trips when the process is stuck in uninterruptible sleep (a hung disk or NFS).
const killWait = 30 * time.Second

// ProcessConfig describes a child process. Only Name and Path are required.
type ProcessConfig struct {
	// Name identifies the process in messages and names its log file; it must be a
	// valid file name and unique among the test's processes (e.g. "cf1").
	Name string
	// Path is the executable, usually from Binary.
	Path string
	// Args are the arguments after the program name. They are reused as they are by
	// Restart; SetArgs changes them for the next start.
	Args []string
	// Env holds extra "KEY=value" entries appended to the test's own environment.
	Env []string
	// Dir is the working directory; empty means the process's own directory under the
	// test's temporary directory (the one holding its log).
	Dir string
	// ReadyURL, when set, is the URL WaitReady polls until it answers 200 OK, such as
	// "http://127.0.0.1:2379/readyz".
	ReadyURL string
	// Wrap, when set, rewrites the full argv (program first) just before each start.
	// It is the hook for running a process under another program that execs it in place,
	// such as `ip netns exec NAME`, so that the pid, the signals and the log all still
	// belong to the wrapped program.
	Wrap func(argv []string) []string
}

// Process is a child process of a test, restartable any number of times on the same
// configuration. Its stdout and stderr go, interleaved and unbuffered, to one log file
// that accumulates every run, each run headed by a "=== harness:" line.
//
// All methods are safe for concurrent use. Signals go to the process itself, not to its
// children, as a crash or a hang of that one process would; when its test ends, the
// harness kills the process's whole process group, so children it started do not
// outlive the test. Children die with the test binary too (SIGKILL as parent-death
// signal), so a test binary killed by go test's -timeout leaves no process behind.
type Process struct {
	t       testing.TB
	name    string
	cfg     ProcessConfig // Args guarded by mu
	dir     string        // per-process temp dir holding the log
	logPath string

	mu     sync.Mutex
	run    *run  // current or last run; nil before the first Start
	starts int   // number of successful starts
	groups []int // process group ids of all runs, killed at cleanup
}

// run is one execution of a Process: from Start until the kernel reaps it.
type run struct {
	cmd    *exec.Cmd
	pid    int
	logOff int64         // size of the log when this run started
	done   chan struct{} // closed after cmd.Wait returned and err is set
	err    error         // exit error from cmd.Wait; read only after done is closed
}

func (r *run) exited() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// NewProcess returns a Process for cfg that is not started yet. The process belongs to t:
// when t ends (t.Cleanup) it is killed with its process group and, if t failed, the tail
// of its log is printed. NewProcess fails the test when cfg is incomplete.
func NewProcess(t testing.TB, cfg ProcessConfig) *Process {
	t.Helper()
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, `/\`) {
		t.Fatalf("harness: ProcessConfig.Name %q must be a non-empty file name", cfg.Name)
	}
	if cfg.Path == "" {
		t.Fatalf("harness: ProcessConfig.Path of %s is empty", cfg.Name)
	}
	cfg.Args = append([]string(nil), cfg.Args...)
	cfg.Env = append([]string(nil), cfg.Env...)
	// t.TempDir registers its removal before our cleanup below, so cleanups (which run
	// last-in first-out) kill the process and report its log before the log is removed.
	dir := t.TempDir()
	p := &Process{
		t:       t,
		name:    cfg.Name,
		cfg:     cfg,
		dir:     dir,
		logPath: filepath.Join(dir, cfg.Name+".log"),
	}
	t.Cleanup(p.cleanup)
	return p
}

// StartProcess is NewProcess followed by Start; it fails the test if the process cannot
// be started.
func StartProcess(t testing.TB, cfg ProcessConfig) *Process {
	t.Helper()
	p := NewProcess(t, cfg)
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	return p
}

// Name returns ProcessConfig.Name.
func (p *Process) Name() string { return p.name }

// LogPath returns the path of the process's log file, which exists after the first Start.
func (p *Process) LogPath() string { return p.logPath }

// Dir returns the process's private temporary directory, which holds its log and is
// its working directory unless ProcessConfig.Dir says otherwise.
func (p *Process) Dir() string { return p.dir }

// ReadyURL returns ProcessConfig.ReadyURL.
func (p *Process) ReadyURL() string { return p.cfg.ReadyURL }

// Args returns a copy of the arguments the next start will use.
func (p *Process) Args() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.cfg.Args...)
}

// SetArgs replaces the arguments for the next Start or Restart (a running process is
// not affected), e.g. to restart a node with `--initial-cluster-state existing`.
func (p *Process) SetArgs(args ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cfg.Args = append([]string(nil), args...)
}

// Start starts the process. It returns ErrRunning if the process is still running; a
// process that has exited can be started again (that is what Restart does).
func (p *Process) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.startLocked()
}

func (p *Process) startLocked() error {
	if p.run != nil && !p.run.exited() {
		return fmt.Errorf("%s: %w (pid %d)", p.name, ErrRunning, p.run.pid)
	}
	cmd := p.command()
	log, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("harness: %s: %w", p.name, err)
	}
	defer log.Close() // the child has its own descriptor once started
	st, err := log.Stat()
	if err != nil {
		return fmt.Errorf("harness: %s: %w", p.name, err)
	}
	fmt.Fprintf(log, "=== harness: %s start #%d at %s: %s\n",
		p.name, p.starts+1, time.Now().Format(time.RFC3339Nano), strings.Join(cmd.Args, " "))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(log, "=== harness: %s failed to start: %v\n", p.name, err)
		return fmt.Errorf("harness: starting %s: %w", p.name, err)
	}
	p.starts++
	r := &run{cmd: cmd, pid: cmd.Process.Pid, logOff: st.Size(), done: make(chan struct{})}
	p.run = r
	p.groups = append(p.groups, r.pid)
	go p.reap(r)
	return nil
}

// command builds the exec.Cmd of the next run. It is the single place where processes
// are spawned, so that wrappers (network namespaces) apply to every start.
func (p *Process) command() *exec.Cmd {
	argv := append([]string{p.cfg.Path}, p.cfg.Args...)
	if p.cfg.Wrap != nil {
		argv = p.cfg.Wrap(argv)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), p.cfg.Env...)
	cmd.Dir = p.cfg.Dir
	if cmd.Dir == "" {
		cmd.Dir = p.dir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setpgid:   true,            // own process group: cleanup kills stray children too
		Pdeathsig: syscall.SIGKILL, // die with the test binary
	}
	return cmd
}

// reap waits for r to exit, records how it ended in the log, and closes r.done.
func (p *Process) reap(r *run) {
	err := r.cmd.Wait()
	status := "exit status 0"
	if err != nil {
		status = err.Error()
	}
	if log, lerr := os.OpenFile(p.logPath, os.O_WRONLY|os.O_APPEND, 0); lerr == nil {
		fmt.Fprintf(log, "=== harness: %s pid %d ended at %s: %s\n", p.name, r.pid, time.Now().Format(time.RFC3339Nano), status)
		_ = log.Close()
	}
	r.err = err
	close(r.done)
}

// current returns the current run if it is still running, else ErrNotRunning.
func (p *Process) current() (*run, error) {
	p.mu.Lock()
	r := p.run
	p.mu.Unlock()
	if r == nil || r.exited() {
		return nil, fmt.Errorf("%s: %w", p.name, ErrNotRunning)
	}
	return r, nil
}

// Pid returns the pid of the current run, or 0 before the first Start. After the process
// has exited it still returns the last pid.
func (p *Process) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.run == nil {
		return 0
	}
	return p.run.pid
}

// Running reports whether the process has been started and has not yet exited. A
// stopped (SIGSTOP) process is running.
func (p *Process) Running() bool {
	_, err := p.current()
	return err == nil
}

// Signal sends sig to the process (not to its children). It returns ErrNotRunning when
// the process is not running.
func (p *Process) Signal(sig syscall.Signal) error {
	r, err := p.current()
	if err != nil {
		return err
	}
	return p.signal(r, sig)
}

// signal sends sig to run r. os.Process.Signal uses a pidfd on Linux, so it cannot hit a
// recycled pid.
func (p *Process) signal(r *run, sig syscall.Signal) error {
	if err := r.cmd.Process.Signal(sig); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return fmt.Errorf("%s: %w", p.name, ErrNotRunning)
		}
		return fmt.Errorf("harness: %s: signal %v: %w", p.name, sig, err)
	}
	return nil
}

// Kill sends SIGKILL, as a crash or an OOM kill would, and returns once the process has
// been reaped, so its ports and files are released. It returns ErrNotRunning if the
// process was not running.
func (p *Process) Kill() error {
	r, err := p.current()
	if err != nil {
		return err
	}
	return p.kill(r)
}

// kill sends SIGKILL to run r and waits until it has been reaped.
func (p *Process) kill(r *run) error {
	if err := p.signal(r, syscall.SIGKILL); err != nil && !errors.Is(err, ErrNotRunning) {
		return err
	}
	select {
	case <-r.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("harness: %s (pid %d) not reaped %v after SIGKILL", p.name, r.pid, killWait)
	}
}

// Stop pauses the process with SIGSTOP, as a hung process or a VM freeze would: its
// sockets stay open but nothing answers. Cont resumes it.
func (p *Process) Stop() error { return p.Signal(syscall.SIGSTOP) }

// Cont resumes a process paused by Stop with SIGCONT.
func (p *Process) Cont() error { return p.Signal(syscall.SIGCONT) }

// Terminate asks the process to shut down gracefully: SIGTERM (followed by SIGCONT, so a
// stopped process can act on it), then it waits up to timeout for the exit. It returns
// the exit error as Wait does — nil for exit status 0 — or, when the deadline passes,
// kills the process and returns an error wrapping ErrTerminateTimeout. It returns
// ErrNotRunning if the process was not running.
func (p *Process) Terminate(timeout time.Duration) error {
	r, err := p.current()
	if err != nil {
		return err
	}
	if err := p.signal(r, syscall.SIGTERM); err != nil && !errors.Is(err, ErrNotRunning) {
		return err
	}
	_ = p.signal(r, syscall.SIGCONT)
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-r.done:
		return r.err
	case <-timer.C:
	}
	if err := p.kill(r); err != nil {
		return err
	}
	return fmt.Errorf("%s (pid %d) after %v: %w", p.name, r.pid, timeout, ErrTerminateTimeout)
}

// Restart starts the process again with the same configuration — so the same data
// directory — killing it first with SIGKILL if it is still running (crash and restart).
// For a graceful restart call Terminate, then Start.
func (p *Process) Restart() error {
	if err := p.Kill(); err != nil && !errors.Is(err, ErrNotRunning) {
		return err
	}
	return p.Start()
}

// Wait waits for the current run to exit and returns its exit error: nil for exit
// status 0, an *exec.ExitError otherwise (its String says "signal: killed" after Kill).
// It returns ErrNotRunning if the process was never started and ctx.Err() if ctx ends
// first. On a process that has already exited it returns the last run's result.
func (p *Process) Wait(ctx context.Context) error {
	p.mu.Lock()
	r := p.run
	p.mu.Unlock()
	if r == nil {
		return fmt.Errorf("%s: %w (never started)", p.name, ErrNotRunning)
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Logs returns everything the process has written in all its runs so far, with the
// harness's start and exit lines. It returns "" before the first Start.
func (p *Process) Logs() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	return string(b)
}

// WaitLog waits until the output of the current run matches re and returns the first
// match. It fails early when the process exits without having printed it, and returns
// ctx.Err() (wrapped) when ctx ends first.
func (p *Process) WaitLog(ctx context.Context, re *regexp.Regexp) (string, error) {
	p.mu.Lock()
	r := p.run
	p.mu.Unlock()
	if r == nil {
		return "", fmt.Errorf("%s: %w (never started)", p.name, ErrNotRunning)
	}
	delay := pollMin
	for {
		exited := r.exited() // sample before reading, so a final line is not missed
		if m, err := p.matchLog(r.logOff, re); err != nil {
			return "", err
		} else if m != "" {
			return m, nil
		}
		if exited {
			return "", fmt.Errorf("harness: %s exited (%v) without logging %q", p.name, r.err, re)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("harness: %s did not log %q: %w", p.name, re, ctx.Err())
		case <-r.done:
		case <-time.After(delay):
		}
		delay = min(delay*2, pollMax)
	}
}

func (p *Process) matchLog(off int64, re *regexp.Regexp) (string, error) {
	f, err := os.Open(p.logPath)
	if err != nil {
		return "", fmt.Errorf("harness: %s: %w", p.name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.NewSectionReader(f, off, 1<<62))
	if err != nil {
		return "", fmt.Errorf("harness: %s: %w", p.name, err)
	}
	return string(re.Find(b)), nil
}

// WaitReady polls ProcessConfig.ReadyURL until it answers 200 OK. It fails early if the
// process is not running or exits meanwhile, and when ctx ends first.
func (p *Process) WaitReady(ctx context.Context) error {
	if p.cfg.ReadyURL == "" {
		return fmt.Errorf("harness: %s has no ReadyURL", p.name)
	}
	r, err := p.current()
	if err != nil {
		return err
	}
	return waitHTTP(ctx, p.cfg.ReadyURL, 200, func() error {
		if r.exited() {
			return fmt.Errorf("%s exited (%v): %w", p.name, r.err, ErrNotRunning)
		}
		return nil
	})
}

// cleanup runs when the owning test ends: it kills the process and the process groups
// of all its runs, then reports the log if the test failed.
func (p *Process) cleanup() {
	p.mu.Lock()
	r, groups := p.run, p.groups
	p.mu.Unlock()
	if r == nil {
		return
	}
	if !r.exited() {
		if err := p.kill(r); err != nil {
			p.t.Errorf("harness: cleanup: %v", err)
		}
	}
	// Each run leads its own process group (Setpgid), whose id is its pid. A group's id
	// is not reused while the group has members, so this reaches only children left
	// behind by our runs; ESRCH for empty groups is expected.
	for _, pgid := range groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
	}
	if p.t.Failed() {
		p.reportLogs(p.t)
	}
}

// String returns the name and the pid of the last run, for messages.
func (p *Process) String() string {
	if pid := p.Pid(); pid != 0 {
		return fmt.Sprintf("%s[%d]", p.name, pid)
	}
	return p.name
}
