package auth_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/proto/iam/v1/iamv1connect"
)

// A service wires pkg/auth once in its main: Setup, the interceptor on every
// handler, Run for the background loops and Ready for /readyz.
func Example() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.Default()

	svc, err := auth.Setup(auth.Config{
		IAMEndpoints: []string{"http://iam-1:8443", "http://iam-2:8443"},
		// The service's own service-account token (e.g. from pkg/iamclient);
		// WatchPolicy needs iam.policy.watch.
		Credentials: func(ctx context.Context) (string, error) { return "service-account-token", nil },
		Permissions: map[string]string{
			iamv1connect.KeyServiceListKeysProcedure:  "iam.key.list",
			iamv1connect.KeyServiceRotateKeyProcedure: "iam.key.rotate",
		},
		Public: []string{iamv1connect.TokenServiceTokenProcedure},
		Logger: log,
	})
	if err != nil {
		log.Error("auth setup", "error", err)
		return
	}
	go func() { _ = svc.Run(ctx) }() // JWKS refresh + policy follower, until ctx ends

	mux := http.NewServeMux()
	var keys iamv1connect.KeyServiceHandler // the service's implementation
	mux.Handle(iamv1connect.NewKeyServiceHandler(keys, connect.WithInterceptors(svc.Interceptor)))
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := svc.Ready(r.Context()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	})
	// Handlers read the caller with auth.IdentityFromContext(ctx).
	_ = mux
}

func ExampleMatchPermission() {
	fmt.Println(auth.MatchPermission("vm.*", "vm.disk.attach"))
	fmt.Println(auth.MatchPermission("*.get", "network.port.get"))
	fmt.Println(auth.MatchPermission("vm.*", "vm"))
	// Output:
	// true
	// true
	// false
}

func ExamplePolicy_Authorize() {
	p := auth.NewPolicy(auth.PolicyConfig{})
	_ = p.Apply(builtinSnapshot(1))
	alice := auth.Identity{Subject: "user:alice", Project: "p1"}
	fmt.Println(p.Authorize(alice, "vm.create"))
	fmt.Println(p.Authorize(alice, "iam.user.create"))
	// Output:
	// <nil>
	// permission "iam.user.create" denied for user:alice in project p1
}
