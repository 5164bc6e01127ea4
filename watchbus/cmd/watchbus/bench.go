package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/resilience"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
	"plasmacloud.dev/proto/watchbus/v1/watchbusv1connect"
)

// benchConfig is one `watchbus bench` run.
type benchConfig struct {
	watchbus    string   // one replica's URL
	chainfire   []string // ChainFire endpoints (writes, and the direct comparison)
	subscribers int
	rate        int
	duration    time.Duration
	prefix      string
	modes       []string
	token       string
	wbMetrics   string // /metrics URL of the replica (memory)
	cfMetrics   string // /metrics URL of the ChainFire member watched directly
}

func benchCommand() *cobra.Command {
	var (
		cfg benchConfig
		cf  clientFlags
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure put → event latency and memory per subscriber, through WatchBus and directly on ChainFire",
		Long: `Open --subscribers subscriptions on one WatchBus replica (all on one prefix), put
--rate keys per second into ChainFire for --duration, and measure for every delivered
event the latency from just before the put to its arrival (p50, p99, max), then the
same with the same number of watches opened directly on ChainFire, in the same run.
Memory per subscriber is the growth of the server's resident set (its /metrics
process_resident_memory_bytes) and of this process's Go heap divided by the count.`,
		Example: `  watchbus bench --endpoints http://127.0.0.1:7002 --chainfire-endpoints http://127.0.0.1:2379 \
    --subscribers 10000 --rate 20 --duration 20s`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			eps, token, err := cf.resolve()
			if err != nil {
				return err
			}
			cfg.watchbus, cfg.token = eps[0], token
			if cfg.wbMetrics == "" {
				cfg.wbMetrics = cfg.watchbus + "/metrics"
			}
			if cfg.cfMetrics == "" && len(cfg.chainfire) > 0 {
				u := cfg.chainfire[0]
				if !strings.Contains(u, "://") {
					u = "http://" + u
				}
				cfg.cfMetrics = u + "/metrics"
			}
			return runBench(cmd.Context(), cfg, cmd.OutOrStdout())
		},
	}
	cf.register(cmd)
	f := cmd.Flags()
	f.StringSliceVar(&cfg.chainfire, "chainfire-endpoints", []string{"http://127.0.0.1:2379"}, "ChainFire endpoints (writes; the direct comparison watches the first)")
	f.IntVar(&cfg.subscribers, "subscribers", 1000, "subscribers (10000 for the design's aim)")
	f.IntVar(&cfg.rate, "rate", 20, "puts per second")
	f.DurationVar(&cfg.duration, "duration", 15*time.Second, "measurement time per mode")
	f.StringVar(&cfg.prefix, "prefix", "/bench/watchbus/", "key prefix written and watched")
	f.StringSliceVar(&cfg.modes, "modes", []string{"watchbus", "chainfire"}, "what to measure: watchbus, chainfire")
	f.StringVar(&cfg.wbMetrics, "watchbus-metrics", "", "WatchBus /metrics URL (default: the endpoint's)")
	f.StringVar(&cfg.cfMetrics, "chainfire-metrics", "", "ChainFire /metrics URL (default: the first endpoint's)")
	return cmd
}

// subscriberFunc runs one subscriber until ctx ends, calling ready once it is
// subscribed and got for every event value received.
type subscriberFunc func(ctx context.Context, ready func(), got func(value []byte)) error

func runBench(ctx context.Context, cfg benchConfig, out io.Writer) error {
	cf, err := chainfire.New(chainfire.Config{Endpoints: cfg.chainfire, RequestTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cf.Close()
	fmt.Fprintf(out, "watchbus bench: %d subscribers on %q, %d puts/s for %s, GOMAXPROCS %d\n",
		cfg.subscribers, cfg.prefix, cfg.rate, cfg.duration, runtime.GOMAXPROCS(0))
	fmt.Fprintf(out, "%-10s %8s %10s %10s %10s %10s %12s %14s %14s\n", "mode", "puts", "delivered", "p50", "p99", "max", "subscribe", "server B/sub", "client B/sub")
	for _, mode := range cfg.modes {
		var (
			sub     subscriberFunc
			metrics string
		)
		switch mode {
		case "watchbus":
			hc := resilience.NewHTTPClient(resilience.TransportOptions{})
			client := watchbusv1connect.NewWatchBusServiceClient(hc, cfg.watchbus, connect.WithGRPC(), connect.WithInterceptors(bearer(cfg.token)))
			metrics = cfg.wbMetrics
			sub = func(ctx context.Context, ready func(), got func([]byte)) error {
				st, err := client.Subscribe(ctx, connect.NewRequest(&watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte(cfg.prefix)}}))
				if err != nil {
					return err
				}
				defer st.Close()
				first := true
				for st.Receive() {
					if first { // the "from now" bookmark: subscribed
						first = false
						ready()
					}
					for _, ev := range st.Msg().Events {
						got(ev.Kv.Value)
					}
				}
				return st.Err()
			}
		case "chainfire":
			// One client (one pooled connection per member), as a single process would;
			// every watch is its own stream, as it would be without WatchBus.
			wcf, err := chainfire.New(chainfire.Config{Endpoints: cfg.chainfire[:1]})
			if err != nil {
				return err
			}
			defer wcf.Close()
			metrics = cfg.cfMetrics
			sub = func(ctx context.Context, ready func(), got func([]byte)) error {
				for r := range wcf.Watch(ctx, cfg.prefix, chainfire.WithPrefix(), chainfire.WithCreatedNotify()) {
					if r.Created {
						ready()
					}
					for _, ev := range r.Events {
						got(ev.Kv.Value)
					}
				}
				return nil
			}
		default:
			return fmt.Errorf("--modes: unknown mode %q", mode)
		}
		if err := benchMode(ctx, cfg, cf, mode, metrics, sub, out); err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
	}
	return nil
}

