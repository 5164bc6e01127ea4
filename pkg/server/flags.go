package server

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
)

// ErrConfig is wrapped by every error of [ApplyEnvAndConfig]: a bad environment variable
// or configuration file, named in the message.
var ErrConfig = errors.New("server: invalid configuration")

// EnvNames returns, for a flag name, the environment variables that may set it, in order
// of preference: PREFIX_FLAG_NAME (dashes as underscores, upper case), then any aliases
// given for that flag (e.g. PLASMA_CHAINFIRE_ENDPOINTS for chainfire-endpoints).
func EnvNames(prefix string, aliases map[string][]string) func(flag string) []string {
	return func(flag string) []string {
		name := prefix + "_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
		return append([]string{name}, aliases[flag]...)
	}
}

// ApplyEnvAndConfig fills the flags of fs that were not given on the command line: from
// the first non-empty environment variable envNames(flag) lists, else from configFile
// when it is set. Precedence is therefore command line > environment > file > default,
// as operators expect of etcd-style servers.
//
// The file is YAML: a mapping from flag names (without dashes in front) to values;
// a sequence is joined with commas (for list flags such as --chainfire-endpoints).
//
//	listen: 0.0.0.0:7001
//	chainfire-endpoints: [http://10.0.0.1:2379, http://10.0.0.2:2379]
//	log-format: json
//
// An unknown key, a value a flag refuses, or an unreadable file is an error wrapping
// ErrConfig that names the file, the key and the problem (unknown keys are found before
// any flag is set from the file); the caller refuses to start on it.
func ApplyEnvAndConfig(fs *pflag.FlagSet, configFile string, envNames func(flag string) []string) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || envNames == nil {
			return
		}
		for _, name := range envNames(f.Name) {
			if v, ok := os.LookupEnv(name); ok && v != "" {
				if err := fs.Set(f.Name, v); err != nil {
					errs = append(errs, fmt.Errorf("%w: %s=%q: %v", ErrConfig, name, v, err))
				}
				return
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if configFile == "" {
		return nil
	}
	values, err := readConfigFile(configFile)
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		f := fs.Lookup(k)
		switch {
		case f == nil:
			errs = append(errs, fmt.Errorf("%w: %s: unknown key %q (keys are the server's flag names, e.g. %q)", ErrConfig, configFile, k, firstFlag(fs)))
		case k == "config":
			errs = append(errs, fmt.Errorf("%w: %s: key \"config\" cannot name another file", ErrConfig, configFile))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, k := range keys {
		if fs.Lookup(k).Changed {
			continue // the command line or the environment said otherwise
		}
		if err := fs.Set(k, values[k]); err != nil {
			errs = append(errs, fmt.Errorf("%w: %s: %s: %q: %v", ErrConfig, configFile, k, values[k], err))
		}
	}
	return errors.Join(errs...)
}

// readConfigFile parses a YAML mapping of flag names to scalars or sequences of scalars.
func readConfigFile(path string) (map[string]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%w: %s: not a YAML mapping of flag names to values: %v", ErrConfig, path, err)
	}
	values := make(map[string]string, len(raw))
	for k, v := range raw {
		s, err := scalarOrList(v)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %s: %v", ErrConfig, path, k, err)
		}
		values[k] = s
	}
	return values, nil
}

func scalarOrList(v any) (string, error) {
	switch v := v.(type) {
	case nil:
		return "", nil
	case map[string]any:
		return "", errors.New("a mapping is not a flag value")
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			s, err := scalarOrList(e)
			if err != nil || strings.Contains(s, ",") {
				return "", fmt.Errorf("item %d: want a scalar without commas", i)
			}
			parts[i] = s
		}
		return strings.Join(parts, ","), nil
	default:
		return fmt.Sprint(v), nil
	}
}

func firstFlag(fs *pflag.FlagSet) string {
	name := ""
	fs.VisitAll(func(f *pflag.Flag) {
		if name == "" && f.Name != "config" {
			name = f.Name
		}
	})
	return name
}
