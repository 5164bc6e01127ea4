package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/cliout"
)

// benchConfig is what the bench flags describe.
type benchConfig struct {
	clients     int
	conns       int
	total       int
	keySize     int
	valSize     int
	keySpace    int
	consistency string
	watchers    int
	protocol    string
}

// benchResult is the outcome of one benchmark, printed as text or as one
// JSON line.
type benchResult struct {
	Bench     string  `json:"bench"`
	Endpoints string  `json:"endpoints"`
	Protocol  string  `json:"protocol"`
	Clients   int     `json:"clients"`
	Conns     int     `json:"conns"`
	Watchers  int     `json:"watchers,omitempty"`
	Total     int64   `json:"total"`
	Errors    int64   `json:"errors"`
	Seconds   float64 `json:"seconds"`
	OpsPerSec float64 `json:"ops_per_sec"`
	P50Ms     float64 `json:"p50_ms"`
	P90Ms     float64 `json:"p90_ms"`
	P99Ms     float64 `json:"p99_ms"`
	P999Ms    float64 `json:"p999_ms"`
	MaxMs     float64 `json:"max_ms"`
	FirstErr  string  `json:"first_error,omitempty"`
}

// Histogram bounds, in microseconds: 1 µs to 60 s, 3 significant figures.
const (
	histMin = 1
	histMax = 60_000_000
	histSig = 3
)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(histMin, histMax, histSig) }

func record(h *hdrhistogram.Histogram, d time.Duration) {
	us := min(max(d.Microseconds(), histMin), histMax)
	_ = h.RecordValue(us)
}

// benchCommand is the `chainfire bench` parent with put, range and watch.
// Its flags are persistent so that every benchmark shares them.
func benchCommand() *cobra.Command {
	var bc benchConfig
	cmd, g := topLevel(&cobra.Command{
		Use:   "bench",
		Short: "Benchmark puts, reads or watches (works against etcd too)",
		Long: "Bench drives the cluster with --clients concurrent workers sharing --conns\n" +
			"connections (each its own HTTP/2 transport, round-robined over the workers) and\n" +
			"prints throughput and latency percentiles (HDR histogram). The client speaks gRPC\n" +
			"by default, so the same command measures an etcd cluster for comparison.\n" +
			"For watch, the operations counted are events received (puts x watchers) and the\n" +
			"latency runs from a put's send to its event's receipt by a watcher.\n" +
			"--command-timeout does not apply; -o json prints one JSON line.",
		Args: cobra.NoArgs,
	})
	fs := cmd.PersistentFlags()
	fs.IntVar(&bc.clients, "clients", 16, "concurrent workers")
	fs.IntVar(&bc.conns, "conns", 4, "connections (transports) shared by the workers")
	fs.IntVar(&bc.total, "total", 10000, "operations (puts, reads; for watch: puts observed)")
	fs.IntVar(&bc.keySize, "key-size", 8, "key size in bytes")
	fs.IntVar(&bc.valSize, "val-size", 8, "value size in bytes")
	fs.IntVar(&bc.keySpace, "key-space", 10000, "number of distinct keys (random key from the space)")
	fs.StringVar(&bc.consistency, "consistency", "l", "read consistency: l (linearizable) or s (serializable)")
	fs.StringVar(&bc.protocol, "protocol", "grpc", "RPC protocol: grpc, grpcweb or connect (etcd speaks only grpc)")

	sub := func(name, short string) *cobra.Command {
		c := &cobra.Command{Use: name, Short: short, Args: cobra.NoArgs}
		c.RunE = func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmdContext(cmd), os.Interrupt, syscall.SIGTERM)
			defer stop()
			res, err := runBench(ctx, g, bc, name)
			if err != nil {
				return err
			}
			if err := printBench(g.printer(cmd), res); err != nil {
				return err
			}
			if res.Errors > 0 {
				return fmt.Errorf("bench %s: %d of %d operations failed; first: %s", name, res.Errors, res.Total, res.FirstErr)
			}
			return nil
		}
		return c
	}
	watch := sub("watch", "Watchers on a key range, a putter writing into it; latency from put to event")
	watch.Flags().IntVar(&bc.watchers, "watchers", 10, "concurrent watchers of the range")
	cmd.AddCommand(
		sub("put", "Put random keys of the key space"),
		sub("range", "Read random keys of the key space (--consistency l|s)"),
		watch,
	)
	return cmd
}

