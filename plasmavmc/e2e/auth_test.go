package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/pkg/iamclient"
	iamv1 "plasmacloud.dev/proto/iam/v1"
	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// TestProjectIsolationThroughIAM: real IAM, the controller with --iam-endpoints. alice
// (member of project pa) and bob (member of pb) each create a VM; neither can see, list,
// stop, reboot or delete the other's VM, nor create in the other's project; the global
// admin sees both.
func TestProjectIsolationThroughIAM(t *testing.T) {
	e := newEnv(t, envOptions{deferControllers: true})
	dir := t.TempDir()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	const adminPW = "e2e-admin-pass-1234"
	if err := os.WriteFile(filepath.Join(dir, "master.key"), []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "admin.pw"), []byte(adminPW+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	iamURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	iam := harness.StartProcess(t, harness.ProcessConfig{Name: "iam1", Path: harness.Binary(t, "plasmacloud.dev/iam/cmd/iam"),
		ReadyURL: iamURL + "/readyz", Args: []string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
			"--chainfire-endpoints", strings.Join(e.cf.Endpoints(), ","), "--master-key-file", filepath.Join(dir, "master.key"),
			"--bootstrap-admin-password-file", filepath.Join(dir, "admin.pw"), "--key-publish-delay", "1s"}})
	waitReady(t, iam)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base, err := iamclient.New(iamclient.Config{Endpoints: []string{iamURL}, RequestTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	login := func(user, pw, project string) string {
		t.Helper()
		r, err := base.Token(ctx, &iamv1.TokenRequest{GrantType: "password", Username: user, Password: pw, Project: project})
		if err != nil {
			t.Fatalf("login %s/%s: %v", user, project, err)
		}
		return r.AccessToken
	}
	adminTok := login("admin", adminPW, "")
	admin := base.WithToken(iamclient.StaticToken(adminTok))
	for _, p := range []string{"pa", "pb"} {
		if _, err := admin.CreateProject(ctx, &iamv1.CreateProjectRequest{Project: &iamv1.Project{Name: p}}); err != nil {
			t.Fatal(err)
		}
	}
	for user, project := range map[string]string{"alice": "pa", "bob": "pb"} {
		if _, err := admin.CreateUser(ctx, &iamv1.CreateUserRequest{User: &iamv1.User{Name: user}, Password: user + "-pass-1234"}); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
			Principal: "user:" + user, Role: "member", Project: project, Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
			t.Fatal(err)
		}
	}
	// The controller's own service account, for its policy stream.
	if _, err := admin.CreateRole(ctx, &iamv1.CreateRoleRequest{Role: &iamv1.Role{Name: "policy-watch", Permissions: []string{"iam.policy.watch"}}}); err != nil {
		t.Fatal(err)
	}
	sa, err := admin.CreateServiceAccount(ctx, &iamv1.CreateServiceAccountRequest{ServiceAccount: &iamv1.ServiceAccount{Name: "plasmavmc", RateLimitExempt: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.CreateBinding(ctx, &iamv1.CreateBindingRequest{Binding: &iamv1.Binding{
		Principal: "serviceaccount:plasmavmc", Role: "policy-watch", Effect: iamv1.Effect_EFFECT_ALLOW}}); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "sa.secret")
	if err := os.WriteFile(secret, []byte(sa.ClientSecret), 0o600); err != nil {
		t.Fatal(err)
	}
	e.startControllers(1, []string{"--iam-endpoints", iamURL, "--iam-client-id", "plasmavmc", "--iam-client-secret-file", secret})
	fh := startFakeHost(t, "a")
	e.addAgent("iam1", fh, 2048)
	e.registerImages(e.api(0, adminTok))

	aliceTok, bobTok := login("alice", "alice-pass-1234", "pa"), login("bob", "bob-pass-1234", "pb")
	alice, bob, root := e.api(0, aliceTok), e.api(0, bobTok), e.api(0, adminTok)
	// Stopped VMs: authorization is the point here, not booting.
	sa1, sb1 := spec(), spec()
	va := e.createStopped(alice, "pa", "a1", sa1)
	vb := e.createStopped(bob, "pb", "b1", sb1)

	denied := func(what string, err error) {
		t.Helper()
		if code := connect.CodeOf(err); code != connect.CodePermissionDenied && code != connect.CodeNotFound {
			t.Errorf("%s: %v (want PermissionDenied or NotFound)", what, err)
		}
	}
	_, err = alice.vm.GetVM(ctx, connect.NewRequest(&pb.GetVMRequest{Id: vb.Id}))
	denied("alice gets bob's VM", err)
	_, err = alice.vm.StopVM(ctx, connect.NewRequest(&pb.StopVMRequest{Id: vb.Id, Force: true}))
	denied("alice stops bob's VM", err)
	_, err = alice.vm.StartVM(ctx, connect.NewRequest(&pb.StartVMRequest{Id: vb.Id}))
	denied("alice starts bob's VM", err)
	_, err = alice.vm.DeleteVM(ctx, connect.NewRequest(&pb.DeleteVMRequest{Id: vb.Id}))
	denied("alice deletes bob's VM", err)
	_, err = bob.vm.RebootVM(ctx, connect.NewRequest(&pb.RebootVMRequest{Id: va.Id}))
	denied("bob reboots alice's VM", err)
	_, err = alice.vm.CreateVM(ctx, connect.NewRequest(&pb.CreateVMRequest{Name: "sneak", Project: "pb", Spec: spec(), RequestId: "sneak-1"}))
	denied("alice creates in pb", err)
	_, err = alice.vm.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{Project: "pb"}))
	if err == nil {
		// Allowed only as an empty answer.
		l, _ := alice.vm.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{Project: "pb"}))
		if len(l.Msg.Vms) != 0 {
			t.Errorf("alice lists pb: %v", l.Msg.Vms)
		}
	}
	l, err := alice.vm.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{}))
	if err != nil || len(l.Msg.Vms) != 1 || l.Msg.Vms[0].Id != va.Id {
		t.Errorf("alice's own list: %v %v", l, err)
	}
	// No token at all: Unauthenticated.
	_, err = e.api(0, "").vm.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{}))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("no token: %v (want Unauthenticated)", err)
	}
	// bob's VM is untouched; the admin sees both.
	if v, err := get(ctx, root, vb.Id); err != nil || v == nil || v.PowerState != pb.PowerState_POWER_STATE_STOPPED {
		t.Errorf("bob's VM after alice's attempts: %v %v", v, err)
	}
	all, err := root.vm.ListVMs(ctx, connect.NewRequest(&pb.ListVMsRequest{}))
	if err != nil || len(all.Msg.Vms) != 2 {
		t.Errorf("admin lists %v (%v), want both VMs", all, err)
	}
	// Through the CLI with alice's token: bob's VM is not hers.
	out, err := e.cli(aliceTok, "vm", "stop", vb.Id, "--force")
	if err == nil || !(strings.Contains(out, "permission_denied") || strings.Contains(out, "not_found")) {
		t.Errorf("CLI: alice stops bob's VM: %v\n%s", err, out)
	}
	t.Logf("CLI answer to alice stopping bob's VM: %s", strings.TrimSpace(out))
}