func benchMode(ctx context.Context, cfg benchConfig, cf *chainfire.Client, mode, metricsURL string, sub subscriberFunc, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	rss0 := scrapeRSS(metricsURL)

	hists := make([]*hdrhistogram.Histogram, cfg.subscribers)
	var (
		wg, readyWG sync.WaitGroup
		failed      atomic.Int64
		delivered   atomic.Int64
		firstErr    atomic.Value
	)
	start := time.Now()
	readyWG.Add(cfg.subscribers)
	for i := range cfg.subscribers {
		h := hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
		hists[i] = h
		wg.Go(func() {
			var once sync.Once
			done := func() { once.Do(readyWG.Done) }
			defer done()
			err := sub(ctx, done, func(v []byte) {
				ns, err := strconv.ParseInt(string(v), 10, 64)
				if err != nil {
					return
				}
				_ = h.RecordValue(max(1, time.Since(time.Unix(0, ns)).Microseconds()))
				delivered.Add(1)
			})
			if err != nil && ctx.Err() == nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err)
			}
		})
		if i%200 == 199 {
			time.Sleep(10 * time.Millisecond) // don't stampede the server's accept queue
		}
	}
	readyWG.Wait()
	subscribeTime := time.Since(start)
	if n := failed.Load(); n > 0 {
		return fmt.Errorf("%d subscribers failed: %v", n, firstErr.Load())
	}
	time.Sleep(time.Second)
	runtime.GC()
	runtime.ReadMemStats(&ms1)
	rss1 := scrapeRSS(metricsURL)

	// Writer: rate puts per second, value = send time in unix nanos.
	tick := time.NewTicker(time.Second / time.Duration(cfg.rate))
	end := time.After(cfg.duration)
	puts := 0
loop:
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-end:
			break loop
		case <-tick.C:
			key := fmt.Sprintf("%s%08d", cfg.prefix, puts%1000)
			if _, err := cf.Put(ctx, key, strconv.FormatInt(time.Now().UnixNano(), 10)); err != nil {
				return err
			}
			puts++
		}
	}
	tick.Stop()
	time.Sleep(2 * time.Second) // let the tail arrive
	cancel()
	wg.Wait()
	total := hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
	for _, h := range hists {
		total.Merge(h)
	}
	us := func(q float64) time.Duration { return time.Duration(total.ValueAtQuantile(q)) * time.Microsecond }
	serverPer := "n/a"
	if rss0 > 0 && rss1 > 0 {
		serverPer = strconv.FormatInt((rss1-rss0)/int64(cfg.subscribers), 10)
	}
	clientPer := (int64(ms1.HeapInuse) + int64(ms1.StackInuse) - int64(ms0.HeapInuse) - int64(ms0.StackInuse)) / int64(cfg.subscribers)
	fmt.Fprintf(out, "%-10s %8d %10d %10s %10s %10s %12s %14s %14d\n", mode, puts, delivered.Load(),
		us(50).Round(10*time.Microsecond), us(99).Round(10*time.Microsecond), time.Duration(total.Max()*1000).Round(10*time.Microsecond),
		subscribeTime.Round(time.Millisecond), serverPer, clientPer)
	if want := int64(puts) * int64(cfg.subscribers); delivered.Load() != want {
		fmt.Fprintf(out, "%-10s WARNING: delivered %d events, expected %d\n", mode, delivered.Load(), want)
	}
	return nil
}

// scrapeRSS reads process_resident_memory_bytes from a /metrics URL (0 if unavailable).
func scrapeRSS(url string) int64 {
	if url == "" {
		return 0
	}
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "process_resident_memory_bytes "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int64(f)
			}
		}
	}
	return 0
}
