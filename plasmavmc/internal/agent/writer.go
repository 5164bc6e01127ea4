package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"plasmacloud.dev/plasmavmc/internal/state"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// writeTimeout bounds one ChainFire write; a write that times out is retried.
const writeTimeout = 5 * time.Second

// writeKind is what a pending write does.
type writeKind int

const (
	writeStatus  writeKind = iota // put /status/<id> (only while assigned here)
	writeDeleted                  // AgentDeleted: remove /status/<id> and /assigned/<host>/<id>
	writeFinish                   // finish /operations/<id>
)

func (k writeKind) String() string {
	switch k {
	case writeStatus:
		return "status"
	case writeDeleted:
		return "deleted"
	}
	return "operation"
}

// write is one pending change. Writes to the same slot coalesce: the newest replaces an
// older one that has not been written yet.
type write struct {
	kind   writeKind
	vm     string // VM id (status, deleted)
	status *pb.VMStatus
	op     string // operation id (finish)
	state  pb.OperationState
	reason string
	done   func() // called once written (optional)
	seq    uint64
}

// slot is the coalescing key of a write: a VM's status slot holds its status put or its
// deletion (the latest wins); each operation has its own slot.
func (w *write) slot() string {
	if w.kind == writeFinish {
		return "op/" + w.op
	}
	return "vm/" + w.vm
}

// writer owns every write of the agent to ChainFire that must eventually happen: VM
// statuses, delete completions and operation results. Callers enqueue and return at once;
// one goroutine (run) writes, retrying with backoff until ChainFire answers, so VMs never
// wait for ChainFire and their statuses catch up once it is back. Safe for concurrent use.
type writer struct {
	st   *state.Store
	host string
	log  *slog.Logger
	mx   *metrics // set before run starts

	mu      sync.Mutex
	pending map[string]*write
	seq     uint64
	kick    chan struct{}
}

func newWriter(st *state.Store, host string, log *slog.Logger) *writer {
	return &writer{st: st, host: host, log: log, pending: map[string]*write{}, kick: make(chan struct{}, 1)}
}

// enqueue schedules w, replacing a pending write of the same slot.
func (wr *writer) enqueue(w *write) {
	wr.mu.Lock()
	wr.seq++
	w.seq = wr.seq
	wr.pending[w.slot()] = w
	wr.mu.Unlock()
	select {
	case wr.kick <- struct{}{}:
	default:
	}
}

func (wr *writer) pendingCount() int {
	wr.mu.Lock()
	defer wr.mu.Unlock()
	return len(wr.pending)
}

// run writes until ctx ends. Pending writes left then are dropped: they describe a
// hypervisor the next agent will observe again.
func (wr *writer) run(ctx context.Context) {
	bo := minBackoff
	for {
		wr.mu.Lock()
		batch := make([]*write, 0, len(wr.pending))
		for _, w := range wr.pending {
			batch = append(batch, w)
		}
		wr.mu.Unlock()
		failed := false
		for _, w := range batch {
			if ctx.Err() != nil {
				return
			}
			err := wr.do(ctx, w)
			result := "ok"
			if err != nil {
				result = "error"
				failed = true
				wr.log.Warn("chainfire write failed; will retry", "kind", w.kind.String(), "vm", w.vm, "operation", w.op, "err", err)
			}
			if m := wr.mx; m != nil {
				m.statusWrites.WithLabelValues(w.kind.String(), result).Inc()
			}
			if err == nil {
				wr.mu.Lock()
				if cur := wr.pending[w.slot()]; cur != nil && cur.seq == w.seq {
					delete(wr.pending, w.slot())
				}
				wr.mu.Unlock()
				if w.done != nil {
					w.done()
				}
			}
		}
		var wait <-chan time.Time
		if failed {
			t := time.NewTimer(bo)
			wait = t.C
			bo = min(2*bo, maxBackoff)
		} else {
			bo = minBackoff
		}
		select {
		case <-ctx.Done():
			return
		case <-wr.kick:
			if failed {
				// Something new arrived while ChainFire fails: still wait out the backoff.
				select {
				case <-ctx.Done():
					return
				case <-wait:
				}
			}
		case <-wait:
		}
	}
}

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// do performs one write. A status of a VM no longer assigned here is dropped (not an
// error): the VM was deleted or moved and its status is someone else's now.
func (wr *writer) do(ctx context.Context, w *write) error {
	ctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	switch w.kind {
	case writeStatus:
		err := wr.st.PutStatus(ctx, wr.host, w.vm, w.status)
		if errors.Is(err, state.ErrNotFound) {
			wr.log.Debug("status not written: VM no longer assigned here", "vm", w.vm)
			return nil
		}
		return err
	case writeDeleted:
		return wr.st.AgentDeleted(ctx, wr.host, w.vm)
	default:
		return wr.st.FinishOperation(ctx, w.op, w.state, w.reason)
	}
}
