// Package cli holds the client subcommands of the iam binary, spoken through
// plasmacloud.dev/pkg/iamclient (so they fail over between IAM replicas and retry what is
// safe to retry).
//
// [Commands] returns the top-level commands: login, logout, user, serviceaccount, project,
// role, bind, unbind, bindings, token and keys. Every one of them (and every subcommand)
// takes the client flags:
//
//	--endpoints    comma-separated IAM replica URLs (env PLASMA_IAM_ENDPOINTS;
//	               default http://127.0.0.1:7001)
//	--token-file   where login saves the tokens and other commands read them
//	               (default ~/.config/plasmacloud/token); PLASMA_TOKEN, when set, is
//	               used instead unless --token-file is given explicitly
//	--timeout      bound of the whole command, retries included (default 10s)
//	-o, --output   table (for people) or json (one object per line, protobuf
//	               messages in protojson with proto field names)
//	--cacert       CA bundle that verifies https:// endpoints
//
// A command that fails returns an error; for an error IAM sent it reads "<code>: <IAM's
// message>". The caller (cmd/iam) prints it and exits non-zero.
package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	"plasmacloud.dev/pkg/cliout"
	"plasmacloud.dev/pkg/iamclient"
)

// Environment variables the client flags read.
const (
	EnvEndpoints = "PLASMA_IAM_ENDPOINTS"
	EnvToken     = "PLASMA_TOKEN"
)

// DefaultEndpoint is used when neither --endpoints nor PLASMA_IAM_ENDPOINTS names one.
const DefaultEndpoint = "http://127.0.0.1:7001"

// Commands returns the client commands, fresh on every call (each has its own flag
// values), ready to be added to the binary's root command.
func Commands() []*cobra.Command {
	return []*cobra.Command{
		loginCommand(),
		logoutCommand(),
		userCommand(),
		serviceAccountCommand(),
		projectCommand(),
		roleCommand(),
		bindCommand(),
		unbindCommand(),
		bindingsCommand(),
		tokenCommand(),
		keysCommand(),
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

// globals are the client flags every command takes. Each top-level command owns one
// globals value, registered as its persistent flags so that its subcommands share it.
type globals struct {
	cmd       *cobra.Command // the top-level command (to ask whether a flag was set)
	endpoints []string
	tokenFile string
	timeout   time.Duration
	output    cliout.Output
	cacert    string
}

// newGlobals registers the client flags on cmd's persistent flags.
func newGlobals(cmd *cobra.Command) *globals {
	g := &globals{cmd: cmd, output: cliout.Output{Human: "table"}}
	fs := cmd.PersistentFlags()
	fs.StringSliceVar(&g.endpoints, "endpoints", defaultEndpoints(),
		"comma-separated IAM replica URLs (env "+EnvEndpoints+")")
	fs.StringVar(&g.tokenFile, "token-file", defaultTokenFile(),
		"file login writes the tokens to and other commands read them from ("+EnvToken+" is used instead when set and this flag is not)")
	fs.DurationVar(&g.timeout, "timeout", 10*time.Second, "timeout of the whole command, retries included")
	g.output.Register(fs, "output format: table or json (one object per line)")
	fs.StringVar(&g.cacert, "cacert", "", "CA bundle that verifies https:// endpoints")
	return g
}

// topLevel builds a top-level command with its own client flags.
func topLevel(cmd *cobra.Command) (*cobra.Command, *globals) {
	return cmd, newGlobals(cmd)
}

func defaultEndpoints() []string {
	if v := strings.TrimSpace(os.Getenv(EnvEndpoints)); v != "" {
		var eps []string
		for _, e := range strings.Split(v, ",") {
			if e = strings.TrimSpace(e); e != "" {
				eps = append(eps, e)
			}
		}
		if len(eps) > 0 {
			return eps
		}
	}
	return []string{DefaultEndpoint}
}

// defaultTokenFile is ~/.config/plasmacloud/token (or $XDG_CONFIG_HOME/plasmacloud/token).
func defaultTokenFile() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return filepath.Join(".", ".plasmacloud-token")
	}
	return filepath.Join(dir, "plasmacloud", "token")
}

