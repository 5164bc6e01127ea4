package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/HdrHistogram/hdrhistogram-go"
	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/etcdserverpb/etcdserverpbconnect"
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
	prefixes    int // subscribers and puts spread over this many prefixes under prefix
	modes       []string
	runs        int
	clients     int
	token       string
	wbMetrics   string // /metrics URL of the replica (memory)
	cfMetrics   string // /metrics URL of the ChainFire member watched directly
	cpuProfile  string // write this process's CPU profile of the measured phases (puts and tail) here, per run and mode
}

func benchCommand() *cobra.Command {
	var (
		cfg benchConfig
		cf  clientFlags
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure put → event latency and memory per subscriber, through WatchBus and directly on ChainFire",
		Long: `Open --subscribers subscriptions on one WatchBus replica (all on one prefix, or
spread over --prefixes), put --rate keys per second into ChainFire for --duration, and measure for every delivered
event the latency from just before the put to its arrival (p50, p99, max); then the
same with the same number of watches opened directly on the first ChainFire endpoint,
in the same run, with the same client machinery (one HTTP/2 client per mode, one gRPC
stream per subscriber). --runs repeats both, alternating.

Columns: delivered/expected (events; INCOMPLETE when some had not arrived 5 s after
the last put), put p50 (the put's own round trip, part of every latency), srv CPU/s
(CPU seconds per second of the server processes doing the work: WatchBus + ChainFire,
or ChainFire alone), client CPU/s (this process), srv µs/ev and cli µs/ev (the same CPU
time per event the puts generated: the cost of one delivered event), memory per
subscriber: growth of the
server's Go heap in use + stacks (its /metrics) and of this process's, divided by the
count, measured 1 s after the last subscription opened.`,
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
	f.IntVar(&cfg.prefixes, "prefixes", 1, "spread the subscribers over this many prefixes under --prefix (subscriber i watches prefix i mod N) and the puts too (put j goes to prefix j mod N): each put then concerns 1/N of the subscribers")
	f.IntVar(&cfg.clients, "clients", 1, "HTTP/2 clients the subscribers are spread over (each opens its own connections; 1: one client, a connection per 250 streams)")
	f.IntVar(&cfg.runs, "runs", 1, "repeat every mode this many times, alternating (noisy machines: report the range)")
	f.StringSliceVar(&cfg.modes, "modes", []string{"watchbus", "chainfire"}, "what to measure: watchbus, chainfire")
	f.StringVar(&cfg.wbMetrics, "watchbus-metrics", "", "WatchBus /metrics URL (default: the endpoint's)")
	f.StringVar(&cfg.cfMetrics, "chainfire-metrics", "", "ChainFire /metrics URL (default: the first endpoint's)")
	f.StringVar(&cfg.cpuProfile, "cpuprofile", "", "write the bench client's CPU profile of each measured phase to FILE.<run>.<mode> (the client shares the machine: see what it costs)")
	return cmd
}

// subscriberFunc runs one subscriber on prefix until ctx ends, calling ready once it is
// subscribed and got for every event value received.
type subscriberFunc func(ctx context.Context, prefix string, ready func(), got func(value []byte)) error

// benchPrefix is the prefix of subscriber or put i.
func benchPrefix(cfg benchConfig, i int) string {
	if cfg.prefixes <= 1 {
		return cfg.prefix
	}
	return fmt.Sprintf("%sp%04d/", cfg.prefix, i%cfg.prefixes)
}

// expectedEvents is how many events puts puts deliver in all: put j reaches the
// subscribers on prefix j mod N.
func expectedEvents(cfg benchConfig, puts int) int64 {
	n := max(1, cfg.prefixes)
	var want int64
	for j := range puts {
		p := j % n
		want += int64(cfg.subscribers / n)
		if p < cfg.subscribers%n {
			want++
		}
	}
	return want
}

// benchTarget is one side of the comparison: how a subscriber subscribes, and the
// /metrics URLs of the server processes that do the work for it (their CPU time and
// resident memory are measured).
type benchTarget struct {
	sub     subscriberFunc
	memURL  string   // the server whose memory grows with the subscribers
	cpuURLs []string // every server process that works for the subscribers
	close   func()
}

func runBench(ctx context.Context, cfg benchConfig, out io.Writer) error {
	raiseNoFile(out)
	cf, err := chainfire.New(chainfire.Config{Endpoints: cfg.chainfire, RequestTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cf.Close()
	fmt.Fprintf(out, "watchbus bench: %d subscribers on %q (%d prefix(es)) over %d client(s), %d puts/s for %s, %d run(s), GOMAXPROCS %d, NumCPU %d\n",
		cfg.subscribers, cfg.prefix, max(1, cfg.prefixes), max(1, cfg.clients), cfg.rate, cfg.duration, cfg.runs, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Fprintf(out, "%-4s %-10s %6s %21s %9s %9s %9s %9s %9s %10s %11s %10s %10s %11s %12s %12s\n", "run", "mode", "puts",
		"delivered/expected", "put p50", "p50", "p99", "max", "subscribe", "srv CPU/s", "client CPU/s",
		"srv µs/ev", "cli µs/ev", "srv B/sub", "client B/sub", "")
	for run := 1; run <= cfg.runs; run++ {
		for _, mode := range cfg.modes {
			t, err := benchTargetFor(cfg, mode)
			if err != nil {
				return err
			}
			err = benchMode(ctx, cfg, cf, run, mode, t, out)
			t.close()
			if err != nil {
				return fmt.Errorf("run %d %s: %w", run, mode, err)
			}
			time.Sleep(2 * time.Second) // let both sides tear the streams down before the next memory baseline
		}
	}
	return nil
}

// benchTargetFor builds the subscribers of one mode. Both modes use the same client
// machinery — one fresh resilience.NewHTTPClient (HTTP/2, a new connection per 250
// streams as the servers allow), one Connect gRPC stream per subscriber, the decoded
// message read on the subscriber's goroutine — so that the comparison is of the servers:
// WatchBus's Subscribe against ChainFire's own Watch, one watch per stream (what N
// processes each watching ChainFire would cost it).
func benchTargetFor(cfg benchConfig, mode string) (benchTarget, error) {
	hcs := make([]*http.Client, max(1, cfg.clients))
	for i := range hcs {
		hcs[i] = resilience.NewHTTPClient(resilience.TransportOptions{})
	}
	var next atomic.Int64
	pick := func() *http.Client { return hcs[int(next.Add(1))%len(hcs)] }
	t := benchTarget{close: func() {
		for _, hc := range hcs {
			hc.CloseIdleConnections()
		}
	}}
	switch mode {
	case "watchbus":
		t.memURL, t.cpuURLs = cfg.wbMetrics, []string{cfg.wbMetrics, cfg.cfMetrics}
		t.sub = func(ctx context.Context, prefix string, ready func(), got func([]byte)) error {
			client := watchbusv1connect.NewWatchBusServiceClient(pick(), cfg.watchbus, connect.WithGRPC(), connect.WithInterceptors(bearer(cfg.token)))
			st, err := client.Subscribe(ctx, connect.NewRequest(&watchbusv1.SubscribeRequest{Prefixes: [][]byte{[]byte(prefix)}}))
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
		u := cfg.chainfire[0]
		if !strings.Contains(u, "://") {
			u = "http://" + u
		}
		t.memURL, t.cpuURLs = cfg.cfMetrics, []string{cfg.cfMetrics}
		t.sub = func(ctx context.Context, prefix string, ready func(), got func([]byte)) error {
			end := chainfire.PrefixEnd([]byte(prefix))
			st := etcdserverpbconnect.NewWatchClient(pick(), u, connect.WithGRPC()).Watch(ctx)
			defer st.CloseResponse()
			// A canceled context does not wake a bidi Receive; closing the request side
			// makes ChainFire end the stream (as pkg/chainfire does).
			defer context.AfterFunc(ctx, func() { _ = st.CloseRequest() })()
			if err := st.Send(&etcdserverpb.WatchRequest{RequestUnion: &etcdserverpb.WatchRequest_CreateRequest{
				CreateRequest: &etcdserverpb.WatchCreateRequest{Key: []byte(prefix), RangeEnd: end}}}); err != nil {
				return err
			}
			for {
				r, err := st.Receive()
				if err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if r.Created {
					ready()
				}
				if r.Canceled {
					return fmt.Errorf("watch canceled: %s", r.CancelReason)
				}
				for _, ev := range r.Events {
					got(ev.Kv.Value)
				}
			}
		}
	default:
		return t, fmt.Errorf("--modes: unknown mode %q", mode)
	}
	return t, nil
}

// latencyShards is how many histograms the subscribers record into (subscriber i into
// shard i % latencyShards), so that recording rarely contends and the histograms'
// memory does not grow with the subscribers.
const latencyShards = 64

type shard struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newHist() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, int64(60*time.Second/time.Microsecond), 3)
}

func benchMode(ctx context.Context, cfg benchConfig, cf *chainfire.Client, run int, mode string, t benchTarget, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	shards := make([]shard, latencyShards)
	for i := range shards {
		shards[i].h = newHist()
	}
	putHist := newHist()
	// Twice: the first GC only moves sync.Pool contents (the HTTP/2 client's 512 KiB
	// request-body buffers of the previous mode's bidi streams) to the victim cache.
	runtime.GC()
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	mem0 := serverMem(t.memURL)

	var (
		wg, readyWG sync.WaitGroup
		failed      atomic.Int64
		delivered   atomic.Int64
		firstErr    atomic.Value
	)
	start := time.Now()
	readyWG.Add(cfg.subscribers)
	for i := range cfg.subscribers {
		sh := &shards[i%latencyShards]
		wg.Go(func() {
			var once sync.Once
			done := func() { once.Do(readyWG.Done) }
			defer done()
			err := t.sub(ctx, benchPrefix(cfg, i), done, func(v []byte) {
				ns, err := strconv.ParseInt(string(v), 10, 64)
				if err != nil {
					return
				}
				d := max(1, time.Since(time.Unix(0, ns)).Microseconds())
				sh.mu.Lock()
				_ = sh.h.RecordValue(d)
				sh.mu.Unlock()
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
	mem1 := serverMem(t.memURL)

	stopProfile := func() {}
	if cfg.cpuProfile != "" {
		var err error
		if stopProfile, err = startCPUProfile(fmt.Sprintf("%s.%d.%s", cfg.cpuProfile, run, mode)); err != nil {
			return err
		}
		defer func() { stopProfile() }()
	}
	// Writer: rate puts per second, value = the time just before the put, in unix nanos.
	srvCPU0, cliCPU0, wall0 := cpuSeconds(t.cpuURLs), selfCPU(), time.Now()
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
			key := fmt.Sprintf("%s%08d", benchPrefix(cfg, puts), puts%1000)
			t0 := time.Now()
			if _, err := cf.Put(ctx, key, strconv.FormatInt(t0.UnixNano(), 10)); err != nil {
				return err
			}
			_ = putHist.RecordValue(max(1, time.Since(t0).Microseconds()))
			puts++
		}
	}
	tick.Stop()
	putWall := time.Since(wall0).Seconds()
	srvCPUTotal, cliCPUTotal := cpuSeconds(t.cpuURLs)-srvCPU0, selfCPU()-cliCPU0
	srvCPU, cliCPU := srvCPUTotal/putWall, cliCPUTotal/putWall
	// Let the tail arrive: wait until everything is delivered, at most 5 s.
	want := expectedEvents(cfg, puts)
	for deadline := time.Now().Add(5 * time.Second); delivered.Load() < want && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
	}
	stopProfile()
	stopProfile = func() {}
	cancel()
	wg.Wait()
	total := newHist()
	for i := range shards {
		total.Merge(shards[i].h)
	}
	us := func(h *hdrhistogram.Histogram, q float64) string {
		return (time.Duration(h.ValueAtQuantile(q)) * time.Microsecond).Round(10 * time.Microsecond).String()
	}
	serverPer := "n/a"
	if mem0 > 0 && mem1 > 0 {
		serverPer = strconv.FormatInt(int64(mem1-mem0)/int64(cfg.subscribers), 10)
	}
	clientPer := (int64(ms1.HeapInuse) + int64(ms1.StackInuse) - int64(ms0.HeapInuse) - int64(ms0.StackInuse)) / int64(cfg.subscribers)
	note := ""
	if delivered.Load() != want {
		note = "INCOMPLETE"
	}
	perEvent := func(cpu float64) float64 { return cpu / float64(max(1, want)) * 1e6 }
	fmt.Fprintf(out, "%-4d %-10s %6d %21s %9s %9s %9s %9s %9s %10.2f %11.2f %10.1f %10.1f %11s %12d %12s\n", run, mode, puts,
		fmt.Sprintf("%d/%d", delivered.Load(), want), us(putHist, 50), us(total, 50), us(total, 99),
		(time.Duration(total.Max()) * time.Microsecond).Round(10*time.Microsecond),
		subscribeTime.Round(time.Millisecond), srvCPU, cliCPU, perEvent(srvCPUTotal), perEvent(cliCPUTotal), serverPer, clientPer, note)
	return nil
}

// startCPUProfile profiles this process into path until the returned stop is called.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// raiseNoFile lifts the soft open-files limit to the hard one: 10,000 subscribers need
// a few hundred connections here and as many streams' worth of descriptors on the
// servers' side. (The Go runtime does this too since 1.19; this says so when it is low.)
func raiseNoFile(out io.Writer) {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil {
		return
	}
	if l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
	if l.Cur < 4096 {
		fmt.Fprintf(out, "warning: open files limit %d is low; raise ulimit -n\n", l.Cur)
	}
}

// serverMem is a server's Go heap in use plus goroutine stacks, from its /metrics (0 if
// unavailable). Unlike the resident set it shrinks when streams go away, so successive
// runs in one process measure their own growth (it includes garbage not yet collected).
func serverMem(url string) float64 {
	h := scrapeMetric(url, "go_memstats_heap_inuse_bytes")
	st := scrapeMetric(url, "go_memstats_stack_inuse_bytes")
	if h == 0 {
		return 0
	}
	return h + st
}

// selfCPU is this process's user+system CPU time in seconds.
func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// cpuSeconds sums process_cpu_seconds_total over /metrics URLs.
func cpuSeconds(urls []string) float64 {
	var sum float64
	for _, u := range urls {
		sum += scrapeMetric(u, "process_cpu_seconds_total")
	}
	return sum
}

// scrapeMetric reads an unlabelled metric from a /metrics URL (0 if unavailable).
func scrapeMetric(url, name string) float64 {
	if url == "" {
		return 0
	}
	resp, err := http.Get(url)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return f
			}
		}
	}
	return 0
}
