package guest

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Observation is the latest heartbeat a Monitor has seen and when it saw it.
type Observation struct {
	Heartbeat
	// Seen is the host time at which the line was read.
	Seen time.Time
	// Boots counts the distinct boot ids seen since the Monitor started (1 after the first
	// heartbeat; it grows on every reboot or restart of the guest).
	Boots int
}

// Fresh reports whether the observation exists and was seen no longer than maxAge before now.
func (o Observation) Fresh(now time.Time, maxAge time.Duration) bool {
	return o.Seq > 0 && now.Sub(o.Seen) <= maxAge
}

// Monitor follows one heartbeat source and keeps the latest heartbeat.
//
// Run owns the reading: call it once, in its own goroutine; it returns when ctx ends. Latest and
// Wait may be called from any goroutine, also before Run starts.
type Monitor struct {
	open   func(ctx context.Context) (io.ReadCloser, error)
	source string
	log    *slog.Logger
	now    func() time.Time
	poll   time.Duration

	mu      sync.Mutex
	latest  Observation
	changed chan struct{} // closed and replaced on every new heartbeat
}

// NewFileMonitor follows the serial log at path (a file QEMU writes, from its start). It waits
// for the file to appear, reads it from the beginning, polls for growth every poll interval
// (0: 200 ms), and starts over from the top when the file shrinks or is replaced (QEMU truncates
// it when the VM starts again). A nil log discards.
func NewFileMonitor(path string, poll time.Duration, log *slog.Logger) *Monitor {
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	m := newMonitor(path, poll, log)
	m.open = func(ctx context.Context) (io.ReadCloser, error) { return openFollow(ctx, path, poll) }
	return m
}

// NewSocketMonitor follows the virtio-serial channel whose host side is the unix socket at path
// (QEMU listens on it). It connects, reads lines, and reconnects every poll interval (0: 200 ms)
// while the socket is missing or after QEMU closed it. Only one client can be connected to the
// channel at a time. A nil log discards.
func NewSocketMonitor(path string, poll time.Duration, log *slog.Logger) *Monitor {
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	m := newMonitor(path, poll, log)
	m.open = func(ctx context.Context) (io.ReadCloser, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, err
		}
		stop := context.AfterFunc(ctx, func() { c.Close() })
		return &closer{ReadCloser: c, stop: stop}, nil
	}
	return m
}

func newMonitor(source string, poll time.Duration, log *slog.Logger) *Monitor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Monitor{
		source:  source,
		log:     log.With("heartbeat_source", source),
		now:     time.Now,
		poll:    poll,
		changed: make(chan struct{}),
	}
}

// Latest returns the latest heartbeat seen (zero Seq when none yet).
func (m *Monitor) Latest() Observation {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.latest
}

// Wait blocks until a heartbeat satisfying ok arrives (ok is checked against the latest one
// first) and returns it, or returns ctx's error.
func (m *Monitor) Wait(ctx context.Context, ok func(Observation) bool) (Observation, error) {
	for {
		m.mu.Lock()
		o, ch := m.latest, m.changed
		m.mu.Unlock()
		if o.Seq > 0 && ok(o) {
			return o, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return o, ctx.Err()
		}
	}
}

// Run reads the source until ctx ends, reopening it after errors, and returns ctx's error.
func (m *Monitor) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		rc, err := m.open(ctx)
		if err != nil {
			if ctx.Err() == nil && !errors.Is(err, os.ErrNotExist) {
				m.log.Debug("heartbeat source not readable", "err", err)
			}
			sleep(ctx, m.poll)
			continue
		}
		m.read(rc)
		rc.Close()
		sleep(ctx, m.poll)
	}
	return ctx.Err()
}

// read consumes lines until the reader fails or ends. Lines that were already in a file when
// it was opened (an agent restarted next to a VM that may be long dead) count as seen when the
// file was last written, not now.
func (m *Monitor) read(r io.Reader) {
	var backlog int64
	var written time.Time
	if b, ok := r.(interface{ backlogUntil() (int64, time.Time) }); ok {
		backlog, written = b.backlogUntil()
	}
	var consumed int64
	br := bufio.NewReaderSize(r, 4096)
	for {
		line, err := br.ReadSlice('\n')
		consumed += int64(len(line))
		if err == nil {
			seen := m.now()
			if consumed <= backlog {
				seen = written
			}
			m.observe(line, seen)
			continue
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			// A line longer than the buffer: not ours; drop the rest of it.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == nil {
				continue
			}
		}
		return
	}
}

func (m *Monitor) observe(line []byte, seen time.Time) {
	hb, err := ParseHeartbeat(line)
	if err != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	boots := m.latest.Boots
	if hb.Boot != m.latest.Boot {
		boots++
	}
	m.latest = Observation{Heartbeat: hb, Seen: seen, Boots: boots}
	close(m.changed)
	m.changed = make(chan struct{})
}

// closer ties a connection to the context.AfterFunc that closes it.
type closer struct {
	io.ReadCloser
	stop func() bool
}

func (c *closer) Close() error {
	c.stop()
	return c.ReadCloser.Close()
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
