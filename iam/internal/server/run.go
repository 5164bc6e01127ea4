package server

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"plasmacloud.dev/iam/internal/api"
	"plasmacloud.dev/iam/internal/audit"
	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/iam/internal/login"
	"plasmacloud.dev/iam/internal/policy"
	"plasmacloud.dev/iam/internal/store"
	"plasmacloud.dev/iam/internal/token"
	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/chainfire"
	plasmaserver "plasmacloud.dev/pkg/server"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// Services are the gRPC service names a replica serves (health and reflection).
var Services = []string{
	iamv1connect.UserServiceName, iamv1connect.ServiceAccountServiceName, iamv1connect.ProjectServiceName,
	iamv1connect.RoleServiceName, iamv1connect.BindingServiceName, iamv1connect.TokenServiceName,
	iamv1connect.KeyServiceName, iamv1connect.PolicyServiceName,
}

// Run serves one replica until ctx is canceled, then shuts down gracefully: /readyz turns
// 503, policy streams end with Unavailable (clients resume on another replica), in-flight
// requests drain (up to DrainTimeout), background loops stop and the ChainFire client
// closes. The port is served from the start; until ChainFire has been reached and the
// replica initialized, /readyz says why it is not ready and API calls get Unavailable.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	auditLog := audit.New(cfg.Audit)
	if cfg.Audit == nil {
		auditLog = audit.New(log)
	}
	mk := cfg.MasterKey
	if mk == nil {
		log.Warn("USING THE PUBLICLY KNOWN INSECURE DEV MASTER KEY (--dev-insecure-master-key): signing keys in ChainFire are readable by anyone; never do this in production")
		mk = keys.InsecureDevMasterKey()
	}

	cf, err := cfg.ChainFire.Client(log)
	if err != nil {
		return err
	}
	defer cf.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := newMetrics(reg)

	r := &replica{cfg: cfg, log: log, audit: auditLog, cf: cf, mk: mk, metrics: m}
	srvCfg := plasmaserver.Config{Addr: cfg.Listen, Listener: cfg.Listener, Logger: log, Registry: reg,
		Ready: r.ready, Services: Services, DrainTimeout: cfg.DrainTimeout}
	if cfg.TLS.Enabled() {
		if srvCfg.TLS, err = cfg.TLS.ServerConfig(); err != nil {
			return err
		}
	}
	srv := plasmaserver.New(srvCfg)
	srv.Handle("/", r) // every API path; answers Unavailable until initialized

	runCtx, stopRun := context.WithCancel(context.Background())
	defer stopRun()
	srvCtx, stopServing := context.WithCancel(context.Background())
	defer stopServing()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(srvCtx) }()

	initErr := make(chan error, 1)
	go func() { initErr <- r.init(runCtx, ctx, srv.DrainStarted()) }()

	select {
	case err := <-errc:
		return err
	case err := <-initErr:
		if err != nil {
			stopServing()
			<-errc
			return err
		}
		_ = plasmaserver.Notify("READY=1")
		log.Info("iam replica ready", "issuer", cfg.Issuer)
	case <-ctx.Done():
	}
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	_ = plasmaserver.Notify("STOPPING=1")
	stopServing()
	serveErr := <-errc
	stopRun()
	return serveErr
}

// replica is the wired state of one running replica.
type replica struct {
	cfg     Config
	log     *slog.Logger
	audit   *audit.Logger
	cf      *chainfire.Client
	mk      *keys.MasterKey
	metrics *metrics

	handler atomic.Pointer[http.Handler] // set once initialized
	status  atomic.Pointer[string]       // why not ready
	keys    *keys.Manager
	view    *policy.View
	pol     *auth.Policy
}

// ServeHTTP routes to the API once initialized.
func (r *replica) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if h := r.handler.Load(); h != nil {
		(*h).ServeHTTP(w, req)
		return
	}
	w.Header().Set("Retry-After", "1")
	http.Error(w, "iam: not ready: "+r.notReady(), http.StatusServiceUnavailable)
}

func (r *replica) notReady() string {
	if s := r.status.Load(); s != nil {
		return *s
	}
	return "starting"
}

func (r *replica) setStatus(s string) { r.status.Store(&s) }

// ready backs /readyz.
func (r *replica) ready(ctx context.Context) error {
	if r.handler.Load() == nil {
		return errors.New(r.notReady())
	}
	if _, err := r.keys.Active(); err != nil {
		return err
	}
	if err := r.view.Ready(); err != nil {
		return err
	}
	if err := r.pol.Fresh(); err != nil {
		return err
	}
	// ChainFire reachable with a quorum: one bounded linearizable read. Without it
	// logins and admin calls fail, so the replica must not look ready.
	ctx, cancel := context.WithTimeout(ctx, readyProbeTimeout)
	defer cancel()
	if _, err := r.cf.Get(ctx, "/iam/meta/", chainfire.WithPrefix(), chainfire.WithCountOnly()); err != nil {
		return fmt.Errorf("chainfire unreachable: %w", err)
	}
	return nil
}

// readyProbeTimeout bounds the ChainFire read of one /readyz check.
const readyProbeTimeout = 2 * time.Second

