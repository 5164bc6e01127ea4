package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"plasmacloud.dev/pkg/chainfire"
)

// WorkloadConfig describes a register workload.
type WorkloadConfig struct {
	// Endpoints are the client URLs of the cluster; every client gets all of them,
	// each starting from a different one.
	Endpoints []string
	// Prefix is prepended to every key the workload writes ("chaos/").
	Prefix string
	// Keys is the number of registers (default 5).
	Keys int
	// Clients is the number of concurrent register clients (default 6).
	Clients int
	// RequestTimeout bounds each attempt of a call (default 1 s); OpTimeout bounds a
	// whole call with its retries (default 3 s).
	RequestTimeout, OpTimeout time.Duration
	// Think is the mean pause of a client between two operations (default 10 ms),
	// which keeps histories small enough to check quickly.
	Think time.Duration
	// Logger receives the clients' failover events; nil discards them.
	Logger *slog.Logger
}

func (c *WorkloadConfig) defaults() {
	if c.Keys == 0 {
		c.Keys = 5
	}
	if c.Clients == 0 {
		c.Clients = 6
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = time.Second
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = 3 * time.Second
	}
	if c.Think == 0 {
		c.Think = 10 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Append is one write of the append workload: a put of a fresh key.
type Append struct {
	Key, Value string
	Status     Status
	Revision   int64
	Err        string
}

// Workload runs register clients, and one client that only creates fresh keys (the
// append workload, whose every acknowledged key must exist at the end), until Stop.
// Each client owns its own chainfire.Client; the operations go to History. Its methods
// are safe for concurrent use; Stop may be called more than once.
type Workload struct {
	cfg     WorkloadConfig
	History *History

	stop      chan struct{}
	stopOnce  sync.Once
	closeOnce sync.Once
	wg        sync.WaitGroup
	clients   []*chainfire.Client

	mu      sync.Mutex
	appends []Append

	seq atomic.Int64 // unique values
}

// Key returns the name of register i.
func (w *Workload) Key(i int) string { return fmt.Sprintf("%sr/%d", w.cfg.Prefix, i) }

// AppendPrefix is the prefix of the append workload's keys.
func (w *Workload) AppendPrefix() string { return w.cfg.Prefix + "a/" }

// StartWorkload creates the clients, writes an initial value to every register (so
// that compare-and-swap has something to compare with) and starts the clients. It
// fails when the initial writes fail.
func StartWorkload(ctx context.Context, cfg WorkloadConfig) (*Workload, error) {
	cfg.defaults()
	w := &Workload{cfg: cfg, History: NewHistory(), stop: make(chan struct{})}
	for i := range cfg.Clients + 1 {
		eps := rotate(cfg.Endpoints, i)
		cli, err := chainfire.New(chainfire.Config{Endpoints: eps, RequestTimeout: cfg.RequestTimeout,
			DialTimeout: time.Second, Logger: cfg.Logger.With("client", i)})
		if err != nil {
			w.close()
			return nil, err
		}
		w.clients = append(w.clients, cli)
	}
	r := &register{w: w, id: 0, cli: w.clients[0], known: map[string]string{}, rng: rand.New(rand.NewPCG(rand.Uint64(), 0))}
	for k := range cfg.Keys {
		if op := r.put(ctx, w.Key(k)); op.Output.Status != StatusOK {
			w.close()
			return nil, fmt.Errorf("chaos: initial write: %s", op)
		}
	}
	for i := range cfg.Clients {
		r := &register{w: w, id: i, cli: w.clients[i], known: map[string]string{}, rng: rand.New(rand.NewPCG(rand.Uint64(), uint64(i)))}
		w.wg.Go(r.run)
	}
	w.wg.Go(w.appendLoop)
	return w, nil
}

// rotate returns eps starting at element i.
func rotate(eps []string, i int) []string {
	n := len(eps)
	out := make([]string, 0, n)
	for j := range n {
		out = append(out, eps[(i+j)%n])
	}
	return out
}

// Stop ends the workload: every client finishes its current operation (bounded by
// OpTimeout) and closes. It is idempotent.
func (w *Workload) Stop() {
	w.stopOnce.Do(func() { close(w.stop) })
	w.wg.Wait()
	w.close()
}

func (w *Workload) close() {
	w.closeOnce.Do(func() {
		for _, c := range w.clients {
			c.Close()
		}
	})
}

// Appends returns the append workload's writes.
func (w *Workload) Appends() []Append {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Append(nil), w.appends...)
}

func (w *Workload) stopped() bool {
	select {
	case <-w.stop:
		return true
	default:
		return false
	}
}

func (w *Workload) think(rng *rand.Rand) {
	d := time.Duration(rng.Int64N(int64(2 * w.cfg.Think)))
	select {
	case <-w.stop:
	case <-time.After(d):
	}
}

// value returns a value never written before.
func (w *Workload) value(client int) string {
	return fmt.Sprintf("c%d-%d", client, w.seq.Add(1))
}

// appendLoop is the append client: puts of fresh keys, one at a time.
func (w *Workload) appendLoop() {
	cli := w.clients[len(w.clients)-1]
	rng := rand.New(rand.NewPCG(rand.Uint64(), 99))
	for i := 0; !w.stopped(); i++ {
		a := Append{Key: fmt.Sprintf("%s%06d", w.AppendPrefix(), i), Value: w.value(-1)}
		ctx, cancel := context.WithTimeout(context.Background(), w.cfg.OpTimeout)
		resp, err := cli.Put(ctx, a.Key, a.Value)
		cancel()
		a.Status, a.Err = classifyWrite(err)
		if err == nil {
			a.Revision = resp.GetHeader().GetRevision()
		}
		w.mu.Lock()
		w.appends = append(w.appends, a)
		w.mu.Unlock()
		w.think(rng)
	}
}

// classifyWrite maps a write's error to its status: no error is OK, an error wrapping
// chainfire.ErrOutcomeUnknown is indeterminate, any other error means the write was
// not applied (the client's contract, which the checks hold it to).
func classifyWrite(err error) (Status, string) {
	switch {
	case err == nil:
		return StatusOK, ""
	case errors.Is(err, chainfire.ErrOutcomeUnknown):
		return StatusUnknown, err.Error()
	default:
		return StatusFailed, err.Error()
	}
}

// register is one register client: a loop of random gets, puts and CASes on random
// keys. known is the last value it saw per key, which is what a CAS expects.
type register struct {
	w     *Workload
	id    int
	cli   *chainfire.Client
	known map[string]string
	rng   *rand.Rand
}

func (r *register) run() {
	for !r.w.stopped() {
		key := r.w.Key(r.rng.IntN(r.w.cfg.Keys))
		switch p := r.rng.Float64(); {
		case p < 0.4:
			r.get(key)
		case p < 0.7 || r.known[key] == "":
			r.put(context.Background(), key)
		default:
			r.cas(key)
		}
		r.w.think(r.rng)
	}
}

func (r *register) get(key string) Op {
	op := Op{Client: r.id, Input: Input{Kind: KindGet, Key: key}, Call: r.w.History.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), r.w.cfg.OpTimeout)
	resp, err := r.cli.Get(ctx, key)
	cancel()
	op.Return = r.w.History.Now()
	if err != nil {
		op.Output = Output{Status: StatusFailed, Err: err.Error()}
	} else {
		op.Output = Output{Status: StatusOK, Revision: resp.GetHeader().GetRevision()}
		if len(resp.Kvs) > 0 {
			kv := resp.Kvs[0]
			op.Output.Found, op.Output.Value, op.Output.ModRevision = true, string(kv.Value), kv.ModRevision
			r.known[key] = op.Output.Value
		}
	}
	r.w.History.Add(op)
	return op
}

