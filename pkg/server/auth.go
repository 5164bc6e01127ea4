package server

import (
	"context"
	"log/slog"

	"connectrpc.com/connect"
	"github.com/spf13/pflag"

	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/iamclient"
)

// Authorization modes of [AuthFlags].
const (
	// AuthIAM verifies callers' tokens offline with keys and policy from IAM.
	AuthIAM = "iam"
	// AuthNone lets every caller do everything (development only).
	AuthNone = "none"
)

// AuthFlags are the authorization flags of a server that IAM protects: --auth iam|none,
// --iam-endpoints (environment PLASMA_IAM_ENDPOINTS, through the caller's [EnvNames]
// aliases), --iam-issuer, --iam-audience, and the server's own service account,
// --iam-client-id and --iam-client-secret-file.
//
// Register binds the fields to a flag set; validating them and reading ClientSecretFile
// into ClientSecret stay with the service, whose messages differ. Not safe to change
// while the flag set parses.
type AuthFlags struct {
	// Mode is AuthIAM or AuthNone; its value at Register is the default.
	Mode string
	// IAMEndpoints are IAM base URLs for signing keys and the policy stream.
	IAMEndpoints []string
	// Issuer and Audience are what tokens must carry; their values at Register are the defaults.
	Issuer, Audience string
	// ClientID and ClientSecret are the server's own service account, which authenticates
	// its policy stream (iam.policy.watch). Optional: without them the stream is opened
	// without a token. ClientSecretFile is the flag the caller reads ClientSecret from.
	ClientID, ClientSecretFile, ClientSecret string
}

// Register adds the flags to fs, bound to a's fields. noneAllows completes the help of
// --auth none ("development only: anyone may <noneAllows>") and self names the server in
// the help of --iam-client-id ("<self> own service account").
func (a *AuthFlags) Register(fs *pflag.FlagSet, noneAllows, self string) {
	fs.StringVar(&a.Mode, "auth", a.Mode, "authorization: iam (needs --iam-endpoints) or none (development only: anyone may "+noneAllows+")")
	fs.StringSliceVar(&a.IAMEndpoints, "iam-endpoints", a.IAMEndpoints, "IAM base URLs for signing keys and policy (env PLASMA_IAM_ENDPOINTS)")
	fs.StringVar(&a.Issuer, "iam-issuer", a.Issuer, "iss claim tokens must carry")
	fs.StringVar(&a.Audience, "iam-audience", a.Audience, "aud claim tokens must carry")
	fs.StringVar(&a.ClientID, "iam-client-id", "", self+" own service account (authenticates its IAM policy stream)")
	fs.StringVar(&a.ClientSecretFile, "iam-client-secret-file", "", "file holding the service account's secret")
}

// Authorization is the wired authorization of a server, built by [AuthFlags.Setup]:
// install Interceptor on the handlers, run Run for the server's lifetime, report Ready on
// /readyz, and Close when the server is done.
type Authorization struct {
	// Interceptor authorizes every call (with AuthNone: lets every call through).
	Interceptor connect.Interceptor
	// Ready reports whether keys and policy are fresh enough to authorize (always nil
	// with AuthNone).
	Ready func(context.Context) error

	svc     *auth.Service
	closers []func()
}

// Setup builds the authorization a's mode asks for: auth.None, or pkg/auth's verifier
// stack over IAMEndpoints with the procedure → permission table permissions and, when
// ClientID is set, a token source for the server's own service account (its IAM client
// and token source are closed by Close). Nothing runs until Run.
func (a AuthFlags) Setup(log *slog.Logger, permissions map[string]string) (_ *Authorization, err error) {
	if a.Mode == AuthNone {
		return &Authorization{Interceptor: auth.None(log), Ready: func(context.Context) error { return nil }}, nil
	}
	z := &Authorization{}
	defer func() {
		if err != nil {
			z.Close()
		}
	}()
	ac := auth.Config{IAMEndpoints: a.IAMEndpoints, Issuer: a.Issuer, Audience: a.Audience,
		Permissions: permissions, Logger: log}
	if a.ClientID != "" {
		ic, err := iamclient.New(iamclient.Config{Endpoints: a.IAMEndpoints, Logger: log.With("component", "iamclient")})
		if err != nil {
			return nil, err
		}
		z.closers = append(z.closers, func() { _ = ic.Close() })
		ts, err := ic.NewTokenSource(iamclient.TokenSourceConfig{ClientID: a.ClientID, ClientSecret: a.ClientSecret})
		if err != nil {
			return nil, err
		}
		z.closers = append(z.closers, func() { ts.Close() })
		ac.Credentials = ts.Token
	}
	svc, err := auth.Setup(ac)
	if err != nil {
		return nil, err
	}
	z.svc, z.Interceptor, z.Ready = svc, svc.Interceptor, svc.Ready
	return z, nil
}

// Run keeps keys and policy fresh until ctx ends (returns at once with AuthNone).
func (z *Authorization) Run(ctx context.Context) error {
	if z.svc == nil {
		return nil
	}
	return z.svc.Run(ctx)
}

// Close releases the service account's IAM client and token source, newest first.
func (z *Authorization) Close() {
	for i := len(z.closers) - 1; i >= 0; i-- {
		z.closers[i]()
	}
}