// printBench prints a result as two human lines or one JSON line.
func printBench(p *cliout.Printer, r *benchResult) error {
	return p.Value(r, func(w io.Writer) {
		fmt.Fprintf(w, "bench %s: %d ops in %.3fs = %.1f ops/s, %d errors (%d clients, %d conns, %s",
			r.Bench, r.Total, r.Seconds, r.OpsPerSec, r.Errors, r.Clients, r.Conns, r.Protocol)
		if r.Watchers > 0 {
			fmt.Fprintf(w, ", %d watchers", r.Watchers)
		}
		fmt.Fprintf(w, ")\nlatency ms: p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
			r.P50Ms, r.P90Ms, r.P99Ms, r.P999Ms, r.MaxMs)
	})
}

// validate rejects flag values the benchmark cannot run with.
func (bc benchConfig) validate() error {
	switch {
	case bc.clients < 1:
		return errors.New("--clients must be at least 1")
	case bc.conns < 1:
		return errors.New("--conns must be at least 1")
	case bc.total < 1:
		return errors.New("--total must be at least 1")
	case bc.keySize < 1 || bc.valSize < 0:
		return errors.New("--key-size must be at least 1 and --val-size not negative")
	case bc.keySpace < 1:
		return errors.New("--key-space must be at least 1")
	case bc.consistency != "l" && bc.consistency != "s":
		return fmt.Errorf("--consistency %q: must be l or s", bc.consistency)
	}
	return nil
}