func (r *register) put(ctx context.Context, key string) Op {
	op := Op{Client: r.id, Input: Input{Kind: KindPut, Key: key, Value: r.w.value(r.id)}, Call: r.w.History.Now()}
	ctx, cancel := context.WithTimeout(ctx, r.w.cfg.OpTimeout)
	resp, err := r.cli.Put(ctx, key, op.Input.Value)
	cancel()
	op.Return = r.w.History.Now()
	op.Output.Status, op.Output.Err = classifyWrite(err)
	if err == nil {
		op.Output.Revision = resp.GetHeader().GetRevision()
		r.known[key] = op.Input.Value
	}
	r.w.History.Add(op)
	return op
}

func (r *register) cas(key string) Op {
	old := r.known[key]
	op := Op{Client: r.id, Input: Input{Kind: KindCAS, Key: key, Value: r.w.value(r.id), Old: old}, Call: r.w.History.Now()}
	ctx, cancel := context.WithTimeout(context.Background(), r.w.cfg.OpTimeout)
	resp, err := r.cli.Txn(ctx).
		If(chainfire.Compare(chainfire.Value(key), "=", old)).
		Then(chainfire.OpPut(key, op.Input.Value)).
		Else(chainfire.OpGet(key)).
		Commit()
	cancel()
	op.Return = r.w.History.Now()
	op.Output.Status, op.Output.Err = classifyWrite(err)
	if err == nil {
		op.Output.Revision = resp.GetHeader().GetRevision()
		op.Output.Swapped = resp.Succeeded
		if resp.Succeeded {
			r.known[key] = op.Input.Value
		} else {
			r.known[key] = ""
			if len(resp.Responses) == 1 {
				if kvs := resp.Responses[0].GetResponseRange().GetKvs(); len(kvs) > 0 {
					op.Output.Found, op.Output.Value, op.Output.ModRevision = true, string(kvs[0].Value), kvs[0].ModRevision
					r.known[key] = op.Output.Value
				}
			}
		}
	}
	r.w.History.Add(op)
	return op
}
