package server

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

func TestApplyEnvAndConfig(t *testing.T) {
	newFlags := func() (*pflag.FlagSet, *string, *[]string, *time.Duration, *bool) {
		fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
		listen := fs.String("listen", ":7001", "")
		eps := fs.StringSlice("chainfire-endpoints", nil, "")
		ttl := fs.Duration("access-token-ttl", 10*time.Minute, "")
		dbg := fs.Bool("debug", false, "")
		fs.String("config", "", "")
		return fs, listen, eps, ttl, dbg
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "iam.yaml")
	if err := os.WriteFile(file, []byte("listen: 0.0.0.0:9000\nchainfire-endpoints: [http://a:2379, http://b:2379]\naccess-token-ttl: 5m\ndebug: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := EnvNames("IAM", map[string][]string{"chainfire-endpoints": {"PLASMA_CHAINFIRE_ENDPOINTS"}})

	t.Run("file fills unset flags", func(t *testing.T) {
		fs, listen, eps, ttl, dbg := newFlags()
		if err := ApplyEnvAndConfig(fs, file, env); err != nil {
			t.Fatal(err)
		}
		if *listen != "0.0.0.0:9000" || strings.Join(*eps, " ") != "http://a:2379 http://b:2379" || *ttl != 5*time.Minute || !*dbg {
			t.Fatalf("got %q %q %v %v", *listen, *eps, *ttl, *dbg)
		}
	})
	t.Run("command line beats env beats file", func(t *testing.T) {
		t.Setenv("IAM_ACCESS_TOKEN_TTL", "7m")
		t.Setenv("PLASMA_CHAINFIRE_ENDPOINTS", "http://env:2379")
		fs, listen, eps, ttl, _ := newFlags()
		if err := fs.Parse([]string{"--listen", ":1"}); err != nil {
			t.Fatal(err)
		}
		if err := ApplyEnvAndConfig(fs, file, env); err != nil {
			t.Fatal(err)
		}
		if *listen != ":1" || *ttl != 7*time.Minute || strings.Join(*eps, " ") != "http://env:2379" {
			t.Fatalf("got %q %v %q", *listen, *ttl, *eps)
		}
	})
	bad := []struct{ name, content, want string }{
		{"unknown key", "listne: :1\n", `unknown key "listne"`},
		{"bad value", "access-token-ttl: soon\n", "access-token-ttl"},
		{"not a mapping", "- a\n- b\n", "not a YAML mapping"},
		{"nested", "listen: {a: b}\n", "mapping is not a flag value"},
		{"config names config", "config: other.yaml\n", `"config" cannot name another file`},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".yaml")
			if err := os.WriteFile(f, []byte(c.content), 0o600); err != nil {
				t.Fatal(err)
			}
			fs, listen, _, _, _ := newFlags()
			err := ApplyEnvAndConfig(fs, f, env)
			if !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), f) {
				t.Fatalf("err = %v, want ErrConfig naming %q and the file", err, c.want)
			}
			if *listen != ":7001" {
				t.Fatalf("a failing file half-applied: listen = %q", *listen)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		fs, _, _, _, _ := newFlags()
		if err := ApplyEnvAndConfig(fs, filepath.Join(dir, "nope.yaml"), env); !errors.Is(err, ErrConfig) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("bad env", func(t *testing.T) {
		t.Setenv("IAM_DEBUG", "maybe")
		fs, _, _, _, _ := newFlags()
		if err := ApplyEnvAndConfig(fs, "", env); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "IAM_DEBUG") {
			t.Fatalf("err = %v", err)
		}
	})
}
