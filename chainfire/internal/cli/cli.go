// Package cli holds the client subcommands of the chainfire binary —
// etcdctl's commands, spoken through plasmacloud.dev/pkg/chainfire, so they
// work against ChainFire and against etcd alike.
//
// [Commands] returns the top-level commands: put, get, del, watch, compact,
// lease, member, move-leader, status, snapshot and bench. Every one of them
// (and every subcommand) takes the client flags:
//
//	--endpoints        comma-separated member URLs (env CHAINFIRE_ENDPOINTS,
//	                   then PLASMA_CHAINFIRE_ENDPOINTS; default http://127.0.0.1:2379)
//	--dial-timeout     connection timeout (default 2s)
//	--command-timeout  bound of the whole command, retries included (default 5s;
//	                   watch, lease keep-alive and bench are not bounded)
//	--keepalive-time --keepalive-timeout  HTTP/2 PING probing of silent
//	                   connections (default 2s, 3s; use >= 10s against etcd)
//	-o, --output       simple (etcdctl's format) or json (one object per line,
//	                   protobuf messages in protojson)
//	--cacert --cert --key  TLS for https:// endpoints (mutual TLS with cert+key)
//
// A command that fails returns an error naming what failed; the caller
// (cmd/chainfire) prints it and exits non-zero.
//
// The snapshot command is a parent: this package adds `snapshot save`;
// offline subcommands (`snapshot restore`) are added by the caller, which
// finds the command with [Find]:
//
//	cmds := cli.Commands()
//	cli.Find(cmds, "snapshot").AddCommand(restoreCommand())
package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/cliout"
)

// Environment variables read for the default of --endpoints, in order.
const (
	EnvEndpoints       = "CHAINFIRE_ENDPOINTS"
	EnvPlasmaEndpoints = "PLASMA_CHAINFIRE_ENDPOINTS"
)

// DefaultEndpoint is used when neither flag nor environment names one.
const DefaultEndpoint = "http://127.0.0.1:2379"

// Commands returns the client commands, fresh on every call (each has its
// own flag values), ready to be added to the binary's root command.
func Commands() []*cobra.Command {
	return []*cobra.Command{
		putCommand(),
		getCommand(),
		delCommand(),
		watchCommand(),
		compactCommand(),
		leaseCommand(),
		memberCommand(),
		moveLeaderCommand(),
		statusCommand(),
		snapshotCommand(),
		benchCommand(),
	}
}

// Find returns the command called name among cmds, or nil.
func Find(cmds []*cobra.Command, name string) *cobra.Command {
	for _, c := range cmds {
		if c.Name() == name {
			return c
		}
	}
	return nil
}

// globals are the client flags every command takes. Each top-level command
// owns one globals value, registered as its persistent flags so that its
// subcommands share it.
type globals struct {
	endpoints        []string
	dialTimeout      time.Duration
	commandTimeout   time.Duration
	keepAliveTime    time.Duration
	keepAliveTimeout time.Duration
	output           cliout.Output
	cacert           string
	cert             string
	key              string
}

// newGlobals registers the client flags on cmd's persistent flags.
func newGlobals(cmd *cobra.Command) *globals {
	g := &globals{output: cliout.Output{Human: "simple"}}
	fs := cmd.PersistentFlags()
	fs.StringSliceVar(&g.endpoints, "endpoints", defaultEndpoints(),
		"comma-separated member URLs (env "+EnvEndpoints+")")
	fs.DurationVar(&g.dialTimeout, "dial-timeout", 2*time.Second, "timeout to establish a connection")
	fs.DurationVar(&g.commandTimeout, "command-timeout", 5*time.Second,
		"timeout of the whole command, retries included")
	fs.DurationVar(&g.keepAliveTime, "keepalive-time", 2*time.Second,
		"probe a connection silent this long with a PING (use >= 10s against etcd)")
	fs.DurationVar(&g.keepAliveTimeout, "keepalive-timeout", 3*time.Second,
		"fail a connection whose PING is unanswered this long")
	g.output.Register(fs, "output format: simple or json")
	fs.StringVar(&g.cacert, "cacert", "", "CA bundle that verifies https:// endpoints")
	fs.StringVar(&g.cert, "cert", "", "client certificate for mutual TLS")
	fs.StringVar(&g.key, "key", "", "private key of --cert")
	return g
}

