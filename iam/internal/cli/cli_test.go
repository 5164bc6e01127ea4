package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
)

// run executes one command line as cmd/iam does and returns its standard output.
func run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	r := &cobra.Command{Use: "iam", SilenceUsage: true, SilenceErrors: true}
	r.AddCommand(Commands()...)
	var out, errOut bytes.Buffer
	r.SetOut(&out)
	r.SetErr(&errOut)
	r.SetIn(strings.NewReader(stdin))
	r.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := r.ExecuteContext(ctx)
	return out.String(), err
}

// env is a fake IAM and a token file for one test.
type env struct {
	t         *testing.T
	iam       *fakeIAM
	tokenFile string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return &env{t: t, iam: newFakeIAM(t), tokenFile: filepath.Join(t.TempDir(), "cfg", "token")}
}

// run runs a command line against the fake with the env's token file.
func (e *env) run(stdin string, args ...string) (string, error) {
	e.t.Helper()
	return run(e.t, stdin, append(args, "--endpoints", e.iam.url, "--token-file", e.tokenFile)...)
}

func (e *env) must(stdin string, args ...string) string {
	e.t.Helper()
	out, err := e.run(stdin, args...)
	if err != nil {
		e.t.Fatalf("iam %s: %v\noutput: %s", strings.Join(args, " "), err, out)
	}
	return out
}

func (e *env) login() {
	e.t.Helper()
	e.must("correct horse\n", "login", "--username", "admin")
}

func TestHelpEverywhere(t *testing.T) {
	t.Parallel()
	var walk func(prefix []string, cmds []*cobra.Command)
	walk = func(prefix []string, cmds []*cobra.Command) {
		for _, c := range cmds {
			args := append(append([]string{}, prefix...), c.Name())
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				out, err := run(t, "", append(args, "--help")...)
				for _, flag := range []string{"--endpoints", "--token-file", "--output", "--timeout"} {
					if err != nil || !strings.Contains(out, flag) {
						t.Fatalf("--help: err %v, no %s in:\n%s", err, flag, out)
					}
				}
			})
			walk(args, c.Commands())
		}
	}
	walk(nil, Commands())
}

// TestBadInput: arguments are checked before anything is sent (the endpoint is dead).
func TestBadInput(t *testing.T) {
	t.Parallel()
	dead := []string{"--endpoints", "http://127.0.0.1:1", "--token-file", filepath.Join(t.TempDir(), "none")}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"project", "list", "-o", "yaml"}, "--output"},
		{[]string{"user", "get", "Alice"}, "user name"},
		{[]string{"user", "get"}, "arg"},
		{[]string{"user", "update", "alice"}, "nothing to update"},
		{[]string{"project", "create", "-bad"}, "unknown shorthand"},
		{[]string{"project", "create", "9lives"}, "project name"},
		{[]string{"bind", "alice", "admin"}, "user:NAME or serviceaccount:NAME"},
		{[]string{"bind", "user:alice", "Admin"}, "role name"},
		{[]string{"bind", "user:alice", "admin", "--project", "P"}, "project name"},
		{[]string{"bind", "user:alice"}, "arg"},
		{[]string{"unbind", "group:x", "admin"}, "user:NAME"},
		{[]string{"bindings", "--principal", "bob"}, "user:NAME"},
		{[]string{"role", "create", "ops"}, "--permission is required"},
		{[]string{"role", "create", "ops", "-p", "VM.create"}, "permission"},
		{[]string{"role", "update", "ops", "-p", "vm..x"}, "permission"},
		{[]string{"token", "revoke"}, "exactly one"},
		{[]string{"token", "revoke", "--jti", "x", "--all"}, "exactly one"},
		{[]string{"token", "revoke", "--jti", "x", "--before", "2025-01-01T00:00:00Z"}, "--before goes with"},
		{[]string{"token", "revoke", "--all", "--before", "yesterday"}, "RFC 3339"},
		{[]string{"token", "revoke", "--principal", "alice"}, "user:NAME"},
		{[]string{"token", "inspect", "not-a-jwt"}, "not a JWT"},
		{[]string{"token", "inspect", "a.b.c", "--issuer", "x"}, "need --verify"},
		{[]string{"token", "inspect"}, "no token given"},
		{[]string{"login"}, "--username is required"},
		{[]string{"login", "--username", "admin", "--password-file", "/nonexistent"}, "password file"},
		{[]string{"login", "--username", "admin"}, "no password"},
		{[]string{"logout"}, "not logged in"},
		{[]string{"project", "list", "--endpoints", "ftp://x"}, "bad endpoint"},
		{[]string{"keys", "rotate", "extra"}, "unknown command"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			t.Parallel()
			args := append(append([]string{}, tt.args...), dead...)
			if tt.args[len(tt.args)-1] == "ftp://x" {
				args = tt.args
			}
			start := time.Now()
			_, err := run(t, "", args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tt.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %s: something was sent before the arguments were checked", d)
			}
		})
	}
}

