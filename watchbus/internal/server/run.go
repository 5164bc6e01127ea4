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
	srv.Handle(path, withStreamControl(h))

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
	sc, _ := ctx.Value(streamControlKey{}).(*streamControl)
	stream := bus.Stream{Send: st.Send}
	if sc != nil {
		stream.Abort = sc.abort
		stream.Hold = sc.gate.hold
		defer sc.finish()
	}
	err := h.bus.Subscribe(ctx, req.Msg, stream)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return bus.ConnectError(err)
}

// streamControl is what the bus needs of a stream's transport beyond Connect's Send:
// aborting a Send blocked on a subscriber that stopped reading (the slow-consumer
// policy) and holding flushes while a run of messages is written (bus.Stream.Hold).
type streamControl struct {
	mu   sync.Mutex
	done bool
	rc   *http.ResponseController
	gate *flushGate
}

type streamControlKey struct{}

// abort sets the stream's write deadline to now, so that a blocked Send fails. It is
// safe to call from any goroutine, also after the handler returned (it then does
// nothing).
func (a *streamControl) abort() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.done {
		_ = a.rc.SetWriteDeadline(time.Now())
	}
}

func (a *streamControl) finish() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.done = true
}

// flushGate is the http.ResponseWriter Connect writes a stream to: Connect flushes after
// every message, and the gate passes the flush on unless the bus holds it because
// another message follows at once. A flush of the HTTP/2 server is a hand-off to the
// connection's writer goroutine and a socket write; a run of held messages goes out in
// the next flush (or earlier in 4 KiB chunks, the server's stream buffer).
//
// Concurrency: hold and Flush are called on the handler's goroutine only (the bus's
// Subscribe goroutine, which also calls Send).
type flushGate struct {
	http.ResponseWriter
	flusher http.Flusher
	held    bool
}

// Flush implements http.Flusher.
func (g *flushGate) Flush() {
	if !g.held {
		g.flusher.Flush()
	}
}

// Unwrap lets http.ResponseController reach the server's writer.
func (g *flushGate) Unwrap() http.ResponseWriter { return g.ResponseWriter }

func (g *flushGate) hold(on bool) { g.held = on }

// withStreamControl puts a streamControl for the request in its context and gives the
// handler the flush gate as its writer (when the server's writer can flush at all).
func withStreamControl(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sc := &streamControl{rc: http.NewResponseController(w)}
		defer sc.finish()
		if f, ok := w.(http.Flusher); ok {
			sc.gate = &flushGate{ResponseWriter: w, flusher: f}
			w = sc.gate
		} else {
			sc.gate = &flushGate{}
		}
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), streamControlKey{}, sc)))
	})
}
