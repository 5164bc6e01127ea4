// Package server runs one WatchBus replica: it connects to ChainFire (retrying until it
// can), runs the bus's upstream watch and window, and serves WatchBusService.Subscribe,
// health, readiness and metrics on one port, authorizing every Subscribe with pkg/auth
// (permission events.watch) or, with --auth none, not at all. A replica keeps no state
// beyond its in-memory window: run several over one ChainFire.
package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	plasmaserver "plasmacloud.dev/pkg/server"
	"plasmacloud.dev/watchbus/internal/bus"
)

// Auth modes.
const (
	AuthIAM  = plasmaserver.AuthIAM
	AuthNone = plasmaserver.AuthNone
)

// Config is everything Run needs. Start from DefaultConfig.
type Config struct {
	// Listen is host:port of the API (default ":7002"); Listener, when set, is used
	// instead (tests).
	Listen   string
	Listener net.Listener
	// TLS serves HTTPS when its files are set.
	TLS plasmaserver.TLSFiles
	// ChainFire holds the ChainFire client URLs and the TLS files for https://.
	ChainFire plasmaserver.ChainFireFlags
	// DataDir is accepted for the shared command line; WatchBus keeps no local state.
	DataDir string
	// Auth: Mode "iam" (default: IAMEndpoints required) or "none" (development only);
	// Issuer and Audience tokens must carry (defaults: IAM's); ClientID and ClientSecret,
	// WatchBus's own service account, authenticate its policy stream (iam.policy.watch).
	// Optional: without them the stream is opened without a token and works only if IAM
	// allows it.
	Auth plasmaserver.AuthFlags
	// Window, queue and slow-consumer bounds (see bus.Config).
	WindowEvents        int
	WindowAge           time.Duration
	SubscriberQueue     int
	SlowConsumerTimeout time.Duration
	// Logger for operations (nil discards).
	Logger *slog.Logger
	// DrainTimeout bounds the graceful shutdown (default 10 s).
	DrainTimeout time.Duration
	// Pprof serves net/http/pprof under /debug/pprof/ on the API port (off by default:
	// profiles expose internals and cost CPU while taken).
	Pprof bool
}

// DefaultConfig returns the defaults of every field.
func DefaultConfig() Config {
	return Config{
		Listen:              ":7002",
		ChainFire:           plasmaserver.ChainFireFlags{Endpoints: []string{"http://127.0.0.1:2379"}},
		Auth:                plasmaserver.AuthFlags{Mode: AuthIAM, Issuer: "https://iam.plasmacloud.internal", Audience: "plasmacloud"},
		WindowEvents:        bus.DefaultWindowEvents,
		WindowAge:           bus.DefaultWindowAge,
		SubscriberQueue:     bus.DefaultSubscriberQueue,
		SlowConsumerTimeout: bus.DefaultSlowConsumerTimeout,
		DrainTimeout:        10 * time.Second,
	}
}

// Validate checks the configuration. Secure is the default: without IAM endpoints or
// --auth none the server refuses to start.
func (c *Config) Validate() error {
	var errs []error
	if c.Listen == "" && c.Listener == nil {
		errs = append(errs, errors.New("--listen is required"))
	}
	if len(c.ChainFire.Endpoints) == 0 {
		errs = append(errs, errors.New("--chainfire-endpoints is required"))
	}
	switch c.Auth.Mode {
	case AuthNone:
		if len(c.Auth.IAMEndpoints) > 0 {
			errs = append(errs, errors.New("--auth none and --iam-endpoints exclude each other"))
		}
	case AuthIAM, "":
		if len(c.Auth.IAMEndpoints) == 0 {
			errs = append(errs, errors.New("--iam-endpoints is required (or --auth none, for development only)"))
		}
		if (c.Auth.ClientID == "") != (c.Auth.ClientSecret == "") {
			errs = append(errs, errors.New("--iam-client-id and --iam-client-secret-file go together"))
		}
	default:
		errs = append(errs, fmt.Errorf("--auth %q: want iam or none", c.Auth.Mode))
	}
	if c.WindowEvents < 1 {
		errs = append(errs, fmt.Errorf("--window-events %d: want at least 1", c.WindowEvents))
	}
	if c.WindowAge < 0 {
		errs = append(errs, fmt.Errorf("--window-age %s: must not be negative", c.WindowAge))
	}
	if c.SubscriberQueue < 1 {
		errs = append(errs, fmt.Errorf("--subscriber-queue %d: want at least 1", c.SubscriberQueue))
	}
	if c.SlowConsumerTimeout < 100*time.Millisecond {
		errs = append(errs, fmt.Errorf("--slow-consumer-timeout %s: want at least 100ms", c.SlowConsumerTimeout))
	}
	return errors.Join(errs...)
}