func defaultEndpoints() []string {
	for _, env := range []string{EnvEndpoints, EnvPlasmaEndpoints} {
		if v := strings.TrimSpace(os.Getenv(env)); v != "" {
			var eps []string
			for _, e := range strings.Split(v, ",") {
				if e = strings.TrimSpace(e); e != "" {
					eps = append(eps, e)
				}
			}
			return eps
		}
	}
	return []string{DefaultEndpoint}
}

// tlsConfig builds the TLS configuration from --cacert/--cert/--key; nil
// when none is given.
func (g *globals) tlsConfig() (*tls.Config, error) {
	if g.cacert == "" && g.cert == "" && g.key == "" {
		return nil, nil
	}
	conf := &tls.Config{MinVersion: tls.VersionTLS12}
	if g.cacert != "" {
		pem, err := os.ReadFile(g.cacert)
		if err != nil {
			return nil, fmt.Errorf("--cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate found", g.cacert)
		}
		conf.RootCAs = pool
	}
	if (g.cert == "") != (g.key == "") {
		return nil, fmt.Errorf("--cert and --key go together")
	}
	if g.cert != "" {
		pair, err := tls.LoadX509KeyPair(g.cert, g.key)
		if err != nil {
			return nil, fmt.Errorf("--cert/--key: %w", err)
		}
		conf.Certificates = []tls.Certificate{pair}
	}
	return conf, nil
}

// config returns the client configuration the flags describe.
func (g *globals) config() (chainfire.Config, error) {
	if err := g.output.Validate(); err != nil {
		return chainfire.Config{}, err
	}
	tlsConf, err := g.tlsConfig()
	if err != nil {
		return chainfire.Config{}, err
	}
	return chainfire.Config{
		Endpoints:        g.endpoints,
		TLS:              tlsConf,
		DialTimeout:      g.dialTimeout,
		KeepAliveTime:    g.keepAliveTime,
		KeepAliveTimeout: g.keepAliveTimeout,
	}, nil
}

// client builds a client from the flags. The caller closes it.
func (g *globals) client() (*chainfire.Client, error) {
	cfg, err := g.config()
	if err != nil {
		return nil, err
	}
	return chainfire.New(cfg)
}

// cmdContext returns the command's context (Background outside Execute).
func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// timeoutCtx bounds a command by --command-timeout.
func (g *globals) timeoutCtx(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return g.bound(cmdContext(cmd))
}

// bound derives a context bounded by --command-timeout (unbounded if 0).
func (g *globals) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if g.commandTimeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, g.commandTimeout)
}

// printer returns the output printer for cmd.
func (g *globals) printer(cmd *cobra.Command) *cliout.Printer {
	p, err := g.output.Printer(cmd.OutOrStdout())
	if err != nil {
		// config() validated the format before any output is produced.
		panic(err)
	}
	return p
}

// clientCommand is the shape of most commands: parse, connect, run with
// --command-timeout, print.
func clientCommand(g *globals, run func(ctx context.Context, c *chainfire.Client, p *cliout.Printer, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := g.client()
		if err != nil {
			return err
		}
		defer c.Close()
		ctx, cancel := g.timeoutCtx(cmd)
		defer cancel()
		return run(ctx, c, g.printer(cmd), args)
	}
}

// topLevel builds a top-level command with its own client flags.
func topLevel(cmd *cobra.Command) (*cobra.Command, *globals) {
	return cmd, newGlobals(cmd)
}
