package server

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/pflag"

	"plasmacloud.dev/pkg/chainfire"
)

// ChainFireFlags are the ChainFire client flags every server shares:
// --chainfire-endpoints (environment PLASMA_CHAINFIRE_ENDPOINTS, through the caller's
// [EnvNames] aliases) and the PEM files of --chainfire-ca-file, --chainfire-cert-file and
// --chainfire-key-file for https:// endpoints and mutual TLS.
//
// A ChainFireFlags is a plain value: Register binds its fields to a flag set, and the
// fields hold the parsed values once the flags are parsed. It is not safe to change while
// the flag set parses.
type ChainFireFlags struct {
	// Endpoints are ChainFire client URLs; their value at Register is the flag's default.
	Endpoints []string
	// TLS names the CA (CAFile) and the client key pair (CertFile, KeyFile).
	TLS TLSFiles
}

// Register adds --chainfire-endpoints (default: c.Endpoints) and the three TLS file flags
// to fs, bound to c's fields, with the help texts every PlasmaCloud server shows.
func (c *ChainFireFlags) Register(fs *pflag.FlagSet) {
	fs.StringSliceVar(&c.Endpoints, "chainfire-endpoints", c.Endpoints, "ChainFire client URLs (env PLASMA_CHAINFIRE_ENDPOINTS)")
	fs.StringVar(&c.TLS.CAFile, "chainfire-ca-file", "", "CA that signs ChainFire's certificates (PEM)")
	fs.StringVar(&c.TLS.CertFile, "chainfire-cert-file", "", "client certificate for ChainFire mutual TLS (PEM)")
	fs.StringVar(&c.TLS.KeyFile, "chainfire-key-file", "", "client key for ChainFire mutual TLS (PEM)")
}

// TLSConfig returns the client TLS for ChainFire: nil (system roots, no client
// certificate) when neither --chainfire-ca-file nor --chainfire-cert-file is set, else
// the loaded files. An unreadable file is an error prefixed "chainfire TLS".
func (c ChainFireFlags) TLSConfig() (*tls.Config, error) {
	if c.TLS.CAFile == "" && c.TLS.CertFile == "" {
		return nil, nil
	}
	tc, err := c.TLS.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("chainfire TLS: %w", err)
	}
	return tc, nil
}

// Client builds the ChainFire client a server uses: c's endpoints and TLS, a 5 s request
// timeout, and log (with component=chainfire). The caller owns the client and closes it.
func (c ChainFireFlags) Client(log *slog.Logger) (*chainfire.Client, error) {
	tc, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	return chainfire.New(chainfire.Config{Endpoints: c.Endpoints, TLS: tc,
		Logger: log.With("component", "chainfire"), RequestTimeout: 5 * time.Second})
}
