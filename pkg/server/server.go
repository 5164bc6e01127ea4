// Package server is the HTTP plumbing every PlasmaCloud service shares: one port serving
// Connect, gRPC and gRPC-Web (cleartext HTTP/2 by default, TLS when configured), the
// /healthz, /readyz and /metrics endpoints, gRPC health and reflection, explicit timeouts and
// header limits, and a graceful shutdown that drains in-flight requests.
//
// A service builds a Server, registers its Connect handlers with Handle, and calls Serve;
// Serve returns when its context is canceled and every in-flight request has finished (or
// the drain timeout passed).
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadyFunc reports whether the service can serve; a non-nil error is the reason it cannot,
// shown by /readyz with status 503.
type ReadyFunc func(ctx context.Context) error

// Config describes one server. Zero values take the defaults documented on each field.
type Config struct {
	// Listener, when set, is used instead of listening on Addr (tests, socket activation).
	Listener net.Listener
	// Addr is host:port to listen on.
	Addr string
	// TLS, when set, serves HTTPS (HTTP/2 via ALPN) instead of cleartext HTTP/2.
	TLS *tls.Config
	// Logger receives access errors and lifecycle messages. Nil discards.
	Logger *slog.Logger
	// Registry is where /metrics reads from; nil creates one with Go and process collectors.
	Registry *prometheus.Registry
	// Ready backs /readyz and gRPC health; nil means always ready.
	Ready ReadyFunc
	// Services are the fully qualified gRPC service names offered, for health and reflection.
	Services []string
	// DrainTimeout bounds how long Serve waits for in-flight requests on shutdown (default 10 s).
	DrainTimeout time.Duration
	// ReadHeaderTimeout (default 10 s) and IdleTimeout (default 2 min) guard against slow or
	// idle clients; there is no write timeout because watch streams live for hours.
	ReadHeaderTimeout, IdleTimeout time.Duration
	// MaxHeaderBytes defaults to 64 KiB.
	MaxHeaderBytes int
}

// Server is one service endpoint. Handle may only be called before Serve.
type Server struct {
	cfg      Config
	mux      *http.ServeMux
	registry *prometheus.Registry
	checker  *readyChecker
	draining atomic.Bool
	drainCh  chan struct{}
}

// New builds a server and registers the health, readiness, metrics and reflection endpoints.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	if cfg.ReadHeaderTimeout == 0 {
		cfg.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.MaxHeaderBytes == 0 {
		cfg.MaxHeaderBytes = 64 << 10
	}
	reg := cfg.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), registry: reg, drainCh: make(chan struct{})}
	s.checker = &readyChecker{ready: cfg.Ready, draining: &s.draining}

	s.mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	s.mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := s.checker.check(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	s.mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.mux.Handle(grpchealth.NewHandler(s.checker))
	reflector := grpcreflect.NewStaticReflector(append([]string{grpchealth.HealthV1ServiceName}, cfg.Services...)...)
	s.mux.Handle(grpcreflect.NewHandlerV1(reflector))
	s.mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	return s
}

// Registry returns the registry /metrics serves, for the service's own collectors.
func (s *Server) Registry() *prometheus.Registry { return s.registry }

// Handle registers a handler (typically from a generated New…Handler) on the mux.
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Draining reports whether shutdown has begun; /readyz then answers 503.
func (s *Server) Draining() bool { return s.draining.Load() }

// DrainStarted is closed when shutdown begins. Long-lived stream handlers (watches, keep-alive
// streams) select on it and end with Unavailable so that their clients resume elsewhere;
// unary requests simply finish.
func (s *Server) DrainStarted() <-chan struct{} { return s.drainCh }

// Serve listens and serves until ctx is canceled, then stops accepting connections, marks
// itself not ready, and waits up to DrainTimeout for in-flight requests (streams included)
// before closing what is left. It returns nil after a clean drain.
func (s *Server) Serve(ctx context.Context) error {
	ln := s.cfg.Listener
	if ln == nil {
		var err error
		if ln, err = net.Listen("tcp", s.cfg.Addr); err != nil {
			return fmt.Errorf("server: listen %s: %w", s.cfg.Addr, err)
		}
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(s.cfg.TLS == nil)
	hs := &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		Protocols:         protocols,
		ErrorLog:          slog.NewLogLogger(s.cfg.Logger.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if s.cfg.TLS != nil {
		hs.TLSConfig = s.cfg.TLS.Clone()
		ln = tls.NewListener(ln, hs.TLSConfig)
	}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	s.cfg.Logger.Info("serving", "addr", ln.Addr().String(), "tls", s.cfg.TLS != nil)

	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	s.draining.Store(true)
	close(s.drainCh)
	drainCtx, cancel := context.WithTimeout(context.Background(), s.cfg.DrainTimeout)
	defer cancel()
	err := hs.Shutdown(drainCtx)
	if errors.Is(err, context.DeadlineExceeded) {
		s.cfg.Logger.Warn("drain timeout; closing remaining connections", "timeout", s.cfg.DrainTimeout)
		hs.Close()
		return nil
	}
	return err
}

// readyChecker adapts ReadyFunc to gRPC health.
type readyChecker struct {
	ready    ReadyFunc
	draining *atomic.Bool
}

func (c *readyChecker) check(ctx context.Context) error {
	if c.draining.Load() {
		return errors.New("shutting down")
	}
	if c.ready == nil {
		return nil
	}
	return c.ready(ctx)
}

// Check implements grpchealth.Checker: SERVING when ready, NOT_SERVING otherwise.
func (c *readyChecker) Check(ctx context.Context, _ *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if err := c.check(ctx); err != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}