// jsonLines parses -o json output: one object per line.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("not one JSON object per line: %q: %v", line, err)
		}
		objs = append(objs, m)
	}
	return objs
}

// TestFlow runs the commands against the fake IAM the way an operator would.
func TestFlow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	// Not logged in: IAM's refusal is printed as code and message.
	if _, err := e.run("", "project", "list"); err == nil || !strings.Contains(err.Error(), "unauthenticated: missing bearer token") {
		t.Fatalf("before login: %v", err)
	}
	if _, err := e.run("wrong\n", "login", "--username", "admin"); err == nil || err.Error() != "unauthenticated: invalid credentials" {
		t.Fatalf("wrong password: %v", err)
	}
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("correct horse\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := e.must("", "login", "--username", "admin", "--password-file", pwFile, "--project", "p1")
	if !strings.Contains(out, "Logged in as user:admin (project p1)") {
		t.Fatalf("login output: %s", out)
	}
	st, err := os.Stat(e.tokenFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v, mode %v", err, st.Mode())
	}
	saved, err := readTokenFile(e.tokenFile)
	if err != nil || saved.RefreshToken == "" || saved.Project != "p1" || saved.Principal != "user:admin" {
		t.Fatalf("saved token %+v, %v", saved, err)
	}

	e.must("", "project", "create", "p1", "--description", "first")
	e.must("", "project", "create", "p2")
	objs := jsonLines(t, e.must("", "project", "list", "-o", "json"))
	if len(objs) != 2 {
		t.Fatalf("project list -o json: %v", objs)
	}
	if _, err := e.run("", "project", "create", "p1"); err == nil || err.Error() != `already_exists: project "p1" already exists` {
		t.Fatalf("duplicate project: %v", err)
	}

	e.must("longpassword\n", "user", "create", "bob", "--display-name", "Bob")
	if out := e.must("", "user", "disable", "bob"); !strings.Contains(out, "yes") {
		t.Fatalf("disable: %s", out)
	}
	if out := e.must("", "user", "get", "bob", "-o", "json"); !strings.Contains(out, `"disabled":true`) {
		t.Fatalf("get -o json: %s", out)
	}
	e.must("", "user", "enable", "bob")
	e.must("", "user", "update", "bob", "--display-name", "Robert")
	e.must("newpassword\n", "user", "set-password", "bob")
	if _, err := e.run("short\n", "user", "create", "carol"); err == nil || !strings.Contains(err.Error(), "invalid_argument: password") {
		t.Fatalf("short password: %v", err)
	}

	e.must("", "role", "create", "ops", "-p", "vm.*,network.port.get", "--description", "operators")
	if out := e.must("", "role", "update", "ops", "-p", "vm.*"); !strings.Contains(out, "vm.*") {
		t.Fatalf("role update: %s", out)
	}
	if _, err := e.run("", "role", "update", "admin", "-p", "vm.get"); err == nil || !strings.Contains(err.Error(), "failed_precondition") {
		t.Fatalf("update builtin: %v", err)
	}

	e.must("", "bind", "user:bob", "reader", "--project", "p1")
	e.must("", "bind", "user:bob", "ops", "--project", "p1", "--deny")
	e.must("", "bind", "user:bob", "reader")
	objs = jsonLines(t, e.must("", "bindings", "--project", "p1", "-o", "json"))
	if len(objs) != 2 || objs[1]["effect"] != "EFFECT_DENY" {
		t.Fatalf("bindings --project p1: %v", objs)
	}
	if out := e.must("", "bindings", "--principal", "user:bob"); !strings.Contains(out, "(global)") || !strings.Contains(out, "deny") {
		t.Fatalf("bindings table: %s", out)
	}
	if _, err := e.run("", "project", "delete", "p1"); err == nil || !strings.Contains(err.Error(), `failed_precondition: project "p1" still has bindings`) {
		t.Fatalf("delete bound project: %v", err)
	}
	e.must("", "unbind", "user:bob", "reader", "--project", "p1")
	e.must("", "unbind", "user:bob", "ops", "--project", "p1")
	e.must("", "project", "delete", "p1")

	out = e.must("", "serviceaccount", "create", "robot", "--description", "ci")
	if !strings.Contains(out, "secret-1") || !strings.Contains(out, "shown only this once") {
		t.Fatalf("sa create: %s", out)
	}
	if out := e.must("", "sa", "reset-secret", "robot", "-o", "json"); !strings.Contains(out, `"client_secret":"secret-2"`) {
		t.Fatalf("reset-secret: %s", out)
	}

	if out := e.must("", "keys", "rotate"); !strings.Contains(out, "pending") {
		t.Fatalf("keys rotate: %s", out)
	}
	if objs := jsonLines(t, e.must("", "keys", "list", "-o", "json")); len(objs) != 2 {
		t.Fatalf("keys list: %v", objs)
	}

	out = e.must("", "token", "inspect", "--verify")
	for _, want := range []string{"user:admin", "p1", "at+jwt", "verified:", "yes"} {
		if !strings.Contains(out, want) {
			t.Fatalf("token inspect: no %q in\n%s", want, out)
		}
	}
	objs = jsonLines(t, e.must(saved.AccessToken, "token", "inspect", "-", "-o", "json"))
	if len(objs) != 1 || objs[0]["claims"].(map[string]any)["sub"] != "user:admin" {
		t.Fatalf("inspect -o json: %v", objs)
	}

	e.must("", "token", "revoke", "--all", "--before", "2030-01-01T00:00:00Z")
	e.must("", "token", "revoke", "--principal", "user:bob")
	e.must("", "token", "revoke", "--jti", "jti-1")
	e.iam.mu.Lock()
	n := len(e.iam.revoked)
	wm := e.iam.revoked[0].GetWatermark()
	e.iam.mu.Unlock()
	if n != 3 || wm.GetNotBefore().AsTime().Year() != 2030 || wm.GetScope().String() != "WATERMARK_SCOPE_GLOBAL" {
		t.Fatalf("revocations: %d, first %v", n, wm)
	}

	e.must("", "logout")
	if _, err := os.Stat(e.tokenFile); !os.IsNotExist(err) {
		t.Fatalf("token file after logout: %v", err)
	}
	e.iam.mu.Lock()
	_, stillValid := e.iam.refresh[saved.RefreshToken]
	e.iam.mu.Unlock()
	if stillValid {
		t.Fatal("logout left the refresh token valid")
	}
}