// init brings the replica up, retrying what depends on ChainFire until it succeeds or
// stop ends. Background loops live until runCtx ends.
func (r *replica) init(runCtx, stop context.Context, drain <-chan struct{}) error {
	cfg := r.cfg
	st, err := store.New(r.cf, store.Options{Logger: r.log.With("component", "store")})
	if err != nil {
		return err
	}
	retry := func(what string, f func(ctx context.Context) error) error {
		for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
			ctx, cancel := context.WithTimeout(stop, 10*time.Second)
			err := f(ctx)
			cancel()
			if err == nil {
				return nil
			}
			if errors.Is(err, keys.ErrMasterKey) || stop.Err() != nil {
				return err
			}
			r.setStatus(fmt.Sprintf("%s: %v", what, err))
			r.log.Warn("startup step failed; retrying", "step", what, "err", err, "retry_in", delay)
			select {
			case <-stop.Done():
				return stop.Err()
			case <-time.After(delay):
			}
		}
	}
	r.setStatus("connecting to ChainFire")
	if err := retry("ensure built-in roles", st.EnsureBuiltins); err != nil {
		return err
	}
	password, generated := cfg.BootstrapAdminPassword, false
	if password == "" {
		b := make([]byte, 18)
		_, _ = rand.Read(b)
		password, generated = base64.RawURLEncoding.EncodeToString(b), true
	}
	if err := retry("bootstrap", func(ctx context.Context) error {
		created, err := st.Bootstrap(ctx, password)
		if err == nil && created {
			r.log.Info("bootstrap: created user admin with the global admin role")
			r.audit.Record(ctx, audit.Event{Action: "bootstrap", Target: "user:admin"})
			if generated && cfg.Stderr != nil {
				fmt.Fprintf(cfg.Stderr, "\n*** IAM bootstrap: user \"admin\" created with generated password: %s\n*** It is shown only this once. Log in and change it.\n\n", password)
			}
		}
		return err
	}); err != nil {
		return err
	}

	maxLifetime := cfg.AccessTokenTTL + cfg.ClockSkew
	km, err := keys.New(keys.Config{Client: r.cf, MasterKey: r.mk, Algorithm: cfg.KeyAlgorithm,
		PublishDelay: cfg.KeyPublishDelay, RotationInterval: cfg.KeyRotationInterval, RetireFor: maxLifetime,
		Logger: r.log, Audit: r.audit, OnRotate: func(t string) { r.metrics.keyTransitions.WithLabelValues(t).Inc() }})
	if err != nil {
		return err
	}
	r.keys = km
	if err := retry("signing keys", func(ctx context.Context) error { return km.Start(runCtx) }); err != nil {
		return err
	}
	view := policy.New(policy.Config{Client: r.cf, Drain: drain, Logger: r.log})
	r.view = view
	if err := retry("policy view", func(context.Context) error { return view.Start(runCtx) }); err != nil {
		return err
	}
	r.metrics.watchers(view)

	// IAM authorizes its own API with pkg/auth over its in-process keys and policy.
	pol := auth.NewPolicy(auth.PolicyConfig{Logger: r.log})
	r.pol = pol
	go r.feedPolicy(runCtx, view, pol)
	verifier, err := auth.NewVerifier(auth.VerifierConfig{Keys: keySource{km}, Policy: pol, Issuer: cfg.Issuer,
		Audience: cfg.Audience[0], ClockSkew: cfg.ClockSkew})
	if err != nil {
		return err
	}
	interceptor, err := auth.NewInterceptor(auth.InterceptorConfig{Verifier: verifier, Policy: pol,
		Permissions: Permissions(), Public: PublicProcedures(), Logger: r.log})
	if err != nil {
		return err
	}
	authn, err := login.New(login.Config{Store: st, Audit: r.audit, Logger: r.log})
	if err != nil {
		return err
	}
	tokens, err := token.New(token.Config{Client: r.cf, Keys: km, Auth: authn, Directory: st, Issuer: cfg.Issuer,
		Audience: cfg.Audience, AccessTTL: cfg.AccessTokenTTL, RefreshTTL: cfg.RefreshTokenTTL, Skew: cfg.ClockSkew,
		Logger: r.log, Audit: r.audit, OnResult: r.metrics.tokenResult})
	if err != nil {
		return err
	}

	mux := http.NewServeMux()
	opts := []connect.HandlerOption{connect.WithInterceptors(interceptor)}
	tok := api.NewTokens(tokens, pol.AuthorizeContext)
	mux.Handle(iamv1connect.NewTokenServiceHandler(tok, opts...))
	mux.Handle(iamv1connect.NewKeyServiceHandler(api.NewKeys(km, r.audit), opts...))
	mux.Handle(iamv1connect.NewPolicyServiceHandler(api.NewPolicy(view), opts...))
	api.NewAdmin(st, r.audit, r.log).Register(mux, opts...)
	mux.HandleFunc("/oauth2/token", tok.ServeToken)
	mux.HandleFunc("/oauth2/revoke", tok.ServeRevoke)
	api.NewWellKnown(km, cfg.Issuer, cfg.PublicURL).Register(mux)

	// Ready once the in-process policy copy holds its first snapshot.
	for pol.Fresh() != nil {
		select {
		case <-stop.Done():
			return stop.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	var h http.Handler = mux
	r.handler.Store(&h)
	return nil
}

// feedPolicy applies the policy stream to IAM's own policy copy, in process.
func (r *replica) feedPolicy(ctx context.Context, view *policy.View, pol *auth.Policy) {
	for ctx.Err() == nil {
		err := view.Stream(ctx, pol.Revision(), func(msg *iamv1WatchPolicyResponse) error {
			if err := pol.Apply(msg); err != nil {
				r.log.Warn("policy change not fully applied", "revision", msg.GetRevision(), "err", err)
			}
			return nil
		})
		if ctx.Err() != nil || errors.Is(err, policy.ErrDraining) {
			return
		}
		r.log.Warn("in-process policy feed restarting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}
