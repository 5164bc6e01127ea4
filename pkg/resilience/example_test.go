package resilience_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/auth"
	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/pkg/resilience/chainfiresource"
	"plasmacloud.dev/proto/mvccpb"
)

// A controller following /vms/ through WatchBus: resumes across replicas on
// its own, and relists only when told the history is gone.
func ExampleSubscribe() {
	ctx := context.Background()
	pool := resilience.NewPool(resilience.TransportOptions{})
	defer pool.Close()
	var token auth.TokenSource // e.g. from pkg/iamclient
	stats := new(resilience.SubscriberStats)

	from := int64(0) // from now; a controller would pass its last revision + 1
	err := resilience.Subscribe(ctx, resilience.SubscriberConfig{
		Endpoints:     []string{"http://watchbus-1:7070", "http://watchbus-2:7070"},
		Pool:          pool,
		ClientOptions: []connect.ClientOption{connect.WithInterceptors(auth.BearerInterceptor(token))},
		Prefixes:      [][]byte{[]byte("/vms/")},
		StartRevision: from,
		Logger:        slog.Default(),
		Stats:         stats,
	}, func(ctx context.Context, b resilience.Batch) error {
		for _, ev := range b.Events {
			slog.Info("change", "revision", b.Revision, "type", ev.GetType(), "key", string(ev.GetKv().GetKey()))
		}
		return nil // b.Revision is now safe to persist as the resume point
	})
	if cerr := (*resilience.CompactedError)(nil); errors.As(err, &cerr) {
		slog.Info("history gone: read the range again, then subscribe from its revision + 1",
			"current_revision", cerr.CurrentRevision)
	}
}

type vm struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

// An informer caching decoded VMs: listed from ChainFire, followed through
// WatchBus. Replace the Watcher by chainfiresource.Watcher{Client: cf} to
// run without WatchBus.
func ExampleNewInformer() {
	ctx := context.Background()
	cf, err := chainfire.New(chainfire.Config{Endpoints: []string{"http://chainfire-1:2379"}})
	if err != nil {
		return
	}
	defer cf.Close()
	inf, err := resilience.NewInformer(resilience.InformerConfig[*vm]{
		Lister:  chainfiresource.Lister{Client: cf},
		Watcher: resilience.WatchBusWatcher(resilience.SubscriberConfig{Endpoints: []string{"http://watchbus-1:7070"}}),
		Prefix:  []byte("/vms/"),
		Decode: func(kv *mvccpb.KeyValue) (*vm, error) {
			v := new(vm)
			return v, json.Unmarshal(kv.GetValue(), v)
		},
		Handlers: resilience.InformerHandlers[*vm]{
			OnAdd:    func(key string, v *vm) { slog.Info("vm added", "key", key, "state", v.State) },
			OnUpdate: func(key string, old, v *vm) { slog.Info("vm changed", "key", key, "from", old.State, "to", v.State) },
			OnDelete: func(key string, v *vm) { slog.Info("vm gone", "key", key) },
		},
	})
	if err != nil {
		return
	}
	go func() { _ = inf.Run(ctx) }() // ends with ctx
	if err := inf.WaitForSync(ctx); err != nil {
		return
	}
	if v, ok := inf.Get("/vms/web-1"); ok {
		slog.Info("cached", "name", v.Name, "revision", inf.Revision())
	}
}
