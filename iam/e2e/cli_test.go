package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// TestCLI drives the real `iam` binary against a real replica: login (token file),
// project, user, bind, bindings as JSON, token inspect, keys list, and a bad input that
// exits non-zero naming the field.
func TestCLI(t *testing.T) {
	e := startEnv(t, 1)
	tokenFile := e.path("token")
	if err := os.WriteFile(e.path("alice.pw"), []byte("alice-pass-1234\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(wantOK bool, args ...string) (string, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args = append(args, "--endpoints", strings.Join(e.endpoints(), ","), "--token-file", tokenFile)
		cmd := exec.CommandContext(ctx, e.bin, args...)
		cmd.Env = []string{"HOME=" + e.dir, "PATH=" + os.Getenv("PATH")}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		if (err == nil) != wantOK {
			t.Fatalf("iam %s: err %v (want success %v)\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, wantOK, stdout.String(), stderr.String())
		}
		return stdout.String(), stderr.String()
	}

	run(true, "login", "--username", "admin", "--password-file", e.path("admin.pw"))
	if st, err := os.Stat(tokenFile); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", st, err)
	}
	run(true, "project", "create", "p1", "--description", "first project")
	run(true, "user", "create", "alice", "--password-file", e.path("alice.pw"), "--display-name", "Alice")
	run(true, "bind", "user:alice", "member", "--project", "p1")

	out, _ := run(true, "bindings", "-o", "json")
	type binding struct {
		Principal, Role, Project, Effect string
	}
	var got []binding
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		var b binding
		if err := json.Unmarshal([]byte(line), &b); err != nil {
			t.Fatalf("bindings -o json line %q: %v", line, err)
		}
		got = append(got, b)
	}
	found := false
	for _, b := range got {
		if b.Principal == "user:alice" && b.Role == "member" && b.Project == "p1" {
			found = true
			if b.Effect != "" && b.Effect != "EFFECT_ALLOW" {
				t.Fatalf("alice's binding effect %q", b.Effect)
			}
		}
	}
	if !found || len(got) != 2 {
		t.Fatalf("bindings %+v, want admin's global one and alice's in p1", got)
	}

	out, _ = run(true, "token", "inspect", "-o", "json", "--verify")
	var insp struct {
		Header   map[string]any
		Claims   map[string]any
		Verified bool
	}
	if err := json.Unmarshal([]byte(out), &insp); err != nil {
		t.Fatalf("token inspect -o json %q: %v", out, err)
	}
	if insp.Claims["sub"] != "user:admin" || insp.Header["typ"] != "at+jwt" || !insp.Verified {
		t.Fatalf("token inspect: %+v", insp)
	}
	out, _ = run(true, "token", "inspect")
	if !strings.Contains(out, "user:admin") {
		t.Fatalf("token inspect (table) does not show the subject:\n%s", out)
	}

	out, _ = run(true, "keys", "list", "-o", "json")
	var key struct{ Kid, State string }
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &key); err != nil || key.Kid == "" || key.State != "KEY_STATE_ACTIVE" {
		t.Fatalf("keys list -o json %q: %+v %v", out, key, err)
	}
	if key.Kid != insp.Header["kid"] {
		t.Fatalf("active key %s did not sign the saved token (kid %v)", key.Kid, insp.Header["kid"])
	}

	t.Run("bad input", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"user", "create", "Bad_Name", "--password-file", e.path("alice.pw")}, "name"},
			{[]string{"role", "create", "r1", "--permission", "vm..create"}, "permission"},
			{[]string{"bind", "alice", "member"}, "principal"},
		} {
			t.Run(strings.Join(tc.args[:2], " "), func(t *testing.T) {
				out, errOut := run(false, tc.args...)
				if !strings.Contains(strings.ToLower(errOut), tc.want) {
					t.Fatalf("error output does not name %q:\nstdout: %s\nstderr: %s", tc.want, out, errOut)
				}
				t.Logf("%s → %s", strings.Join(tc.args, " "), strings.TrimSpace(errOut))
			})
		}
		// The server checks too (the CLI may have refused before sending).
		_, err := e.admin(t).CreateUser(bg(t), &iamv1.CreateUserRequest{User: &iamv1.User{Name: "Bad_Name"}, Password: "alice-pass-1234"})
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "name") {
			t.Fatalf("server-side CreateUser with a bad name: %v, want InvalidArgument naming the field", err)
		}
		t.Logf("server: %v", err)
	})
}
