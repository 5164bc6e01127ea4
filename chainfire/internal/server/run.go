// Package server runs one ChainFire member: the node, the etcd v3 API on the client URL, and
// the order of a graceful shutdown.
package server

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"plasmacloud.dev/chainfire/internal/api"
	"plasmacloud.dev/chainfire/internal/backup"
	"plasmacloud.dev/chainfire/internal/node"
	plasmaserver "plasmacloud.dev/pkg/server"
)

// Options are what Run needs besides the node configuration.
type Options struct {
	TLS plasmaserver.TLSFiles
	// Backup, when its Interval is positive, writes scheduled snapshots of the store.
	Backup backup.Config
}

// Run serves a member until ctx is canceled, then shuts down gracefully: a leader hands its
// leadership over first (writes keep flowing through the others), then the API drains
// in-flight requests and ends streams with Unavailable, then raft and the store close.
func Run(ctx context.Context, cfg node.Config, opts Options) error {
	log := cfg.Logger
	var err error
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	if opts.TLS.Enabled() {
		if cfg.PeerClientTLS, err = opts.TLS.ClientConfig(); err != nil {
			return err
		}
	}
	n, err := node.New(cfg, reg)
	if err != nil {
		return err
	}
	u, err := url.Parse(cfg.ListenClientURLs[0])
	if err != nil {
		n.Close()
		return fmt.Errorf("--listen-client-urls: %w", err)
	}
	srvCfg := plasmaserver.Config{
		Addr:     u.Host,
		Logger:   log,
		Registry: reg,
		Ready:    n.Ready,
		Services: api.Services,
	}
	if u.Scheme == "https" || opts.TLS.Enabled() {
		if srvCfg.TLS, err = opts.TLS.ServerConfig(); err != nil {
			n.Close()
			return err
		}
	}
	srv := plasmaserver.New(srvCfg)
	api.Register(srv, n, api.Options{Drain: srv.DrainStarted(), ReadMaxBytes: 4 * cfg.MaxRequestBytes})

	if opts.Backup.Interval > 0 {
		if opts.Backup.Dir == "" {
			opts.Backup.Dir = filepath.Join(cfg.DataDir, "backups")
		}
		opts.Backup.Logger = log.With("component", "backup")
		go backup.Run(ctx, n.Store(), opts.Backup)
	}

	srvCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(srvCtx) }()
	go func() {
		rctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for {
			if err := n.Ready(rctx); err == nil {
				_ = plasmaserver.Notify("READY=1")
				log.Info("member ready", "name", cfg.Name)
				return
			}
			select {
			case <-rctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()

	select {
	case err := <-errc:
		n.Close()
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	_ = plasmaserver.Notify("STOPPING=1")
	n.StepDown()
	stopServing()
	serveErr := <-errc
	closeErr := n.Close()
	if serveErr != nil {
		return serveErr
	}
	return closeErr
}
