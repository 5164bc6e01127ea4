package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"
)

// TLSFiles names PEM files for a TLS server. With CAFile and ClientCertAuth set, clients must
// present a certificate signed by that CA (mutual TLS).
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
	ClientCertAuth            bool
}

// Enabled reports whether any TLS file was given.
func (f TLSFiles) Enabled() bool { return f.CertFile != "" || f.KeyFile != "" }

// ServerConfig loads the files into a *tls.Config (TLS 1.2 or later).
func (f TLSFiles) ServerConfig() (*tls.Config, error) {
	if f.CertFile == "" || f.KeyFile == "" {
		return nil, errors.New("server: TLS needs both a certificate and a key file")
	}
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("server: load TLS key pair: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("server: read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server: CA file %s holds no PEM certificate", f.CAFile)
		}
		cfg.ClientCAs = pool
		if f.ClientCertAuth {
			cfg.ClientAuth = tls.RequireAndVerifyClientCert
		}
	} else if f.ClientCertAuth {
		return nil, errors.New("server: client certificate auth needs a trusted CA file")
	}
	return cfg, nil
}

// ClientConfig builds the *tls.Config a member uses to call its peers' TLS endpoints: it
// trusts CAFile (system roots without one) and presents the server's own certificate, so
// peers that require client certificates accept it.
func (f TLSFiles) ClientConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.CertFile != "" && f.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("server: load TLS key pair: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("server: read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("server: CA file %s holds no PEM certificate", f.CAFile)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// Register adds a server's API TLS flags to fs, bound to f's fields: --cert-file,
// --key-file, --trusted-ca-file and --client-cert-auth.
func (f *TLSFiles) Register(fs *pflag.FlagSet) {
	fs.StringVar(&f.CertFile, "cert-file", "", "API TLS certificate (PEM)")
	fs.StringVar(&f.KeyFile, "key-file", "", "API TLS key (PEM)")
	fs.StringVar(&f.CAFile, "trusted-ca-file", "", "CA for client certificates (PEM)")
	fs.BoolVar(&f.ClientCertAuth, "client-cert-auth", false, "require client certificates signed by --trusted-ca-file")
}