// createStopped creates a VM without starting it.
func (e *env) createStopped(c clients, project, name string, s *pb.VMSpec) *pb.VM {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.vm.CreateVM(ctx, connect.NewRequest(&pb.CreateVMRequest{Name: name, Project: project, Spec: s,
		RequestId: fmt.Sprintf("%s-%s-%d", project, name, time.Now().UnixNano()), Stopped: true}))
	if err != nil {
		e.t.Fatalf("create %s/%s: %v", project, name, err)
	}
	e.track(resp.Msg.Vm.Id)
	return resp.Msg.Vm
}

// TestBadInputThroughCLI: one pass of bad input through the real CLI and controller:
// each gets its code and names the problem, and nothing is created.
func TestBadInputThroughCLI(t *testing.T) {
	e := newEnv(t, envOptions{})
	fh := startFakeHost(t, "a")
	e.addAgent("bad1", fh, 2048)
	e.registerImages(e.api(0, ""))
	good := []string{"--project", "demo", "--memory", fmt.Sprint(guestMiB), "--kernel", "tiny-kernel", "--initrd", "tiny-initrd", "--stopped"}
	out, err := e.cli("", append([]string{"vm", "create", "taken", "-o", "json"}, good...)...)
	if err != nil {
		t.Fatalf("good create: %v\n%s", err, out)
	}
	var created struct {
		VM struct {
			ID string `json:"id"`
		} `json:"vm"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	e.track(created.VM.ID)

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"zero vcpus", []string{"vm", "create", "x1", "--vcpus", "0"}, []string{"invalid_argument", "vcpus"}},
		{"memory beyond every host", []string{"vm", "create", "x2", "--memory", "999999"}, []string{"invalid_argument", "memory_mib"}},
		{"unknown kernel image", []string{"vm", "create", "x3", "--kernel", "nope"}, []string{"not_found", "nope"}},
		{"unknown pool", []string{"vm", "create", "x4", "--disk", "name=root,image=base,pool=ceph"}, []string{"not_found", "ceph"}},
		{"unknown disk image", []string{"vm", "create", "x5", "--disk", "name=root,image=debian,pool=local"}, []string{"not_found", "debian"}},
		{"duplicate name in project", []string{"vm", "create", "taken"}, []string{"already_exists", "taken"}},
		{"bad name", []string{"vm", "create", "Bad_Name"}, []string{"invalid_argument", "Bad_Name"}},
		{"malformed id (show)", []string{"vm", "show", "not-an-id"}, []string{"invalid_argument"}},
		{"malformed id (stop)", []string{"vm", "stop", "../etc"}, []string{"invalid_argument"}},
		{"unknown id", []string{"vm", "show", "00000000-0000-4000-8000-000000000000"}, []string{"not_found"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if args[1] == "create" {
				// The good flags first; the case's flags win (later flags override).
				args = append(append(append([]string{}, args[:3]...), good...), args[3:]...)
			}
			out, err := e.cli("", args...)
			if err == nil {
				t.Fatalf("plasmavmc %s succeeded:\n%s", strings.Join(args, " "), out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("plasmavmc %s: output lacks %q:\n%s", strings.Join(args, " "), w, out)
				}
			}
			t.Logf("%s → %s", tc.name, strings.TrimSpace(out))
		})
	}
	out, err = e.cli("", "vm", "list", "-o", "json")
	if err != nil || strings.Count(out, `"id"`) != 1 {
		t.Fatalf("after the bad input, want only the one good VM:\n%s (%v)", out, err)
	}
}
