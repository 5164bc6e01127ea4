package chaos

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/proto/mvccpb"
)

// Event is one event a watcher received.
type Event struct {
	Revision int64
	Key      string
	Value    string
	Delete   bool
}

// String renders the event for reports.
func (e Event) String() string {
	if e.Delete {
		return fmt.Sprintf("rev %d delete %s", e.Revision, e.Key)
	}
	return fmt.Sprintf("rev %d put %s=%s", e.Revision, e.Key, e.Value)
}

// Watcher is one resumable watch (chainfire.Client.Watch) on a prefix from revision 1,
// through its own client over all endpoints, recording every event it delivers. It is
// safe for concurrent use; its goroutine ends with Stop.
type Watcher struct {
	ID int

	cli    *chainfire.Client
	cancel context.CancelFunc
	done   chan struct{}

	reconnects atomic.Int64

	mu     sync.Mutex
	events []Event
	err    error // why the watch ended early (Relist or Err), or nil
}

// StartWatcher starts watcher id on prefix through a client of its own on eps.
func StartWatcher(id int, eps []string, prefix string) (*Watcher, error) {
	w := &Watcher{ID: id, done: make(chan struct{})}
	// The client reports each resumption as a log record; counting them shows the
	// watch did survive disconnects.
	log := slog.New(&countingHandler{match: "watch stream failed", n: &w.reconnects})
	cli, err := chainfire.New(chainfire.Config{Endpoints: eps, DialTimeout: time.Second, Logger: log})
	if err != nil {
		return nil, err
	}
	w.cli = cli
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	ch := cli.Watch(ctx, prefix, chainfire.WithPrefix(), chainfire.WithRev(1))
	go func() {
		defer close(w.done)
		for resp := range ch {
			w.mu.Lock()
			for _, ev := range resp.Events {
				w.events = append(w.events, Event{Revision: ev.Kv.ModRevision, Key: string(ev.Kv.Key),
					Value: string(ev.Kv.Value), Delete: ev.Type == mvccpb.Event_DELETE})
			}
			if resp.Relist || resp.Err != nil {
				w.err = fmt.Errorf("watch %d ended: relist=%v compact_revision=%d: %v", id, resp.Relist, resp.CompactRevision, resp.Err)
			}
			w.mu.Unlock()
		}
	}()
	return w, nil
}

// Events returns a copy of the events received so far.
func (w *Watcher) Events() []Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Event(nil), w.events...)
}

// Err returns why the watch ended on its own, or nil.
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Reconnects is the number of times the watch resumed after a stream failure.
func (w *Watcher) Reconnects() int64 { return w.reconnects.Load() }

// WaitRevision waits until the watcher has delivered an event at rev or later, and
// fails when ctx ends first or the watch ended.
func (w *Watcher) WaitRevision(ctx context.Context, rev int64) error {
	for {
		w.mu.Lock()
		var last int64
		if n := len(w.events); n > 0 {
			last = w.events[n-1].Revision
		}
		err := w.err
		w.mu.Unlock()
		if last >= rev {
			return nil
		}
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("watcher %d reached revision %d, not %d: %w", w.ID, last, rev, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Stop ends the watch and closes its client.
func (w *Watcher) Stop() {
	w.cancel()
	<-w.done
	w.cli.Close()
}

// countingHandler is a slog.Handler that counts records whose message contains match.
type countingHandler struct {
	match string
	n     *atomic.Int64
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.match) {
		h.n.Add(1)
	}
	return nil
}

func (h *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *countingHandler) WithGroup(string) slog.Handler      { return h }