// TestSavedTokenRefreshed: an expired saved access token is refreshed with the saved
// refresh token and the file rewritten.
func TestSavedTokenRefreshed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.login()
	saved, err := readTokenFile(e.tokenFile)
	if err != nil {
		t.Fatal(err)
	}
	e.iam.mu.Lock()
	saved.AccessToken = e.iam.sign("user:admin", "", time.Second, "at+jwt")
	e.iam.mu.Unlock()
	saved.ExpiresAt = time.Now().Add(-time.Minute)
	if err := writeTokenFile(e.tokenFile, saved); err != nil {
		t.Fatal(err)
	}
	e.must("", "project", "list")
	again, err := readTokenFile(e.tokenFile)
	if err != nil || again.RefreshToken == saved.RefreshToken || again.AccessToken == saved.AccessToken || time.Until(again.ExpiresAt) < time.Minute {
		t.Fatalf("token file not refreshed: %+v (%v)", again, err)
	}
	// A refresh token IAM refuses: the error says to log in again.
	again.ExpiresAt, again.RefreshToken = time.Now().Add(-time.Minute), "rt-unknown"
	if err := writeTokenFile(e.tokenFile, again); err != nil {
		t.Fatal(err)
	}
	if _, err := e.run("", "project", "list"); err == nil || !strings.Contains(err.Error(), "log in again") {
		t.Fatalf("refused refresh: %v", err)
	}
}

// TestInspectVerifyRejects: --verify refuses a token of the wrong type or signed by a key
// the endpoints do not publish.
func TestInspectVerifyRejects(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	other := newFakeIAM(t)
	e.iam.mu.Lock()
	wrongTyp := e.iam.sign("user:admin", "", time.Minute, "JWT")
	e.iam.mu.Unlock()
	other.mu.Lock()
	wrongKey := other.sign("user:admin", "", time.Minute, "at+jwt")
	other.mu.Unlock()
	for name, tok := range map[string]string{"typ": wrongTyp, "key": wrongKey} {
		out, err := e.run("", "token", "inspect", tok, "--verify")
		if err == nil || !strings.Contains(out, "NO:") {
			t.Errorf("%s: err %v, output\n%s", name, err, out)
		}
	}
	// Without --verify the same token decodes fine.
	e.must("", "token", "inspect", wrongKey)
}

// TestEnvToken: PLASMA_TOKEN is used when --token-file is not given.
func TestEnvToken(t *testing.T) {
	e := newEnv(t)
	e.iam.mu.Lock()
	tok := e.iam.sign("user:admin", "", time.Minute, "at+jwt")
	e.iam.mu.Unlock()
	t.Setenv(EnvToken, tok)
	t.Setenv(EnvEndpoints, e.iam.url)
	if _, err := run(t, "", "project", "list"); err != nil {
		t.Fatalf("with PLASMA_TOKEN and PLASMA_IAM_ENDPOINTS: %v", err)
	}
	// An explicit --token-file wins over the variable.
	if _, err := run(t, "", "project", "list", "--token-file", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("explicit missing --token-file was ignored")
	}
}
