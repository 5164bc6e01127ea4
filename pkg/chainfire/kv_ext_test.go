package chainfire_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/resilience"
)

// testLogger logs at debug level when CHAINFIRE_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("CHAINFIRE_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// newClient returns a client of the given endpoints with fast retries.
func newClient(t *testing.T, cfg chainfire.Config) *chainfire.Client {
	t.Helper()
	if cfg.Retry.InitialInterval == 0 {
		cfg.Retry = resilience.Policy{InitialInterval: 2 * time.Millisecond, MaxInterval: 20 * time.Millisecond}
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	c, err := chainfire.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func keysOf(t *testing.T, c *chainfire.Client, ctx context.Context, key string, opts ...chainfire.OpOption) string {
	t.Helper()
	r, err := c.Get(ctx, key, opts...)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	var ks []string
	for _, kv := range r.Kvs {
		ks = append(ks, string(kv.Key)+"="+string(kv.Value))
	}
	return strings.Join(ks, ",")
}

func TestKV(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx := testCtx(t)

	for _, kv := range [][2]string{{"a", "1"}, {"b/1", "x"}, {"b/2", "y"}, {"c", "3"}} {
		if _, err := c.Put(ctx, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	pr, err := c.Put(ctx, "a", "2", chainfire.WithPrevKV())
	if err != nil || string(pr.PrevKv.GetValue()) != "1" {
		t.Fatalf("Put prev kv = %v, %v", pr.GetPrevKv(), err)
	}

	gets := []struct {
		name string
		key  string
		opts []chainfire.OpOption
		want string
	}{
		{"single", "a", nil, "a=2"},
		{"missing", "zz", nil, ""},
		{"prefix", "b/", []chainfire.OpOption{chainfire.WithPrefix()}, "b/1=x,b/2=y"},
		{"range", "a", []chainfire.OpOption{chainfire.WithRange("b/2")}, "a=2,b/1=x"},
		{"from key", "b/2", []chainfire.OpOption{chainfire.WithFromKey()}, "b/2=y,c=3"},
		{"all", "", []chainfire.OpOption{chainfire.WithPrefix()}, "a=2,b/1=x,b/2=y,c=3"},
		{"limit", "", []chainfire.OpOption{chainfire.WithPrefix(), chainfire.WithLimit(1)}, "a=2"},
		{"keys only", "b/", []chainfire.OpOption{chainfire.WithPrefix(), chainfire.WithKeysOnly()}, "b/1=,b/2="},
	}
	for _, g := range gets {
		t.Run("get "+g.name, func(t *testing.T) {
			if got := keysOf(t, c, ctx, g.key, g.opts...); got != g.want {
				t.Errorf("got %q, want %q", got, g.want)
			}
		})
	}
	cr, err := c.Get(ctx, "", chainfire.WithPrefix(), chainfire.WithCountOnly())
	if err != nil || cr.Count != 4 || len(cr.Kvs) != 0 {
		t.Fatalf("count only = %v, %v", cr, err)
	}

	dr, err := c.Delete(ctx, "b/", chainfire.WithPrefix(), chainfire.WithPrevKV())
	if err != nil || dr.Deleted != 2 || len(dr.PrevKvs) != 2 {
		t.Fatalf("Delete = %v, %v", dr, err)
	}
	if got := keysOf(t, c, ctx, "", chainfire.WithPrefix()); got != "a=2,c=3" {
		t.Fatalf("after delete: %q", got)
	}

	rev := pr.Header.Revision
	if _, err := c.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "a", chainfire.WithRev(rev-1)); connect.CodeOf(err) != connect.CodeOutOfRange {
		t.Fatalf("get compacted rev: %v, want OutOfRange", err)
	}
}

func TestTxn(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx := testCtx(t)
	put, err := c.Put(ctx, "k", "v1")
	if err != nil {
		t.Fatal(err)
	}
	rev := put.Header.Revision

	tests := []struct {
		name string
		cmp  chainfire.Cmp
		want bool
	}{
		{"value equal", chainfire.Compare(chainfire.Value("k"), "=", "v1"), true},
		{"value not equal", chainfire.Compare(chainfire.Value("k"), "!=", "v1"), false},
		{"version", chainfire.Compare(chainfire.Version("k"), "=", 1), true},
		{"create rev", chainfire.Compare(chainfire.CreateRevision("k"), "=", rev), true},
		{"mod rev greater", chainfire.Compare(chainfire.ModRevision("k"), ">", rev), false},
		{"mod rev less", chainfire.Compare(chainfire.ModRevision("k"), "<", rev+1), true},
		{"absent key version", chainfire.Compare(chainfire.Version("nope"), "=", 0), true},
		{"lease", chainfire.Compare(chainfire.LeaseValue("k"), "=", int64(0)), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := c.Txn(ctx).If(tt.cmp).Then(chainfire.OpGet("k")).Else(chainfire.OpGet("nope")).Commit()
			if err != nil {
				t.Fatal(err)
			}
			if r.Succeeded != tt.want {
				t.Fatalf("Succeeded = %v, want %v", r.Succeeded, tt.want)
			}
		})
	}

	// Compare-and-swap: exactly one of two racing swaps from the same
	// revision wins.
	r1, err := c.Txn(ctx).If(chainfire.Compare(chainfire.ModRevision("k"), "=", rev)).
		Then(chainfire.OpPut("k", "v2"), chainfire.OpPut("k2", "w")).Else(chainfire.OpGet("k")).Commit()
	if err != nil || !r1.Succeeded {
		t.Fatalf("first CAS: %v, %v", r1, err)
	}
	r2, err := c.Txn(ctx).If(chainfire.Compare(chainfire.ModRevision("k"), "=", rev)).
		Then(chainfire.OpPut("k", "v3")).Else(chainfire.OpGet("k")).Commit()
	if err != nil || r2.Succeeded {
		t.Fatalf("second CAS: %v, %v", r2, err)
	}
	if got := string(r2.Responses[0].GetResponseRange().Kvs[0].Value); got != "v2" {
		t.Fatalf("else branch read %q, want v2", got)
	}
	// Nested txn and delete.
	r3, err := c.Txn(ctx).Then(chainfire.OpTxn(nil, []chainfire.Op{chainfire.OpDelete("k2")}, nil)).Commit()
	if err != nil || r3.Responses[0].GetResponseTxn().Responses[0].GetResponseDeleteRange().Deleted != 1 {
		t.Fatalf("nested delete: %v, %v", r3, err)
	}
}

func TestTxnMisuse(t *testing.T) {
	t.Parallel()
	c := newClient(t, chainfire.Config{Endpoints: []string{"127.0.0.1:1"}})
	ctx := testCtx(t)
	tests := []struct {
		name string
		txn  *chainfire.Txn
	}{
		{"bad operator", c.Txn(ctx).If(chainfire.Compare(chainfire.Value("k"), "~", "v"))},
		{"value needs string", c.Txn(ctx).If(chainfire.Compare(chainfire.Value("k"), "=", 3))},
		{"version needs int", c.Txn(ctx).If(chainfire.Compare(chainfire.Version("k"), "=", "3"))},
		{"bare cmp", c.Txn(ctx).If(chainfire.Value("k"))},
		{"if after then", c.Txn(ctx).Then(chainfire.OpGet("k")).If(chainfire.Compare(chainfire.Value("k"), "=", "v"))},
		{"then twice", c.Txn(ctx).Then(chainfire.OpGet("k")).Then(chainfire.OpGet("k"))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.txn.Commit(); !errors.Is(err, chainfire.ErrInvalidTxn) {
				t.Fatalf("Commit err = %v, want ErrInvalidTxn", err)
			}
		})
	}
}

// TestProtocols runs a put, a get and a watch over each protocol the
// server speaks.
func TestProtocols(t *testing.T) {
	t.Parallel()
	for _, p := range []chainfire.Protocol{chainfire.ProtocolGRPC, chainfire.ProtocolGRPCWeb, chainfire.ProtocolConnect} {
		t.Run(p.String(), func(t *testing.T) {
			t.Parallel()
			_, nodes := newFakeCluster(t, 1)
			c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}, Protocol: p})
			ctx := testCtx(t)
			wch := c.Watch(ctx, "p", chainfire.WithCreatedNotify())
			if r := <-wch; !r.Created {
				t.Fatalf("first watch response %+v, want Created", r)
			}
			if _, err := c.Put(ctx, "p", "v"); err != nil {
				t.Fatal(err)
			}
			if got := keysOf(t, c, ctx, "p"); got != "p=v" {
				t.Fatalf("got %q", got)
			}
			r := <-wch
			if len(r.Events) != 1 || string(r.Events[0].Kv.Value) != "v" {
				t.Fatalf("watch got %+v", r)
			}
		})
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  chainfire.Config
	}{
		{"no endpoints", chainfire.Config{}},
		{"bad scheme", chainfire.Config{Endpoints: []string{"ftp://x:1"}}},
		{"bad protocol", chainfire.Config{Endpoints: []string{"x:1"}, Protocol: 42}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if c, err := chainfire.New(tt.cfg); err == nil {
				c.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}

func TestClosedClient(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx := testCtx(t)
	wch := c.Watch(ctx, "k")
	c.Close()
	if _, err := c.Get(ctx, "k"); !errors.Is(err, chainfire.ErrClosed) {
		t.Fatalf("Get after Close: %v", err)
	}
	for range wch {
	}
}
