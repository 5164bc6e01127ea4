package harness

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Cluster is an ordered group of processes started and faulted together, typically the
// nodes of one replicated service. It knows nothing about what the processes are; the
// service's own test helpers build the arguments (names, ports, peers) and Add them.
//
// Processes are indexed in the order they were added. All methods are safe for
// concurrent use; the processes belong to the test the Cluster was created with.
type Cluster struct {
	t testing.TB

	mu    sync.Mutex
	procs []*Process
}

// NewCluster returns an empty cluster owned by t.
func NewCluster(t testing.TB) *Cluster {
	return &Cluster{t: t}
}

// Add creates a process for cfg (see NewProcess), appends it to the cluster and returns
// it. The process is not started.
func (c *Cluster) Add(cfg ProcessConfig) *Process {
	c.t.Helper()
	p := NewProcess(c.t, cfg)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.procs = append(c.procs, p)
	return p
}

// Len returns the number of processes.
func (c *Cluster) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.procs)
}

// Proc returns the i'th process added; it panics if i is out of range.
func (c *Cluster) Proc(i int) *Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.procs[i]
}

// Procs returns the processes in the order they were added. The slice is a copy.
func (c *Cluster) Procs() []*Process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*Process(nil), c.procs...)
}

// Running returns the processes that are running (stopped ones included).
func (c *Cluster) Running() []*Process {
	var out []*Process
	for _, p := range c.Procs() {
		if p.Running() {
			out = append(out, p)
		}
	}
	return out
}

// Start starts every process that is not running, in order, and returns the errors
// joined. Replicated services must tolerate peers that are not up yet, so no process
// waits for another.
func (c *Cluster) Start() error {
	var errs []error
	for _, p := range c.Procs() {
		if p.Running() {
			continue
		}
		errs = append(errs, p.Start())
	}
	return errors.Join(errs...)
}

// WaitReady waits, concurrently, until every running process with a ReadyURL answers
// 200 OK on it; see Process.WaitReady. It returns the errors of those that did not.
func (c *Cluster) WaitReady(ctx context.Context) error {
	procs := c.Running()
	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		if p.ReadyURL() == "" {
			continue
		}
		wg.Go(func() { errs[i] = p.WaitReady(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Kill kills every running process with SIGKILL, concurrently, and waits until all are
// reaped. It is what losing power on every host at once looks like.
func (c *Cluster) Kill() error {
	return c.each(func(p *Process) error { return p.Kill() })
}

// Terminate shuts every running process down gracefully and concurrently (see
// Process.Terminate) and returns the errors of those that exited uncleanly.
func (c *Cluster) Terminate(timeout time.Duration) error {
	return c.each(func(p *Process) error { return p.Terminate(timeout) })
}

// each runs f on every running process concurrently and joins the errors, ignoring
// ErrNotRunning from processes that exited meanwhile.
func (c *Cluster) each(f func(*Process) error) error {
	procs := c.Running()
	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Go(func() {
			if err := f(p); err != nil && !errors.Is(err, ErrNotRunning) {
				errs[i] = fmt.Errorf("%s: %w", p.Name(), err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
