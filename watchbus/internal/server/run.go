package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	plasmaserver "plasmacloud.dev/pkg/server"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
	"plasmacloud.dev/proto/watchbus/v1/watchbusv1connect"
	"plasmacloud.dev/watchbus/internal/bus"
)

// Permission is what a caller needs to Subscribe.
const Permission = "events.watch"

// Permissions is WatchBus's procedure → permission table.
func Permissions() map[string]string {
	return map[string]string{watchbusv1connect.WatchBusServiceSubscribeProcedure: Permission}
}

// Run serves one replica until ctx is canceled, then shuts down gracefully: /readyz turns
// 503, streams end with Unavailable and a Resume detail (clients resume on another
// replica), in-flight requests drain (up to DrainTimeout), and the upstream watch and the
// ChainFire client stop. The port is served from the start; until the upstream watch is
// established /readyz says why and Subscribe answers Unavailable.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cf, err := cfg.ChainFire.Client(log)
	if err != nil {
		return err
	}
	defer cf.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()

	// Authorization: pkg/auth over IAM, or nothing at all with --auth none.
	var (
		authNote string
		bg       sync.WaitGroup
	)
	defer bg.Wait()
	defer stopRun()
	if cfg.Auth.Mode == AuthNone {
		authNote = " (AUTH DISABLED: --auth none, development only; every caller may subscribe to everything)"
	}
	az, err := cfg.Auth.Setup(log, Permissions())
	if err != nil {
		return err
	}
	defer az.Close()
	interceptor, authReady := az.Interceptor, az.Ready
	bg.Go(func() { _ = az.Run(runCtx) })

	srvCfg := plasmaserver.Config{Addr: cfg.Listen, Listener: cfg.Listener, Logger: log, Registry: reg,
		Services: []string{watchbusv1connect.WatchBusServiceName}, DrainTimeout: cfg.DrainTimeout}
	if cfg.TLS.Enabled() {
		if srvCfg.TLS, err = cfg.TLS.ServerConfig(); err != nil {
			return err
		}
	}
	var b *bus.Bus
	ready := func(ctx context.Context) error {
		return errors.Join(b.Ready(), authReady(ctx))
	}
	srvCfg.Ready = ready
	srv := plasmaserver.New(srvCfg)
	b, err = bus.New(bus.Config{Source: cf, WindowEvents: cfg.WindowEvents, WindowAge: cfg.WindowAge,
		SubscriberQueue: cfg.SubscriberQueue, SlowConsumerTimeout: cfg.SlowConsumerTimeout,
		Metrics: bus.NewMetrics(reg), Logger: log.With("component", "bus"), Drain: srv.DrainStarted()})
	if err != nil {
		return err
	}
	// /readyz with a note when authorization is off (GET is more specific than the
	// plumbing's own pattern, so it wins for GET; HEAD still gets the plain one).
	srv.Handle("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		err := ready(r.Context())
		if srv.Draining() {
			err = errors.New("shutting down")
		}
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v%s\n", err, authNote)
			return
		}
		fmt.Fprintf(w, "ok%s\n", authNote)
	}))
	if cfg.Pprof {
		log.Warn("serving /debug/pprof/ on the API port (--pprof)")
		srv.Handle("/debug/pprof/", http.HandlerFunc(pprof.Index))
		srv.Handle("/debug/pprof/cmdline", http.HandlerFunc(pprof.Cmdline))
		srv.Handle("/debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		srv.Handle("/debug/pprof/symbol", http.HandlerFunc(pprof.Symbol))
		srv.Handle("/debug/pprof/trace", http.HandlerFunc(pprof.Trace))
	}
	// Small messages go out uncompressed: gzip's per-message compressor reset cost 44% of
	// the replica's CPU at 1,000 subscribers (performance.md, run 2), for events of a few
	// hundred bytes that do not shrink. ChainFire uses the same threshold.
	path, h := watchbusv1connect.NewWatchBusServiceHandler(&handler{bus: b, log: log},
		connect.WithInterceptors(interceptor), connect.WithCompressMinBytes(compressMinBytes))
	srv.Handle(path, withAborter(h))

	srvCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(srvCtx) }()
	busDone := make(chan error, 1)
	bg.Go(func() { busDone <- b.Run(runCtx) })

	// READY=1 once the upstream is established.
	notified := false
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			log.Info("shutting down")
			_ = plasmaserver.Notify("STOPPING=1")
			stopServing()
			serveErr := <-errc
			stopRun()
			return serveErr
		case <-tick.C:
			if !notified && b.Ready() == nil {
				notified = true
				_ = plasmaserver.Notify("READY=1")
				log.Info("watchbus replica ready", "head", b.Window().Head(), "auth", cfg.Auth.Mode)
			}
		}
	}
}

// compressMinBytes is the smallest message the server compresses (when the client
// accepts gzip).
const compressMinBytes = 4096

// handler adapts the bus to the generated Connect service.
type handler struct {
	watchbusv1connect.UnimplementedWatchBusServiceHandler
	bus *bus.Bus
	log *slog.Logger
}

// Subscribe serves one stream; errors are mapped to Connect codes with details here,
// once.
func (h *handler) Subscribe(ctx context.Context, req *connect.Request[watchbusv1.SubscribeRequest],
	st *connect.ServerStream[watchbusv1.SubscribeResponse]) error {
	ab, _ := ctx.Value(aborterKey{}).(*aborter)
	stream := bus.Stream{Send: st.Send}
	if ab != nil {
		stream.Abort = ab.abort
		defer ab.finish()
	}
	err := h.bus.Subscribe(ctx, req.Msg, stream)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return bus.ConnectError(err)
}

// aborter lets the slow-consumer policy fail a Send blocked on a subscriber that stopped
// reading: it sets the stream's write deadline to now. It is safe to call after the
// handler returned (it then does nothing).
type aborter struct {
	mu   sync.Mutex
	done bool
	rc   *http.ResponseController
}

type aborterKey struct{}

func (a *aborter) abort() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.done {
		_ = a.rc.SetWriteDeadline(time.Now())
	}
}

func (a *aborter) finish() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.done = true
}

// withAborter puts an aborter for the request's ResponseWriter in its context.
func withAborter(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ab := &aborter{rc: http.NewResponseController(w)}
		defer ab.finish()
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), aborterKey{}, ab)))
	})
}
