package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"plasmacloud.dev/iam/internal/keys"
	"plasmacloud.dev/iam/internal/server"
	plasmaserver "plasmacloud.dev/pkg/server"
)

// serverCommand is `iam server`. Every flag may also come from the environment as
// IAM_<FLAG> (e.g. IAM_ACCESS_TOKEN_TTL); --chainfire-endpoints also from
// PLASMA_CHAINFIRE_ENDPOINTS. Flags win over the environment.
func serverCommand() *cobra.Command {
	cfg := server.DefaultConfig()
	var (
		logFlags                         plasmaserver.LogFlags
		configFile                       string
		masterKeyFile, adminPasswordFile string
		auditLog                         string
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run an IAM replica",
		Long: `Run an IAM replica: users, service accounts, projects, roles, bindings, tokens and
signing keys over ChainFire. Replicas are stateless; run several over one ChainFire.

Signing keys are stored encrypted with a master key (32 bytes, base64) read from
--master-key-file or IAM_MASTER_KEY; without one the server refuses to start.
On first start the user "admin" (global role admin) is created with the password from
--bootstrap-admin-password-file, or a generated one printed once to stderr.`,
		Example: `  head -c 32 /dev/urandom | base64 > /etc/iam/master.key
  iam server --chainfire-endpoints http://10.0.0.1:2379,http://10.0.0.2:2379 \
    --master-key-file /etc/iam/master.key --issuer https://iam.example.internal`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			env := plasmaserver.EnvNames("IAM", map[string][]string{"chainfire-endpoints": {"PLASMA_CHAINFIRE_ENDPOINTS"}})
			if err := plasmaserver.ApplyEnvAndConfig(cmd.Flags(), configFile, env); err != nil {
				return err
			}
			log, err := logFlags.Logger(os.Stderr)
			if err != nil {
				return err
			}
			cfg.Logger = log
			cfg.Stderr = os.Stderr
			if !cfg.DevInsecureMasterKey {
				if cfg.MasterKey, err = keys.LoadMasterKey(masterKeyFile, "IAM_MASTER_KEY"); err != nil {
					return err
				}
			}
			if adminPasswordFile != "" {
				b, err := os.ReadFile(adminPasswordFile)
				if err != nil {
					return fmt.Errorf("--bootstrap-admin-password-file: %w", err)
				}
				cfg.BootstrapAdminPassword = strings.TrimRight(string(b), "\r\n")
			}
			var auditOut io.Writer = os.Stderr
			if auditLog != "" && auditLog != "-" {
				f, err := os.OpenFile(auditLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
				if err != nil {
					return fmt.Errorf("--audit-log: %w", err)
				}
				defer f.Close()
				auditOut = f
			}
			if cfg.Audit, err = plasmaserver.NewLogger(auditOut, "json", "info"); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return server.Run(ctx, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "HOST:PORT to serve the API, OAuth endpoints, health and metrics on")
	cfg.ChainFire.Register(f)
	f.StringVar(&cfg.DataDir, "data-dir", "", "accepted for the shared command line; IAM keeps no local state")
	f.StringVar(&configFile, "config", "", "YAML file of flag values (flag name: value); command-line flags and IAM_* environment variables win")
	logFlags.Register(f)
	f.StringVar(&auditLog, "audit-log", "", "file the audit trail (JSON lines) is appended to (default stderr)")
	f.StringVar(&cfg.Issuer, "issuer", cfg.Issuer, "iss claim of issued tokens")
	f.StringSliceVar(&cfg.Audience, "audience", cfg.Audience, "default aud claim of issued tokens; IAM's own API accepts the first")
	f.StringVar(&cfg.PublicURL, "public-url", "", "base URL clients reach IAM at, for discovery (default: from each request)")
	f.DurationVar(&cfg.AccessTokenTTL, "access-token-ttl", cfg.AccessTokenTTL, "lifetime of access tokens")
	f.DurationVar(&cfg.RefreshTokenTTL, "refresh-token-ttl", cfg.RefreshTokenTTL, "lifetime of refresh tokens (each rotation starts a new one)")
	f.DurationVar(&cfg.ClockSkew, "clock-skew", cfg.ClockSkew, "clock skew verifiers allow (retired keys and revoked ids are kept this much longer)")
	f.StringVar(&masterKeyFile, "master-key-file", "", "file holding the master key (base64 of 32 bytes) that encrypts signing keys (else env IAM_MASTER_KEY)")
	f.BoolVar(&cfg.DevInsecureMasterKey, "dev-insecure-master-key", false, "development only: use a fixed, publicly known master key")
	f.StringVar(&cfg.KeyAlgorithm, "key-algorithm", cfg.KeyAlgorithm, "algorithm of new signing keys: EdDSA or ES256")
	f.DurationVar(&cfg.KeyRotationInterval, "key-rotation-interval", cfg.KeyRotationInterval, "age of the active signing key at which a rotation starts (0 or negative: never)")
	f.DurationVar(&cfg.KeyPublishDelay, "key-publish-delay", cfg.KeyPublishDelay, "how long a new key is published before it signs (at least the verifiers' JWKS refresh interval)")
	f.StringVar(&adminPasswordFile, "bootstrap-admin-password-file", "", "file holding the first-start password of user admin (default: generate one and print it once)")
	cfg.TLS.Register(f)
	f.DurationVar(&cfg.DrainTimeout, "drain-timeout", cfg.DrainTimeout, "how long SIGTERM waits for in-flight requests")
	return cmd
}