// validate checks the flags every command shares.
func (g *globals) validate() error {
	if err := g.output.Validate(); err != nil {
		return err
	}
	if g.timeout < 0 {
		return fmt.Errorf("--timeout %s: must not be negative", g.timeout)
	}
	return nil
}

// tlsConfig builds the TLS configuration from --cacert; nil when not given.
func (g *globals) tlsConfig() (*tls.Config, error) {
	if g.cacert == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(g.cacert)
	if err != nil {
		return nil, fmt.Errorf("--cacert: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--cacert %s: no PEM certificate found", g.cacert)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}

// baseClient builds a client without a bearer token. The caller closes it.
func (g *globals) baseClient() (*iamclient.Client, error) {
	if err := g.validate(); err != nil {
		return nil, err
	}
	tlsConf, err := g.tlsConfig()
	if err != nil {
		return nil, err
	}
	return iamclient.New(iamclient.Config{
		Endpoints:      g.endpoints,
		TLS:            tlsConf,
		RequestTimeout: g.timeout / 2,
		DialTimeout:    2 * time.Second,
	})
}

// client builds a client that sends the saved token (see [globals.accessToken]). The
// caller closes it.
func (g *globals) client(ctx context.Context) (*iamclient.Client, error) {
	c, err := g.baseClient()
	if err != nil {
		return nil, err
	}
	tok, err := g.accessToken(ctx, c)
	if err != nil {
		c.Close()
		return nil, err
	}
	if tok == "" {
		return c, nil
	}
	return c.WithToken(iamclient.StaticToken(tok)), nil
}

// tokenFileSet reports whether --token-file was given explicitly.
func (g *globals) tokenFileSet() bool {
	f := g.cmd.PersistentFlags().Lookup("token-file")
	return f != nil && f.Changed
}

// cmdContext returns the command's context (Background outside Execute).
func cmdContext(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// bound derives a context bounded by --timeout (unbounded if 0).
func (g *globals) bound(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx := cmdContext(cmd)
	if g.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, g.timeout)
}

// printer returns the output printer for cmd.
func (g *globals) printer(cmd *cobra.Command) *cliout.Printer {
	p, err := g.output.Printer(cmd.OutOrStdout())
	if err != nil {
		// validate() checked the format before any output is produced.
		panic(err)
	}
	return p
}

// clientCommand is the shape of most commands: validate the arguments, connect with the
// saved token, run bounded by --timeout, print.
func clientCommand(g *globals, check func(args []string) error,
	run func(ctx context.Context, c *iamclient.Client, p *cliout.Printer, args []string) error,
) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := g.validate(); err != nil {
			return err
		}
		if check != nil {
			if err := check(args); err != nil {
				return err
			}
		}
		ctx, cancel := g.bound(cmd)
		defer cancel()
		c, err := g.client(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		return apiError(run(ctx, c, g.printer(cmd), args))
	}
}

// apiError turns an error IAM sent into "<code>: <IAM's message>" (dropping the
// client's wrapping: which call, which endpoint); other errors pass unchanged.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) && connect.IsWireError(ce) {
		msg := fmt.Sprintf("%s: %s", ce.Code(), ce.Message())
		if errors.Is(err, iamclient.ErrOutcomeUnknown) {
			msg += " (after a retry: the first attempt may have been applied)"
		}
		return errors.New(msg)
	}
	return err
}

// Names of users, service accounts, projects and roles; principals.
var (
	nameRE      = regexp.MustCompile(`^[a-z][a-z0-9-]{0,62}$`)
	principalRE = regexp.MustCompile(`^(user|serviceaccount):[a-z][a-z0-9-]{0,62}$`)
)

// checkName validates a name argument.
func checkName(what, name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%s name %q: must match %s (lowercase letter, then lowercase letters, digits, '-'; at most 63)", what, name, nameRE)
	}
	return nil
}

// checkPrincipal validates a principal argument.
func checkPrincipal(p string) error {
	if !principalRE.MatchString(p) {
		return fmt.Errorf("principal %q: must be user:NAME or serviceaccount:NAME", p)
	}
	return nil
}

// nameArg returns a check that args[0] is a valid name of kind what.
func nameArg(what string) func(args []string) error {
	return func(args []string) error { return checkName(what, args[0]) }
}