// parseProtocol maps --protocol to the client's protocol.
func parseProtocol(s string) (chainfire.Protocol, error) {
	for _, p := range []chainfire.Protocol{chainfire.ProtocolGRPC, chainfire.ProtocolGRPCWeb, chainfire.ProtocolConnect} {
		if p.String() == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("--protocol %q: must be grpc, grpcweb or connect", s)
}

// benchKey returns key number n padded to size bytes.
func benchKey(prefix string, n, size int) string {
	s := strconv.Itoa(n)
	if pad := size - len(prefix) - len(s); pad > 0 {
		s = strings.Repeat("0", pad) + s
	}
	return prefix + s
}

// runBench runs one benchmark.
func runBench(ctx context.Context, g *globals, bc benchConfig, name string) (*benchResult, error) {
	if err := bc.validate(); err != nil {
		return nil, err
	}
	proto, err := parseProtocol(bc.protocol)
	if err != nil {
		return nil, err
	}
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	cfg.Protocol = proto
	// One client per connection: each owns its transports.
	clients := make([]*chainfire.Client, bc.conns)
	for i := range clients {
		if clients[i], err = chainfire.New(cfg); err != nil {
			return nil, err
		}
		defer clients[i].Close()
	}
	res := &benchResult{
		Bench: name, Endpoints: strings.Join(clients[0].Endpoints(), ","), Protocol: proto.String(),
		Clients: bc.clients, Conns: bc.conns,
	}
	hist := newHist()
	var start time.Time
	switch name {
	case "put", "range":
		start = time.Now()
		runWorkers(ctx, bc, clients, name, hist, res)
	case "watch":
		res.Watchers = bc.watchers
		if start, err = runWatchBench(ctx, bc, clients, hist, res); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("unknown bench %q", name)
	}
	elapsed := time.Since(start)
	res.Seconds = elapsed.Seconds()
	if name == "watch" {
		res.Total = hist.TotalCount()
	}
	if res.Seconds > 0 {
		res.OpsPerSec = float64(res.Total-res.Errors) / res.Seconds
	}
	ms := func(q float64) float64 { return float64(hist.ValueAtQuantile(q)) / 1000 }
	res.P50Ms, res.P90Ms, res.P99Ms, res.P999Ms = ms(50), ms(90), ms(99), ms(99.9)
	res.MaxMs = float64(hist.Max()) / 1000
	if err := ctx.Err(); err != nil {
		return res, fmt.Errorf("bench %s interrupted: %w", name, err)
	}
	return res, nil
}

// runWorkers runs bc.total puts or reads over bc.clients workers.
func runWorkers(ctx context.Context, bc benchConfig, clients []*chainfire.Client, name string, hist *hdrhistogram.Histogram, res *benchResult) {
	value := strings.Repeat("v", bc.valSize)
	var (
		next     atomic.Int64
		errCount atomic.Int64
		firstErr sync.Once
		mu       sync.Mutex
		wg       sync.WaitGroup
	)
	var readOpts []chainfire.OpOption
	if bc.consistency == "s" {
		readOpts = append(readOpts, chainfire.WithSerializable())
	}
	for w := range bc.clients {
		c := clients[w%len(clients)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := newHist()
			for next.Add(1) <= int64(bc.total) && ctx.Err() == nil {
				key := benchKey("", rand.IntN(bc.keySpace), bc.keySize)
				t0 := time.Now()
				var err error
				if name == "put" {
					_, err = c.Put(ctx, key, value)
				} else {
					_, err = c.Get(ctx, key, readOpts...)
				}
				record(h, time.Since(t0))
				if err != nil {
					errCount.Add(1)
					firstErr.Do(func() { res.FirstErr = err.Error() })
				}
			}
			mu.Lock()
			hist.Merge(h)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Total = hist.TotalCount()
	res.Errors = errCount.Load()
}

// runWatchBench starts bc.watchers watchers on a key range, waits until all
// are in place, then puts bc.total keys into the range from bc.clients
// workers and records, per watcher and event, the time from the put's send
// to the event's receipt. It returns when every watcher has seen every put.
func runWatchBench(ctx context.Context, bc benchConfig, clients []*chainfire.Client, hist *hdrhistogram.Histogram, res *benchResult) (time.Time, error) {
	if bc.watchers < 1 {
		return time.Time{}, errors.New("--watchers must be at least 1")
	}
	prefix := fmt.Sprintf("bench-watch/%d/", time.Now().UnixNano())
	sent := make([]atomic.Int64, bc.total) // send time (unix ns) of put i
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		mu       sync.Mutex
		wg       sync.WaitGroup
		watchErr error
	)
	created := make(chan struct{}, bc.watchers)
	for w := range bc.watchers {
		ch := clients[w%len(clients)].Watch(wctx, prefix, chainfire.WithPrefix(), chainfire.WithCreatedNotify())
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := newHist()
			defer func() {
				mu.Lock()
				hist.Merge(h)
				mu.Unlock()
			}()
			seen := 0
			for r := range ch {
				now := time.Now().UnixNano()
				switch {
				case r.Created:
					created <- struct{}{}
				case r.Err != nil:
					mu.Lock()
					watchErr = errors.Join(watchErr, r.Err)
					mu.Unlock()
					return
				}
				for _, ev := range r.Events {
					i, err := strconv.Atoi(strings.TrimPrefix(string(ev.Kv.Key), prefix))
					if err != nil || i < 0 || i >= len(sent) {
						continue
					}
					record(h, time.Duration(now-sent[i].Load()))
					seen++
				}
				if seen >= bc.total {
					return
				}
			}
		}()
	}
	for range bc.watchers {
		select {
		case <-created:
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for watchers: %w", ctx.Err())
		}
	}

	value := strings.Repeat("v", bc.valSize)
	start := time.Now()
	var (
		next     atomic.Int64
		errCount atomic.Int64
		firstErr sync.Once
		pwg      sync.WaitGroup
	)
	for w := range bc.clients {
		c := clients[w%len(clients)]
		pwg.Add(1)
		go func() {
			defer pwg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= bc.total || ctx.Err() != nil {
					return
				}
				sent[i].Store(time.Now().UnixNano())
				if _, err := c.Put(ctx, benchKey(prefix, i, bc.keySize), value); err != nil {
					errCount.Add(1)
					firstErr.Do(func() { res.FirstErr = err.Error() })
				}
			}
		}()
	}
	pwg.Wait()
	res.Errors = errCount.Load()
	if res.Errors > 0 {
		cancel() // some puts will never be seen
	}
	wg.Wait()
	if watchErr != nil {
		return start, fmt.Errorf("bench watch: %w", watchErr)
	}
	return start, nil
}
