// Package chainfiretest starts real ChainFire clusters for tests: N `chainfire server`
// processes on loopback through the harness, with helpers to find the leader and to fault
// members. Any module's tests may use it (IAM, WatchBus, PlasmaVMC need a ChainFire); it
// imports no generated protos, so tests that link etcd's own client can use it too.
//
// With Options.Network each member runs on a host of its own, a network namespace of a
// harness.Network, so that tests can partition the cluster:
//
//	c := chainfiretest.Start(t, 3, chainfiretest.Options{Network: true})
//	l := c.MustLeader()
//	c.Isolate(l) // l is cut from the other members; the test still reaches everyone
//	...
//	c.Heal()
package chainfiretest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"plasmacloud.dev/pkg/harness"
)

// Package is the import path of the chainfire command.
const Package = "plasmacloud.dev/chainfire/cmd/chainfire"

// Options tune a test cluster.
type Options struct {
	// ElectionTimeout passed as --election-timeout (default 500ms, the server's default).
	ElectionTimeout time.Duration
	// ExtraArgs are appended to every member's server command line.
	ExtraArgs []string
	// TLS, when set, serves the client URLs over https with these PEM files (the
	// certificate must be valid for 127.0.0.1); members verify each other with CAFile.
	// It cannot be combined with Network.
	TLS *TLSFiles
	// Network, when set, runs member i inside host i of a harness.Network created for
	// the cluster (Cluster.Net), listening on the host's IP with the standard ports:
	// ClientURL http://IP:2379, PeerURL http://IP:2380. The test process reaches every
	// member whatever the faults, so readiness checks, Leader and Metric keep working
	// while members are cut from each other. Network needs root (harness.RequireRoot).
	Network bool
}

// Ports of the members of a cluster started with Options.Network.
const (
	NetworkClientPort = 2379
	NetworkPeerPort   = 2380
)

// TLSFiles names PEM files for a TLS cluster.
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
	// ClientCertAuth makes members require client certificates signed by CAFile.
	ClientCertAuth bool
}

// Member is one ChainFire process of a Cluster.
type Member struct {
	*harness.Process
	Name      string
	ClientURL string
	PeerURL   string
	DataDir   string
	host      int // index of its host in Cluster.Net, with Options.Network
}

// Cluster is a running ChainFire cluster owned by a test. Its methods that fail the test
// (all but Leader, LeaderAmong and Metric) must be called from the test's goroutine.
type Cluster struct {
	t       testing.TB
	bin     string
	opts    Options
	token   string
	Members []*Member
	// Net is the network the members run in when Options.Network is set (member i on
	// host i), for faults beyond the helpers below such as Netem; nil otherwise.
	Net *harness.Network
	hc  *http.Client
}

// Start launches size members with a static bootstrap and waits until every one is ready
// (knows a leader and has caught up).
func Start(t testing.TB, size int, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: harness.Binary(t, Package), opts: opts, token: fmt.Sprintf("test-%d", time.Now().UnixNano()),
		hc: &http.Client{Timeout: 2 * time.Second}}
	if opts.Network {
		return c.startNetwork(size)
	}
	scheme := "http"
	if opts.TLS != nil {
		scheme = "https"
		tcfg, err := clientTLS(*opts.TLS)
		if err != nil {
			t.Fatal(err)
		}
		c.hc.Transport = &http.Transport{TLSClientConfig: tcfg}
	}
	ports, err := harness.FreePorts(2 * size)
	if err != nil {
		t.Fatal(err)
	}
	var initial []string
	for i := range size {
		m := &Member{
			Name:      fmt.Sprintf("cf%d", i+1),
			ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			PeerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			DataDir:   t.TempDir(),
		}
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		c.spawn(m, strings.Join(initial, ","), "new")
	}
	c.WaitReady()
	return c
}

// startNetwork is Start with Options.Network: the network is created before the
// processes, so that the test's cleanups kill them before they remove the network.
func (c *Cluster) startNetwork(size int) *Cluster {
	c.t.Helper()
	if c.opts.TLS != nil {
		c.t.Fatal("chainfiretest: Options.TLS and Options.Network cannot be combined (certificates are for 127.0.0.1)")
	}
	c.Net = harness.NewNetwork(c.t, size)
	c.hc.Transport = &http.Transport{Proxy: nil} // 10.77.x.y is not loopback: never proxy it
	var initial []string
	for i := range size {
		m := c.networkMember(i, i)
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		c.spawn(m, strings.Join(initial, ","), "new")
	}
	c.WaitReady()
	return c
}

// networkMember describes member i, on host h of c.Net.
func (c *Cluster) networkMember(i, h int) *Member {
	ip := c.Net.Host(h).IP
	return &Member{
		Name:      fmt.Sprintf("cf%d", i+1),
		ClientURL: fmt.Sprintf("http://%s:%d", ip, NetworkClientPort),
		PeerURL:   fmt.Sprintf("http://%s:%d", ip, NetworkPeerPort),
		DataDir:   c.t.TempDir(),
		host:      h,
	}
}

// spawn creates m's process and starts it.
func (c *Cluster) spawn(m *Member, initialCluster, state string) {
	args := []string{"server", "--name", m.Name, "--data-dir", m.DataDir,
		"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
		"--listen-peer-urls", m.PeerURL, "--initial-advertise-peer-urls", m.PeerURL,
		"--initial-cluster", initialCluster, "--initial-cluster-state", state,
		"--initial-cluster-token", c.token, "--log-level", "debug"}
	if c.opts.ElectionTimeout > 0 {
		args = append(args, "--election-timeout", fmt.Sprint(c.opts.ElectionTimeout.Milliseconds()))
	}
	ready := m.ClientURL + "/readyz"
	if tf := c.opts.TLS; tf != nil {
		args = append(args, "--cert-file", tf.CertFile, "--key-file", tf.KeyFile, "--trusted-ca-file", tf.CAFile)
		if tf.ClientCertAuth {
			args = append(args, "--client-cert-auth")
		}
		ready = "" // the harness probes without TLS; WaitReady polls with c.hc instead
	}
	args = append(args, c.opts.ExtraArgs...)
	cfg := harness.ProcessConfig{Name: m.Name, Path: c.bin, Args: args, ReadyURL: ready}
	if c.Net != nil {
		cfg.Wrap = c.Net.Wrap(m.host)
		// Members reach each other on 10.77.x.y, which a proxy in the environment
		// would otherwise capture (Go bypasses proxies for loopback only).
		cfg.Env = []string{"NO_PROXY=" + c.Net.Subnet(), "no_proxy=" + c.Net.Subnet()}
	}
	m.Process = harness.NewProcess(c.t, cfg)
	if err := m.Start(); err != nil {
		c.t.Fatalf("start %s: %v", m.Name, err)
	}
}

// AddMember starts a new member with --initial-cluster-state existing; the caller must
// have announced it with MemberAdd (its peer URL is returned first so the caller can).
// announce is called with the new member's peer URL before the process starts. With
// Options.Network the member runs on a new host of Net, which faults in force apply to
// as harness.Network.AddHost says.
func (c *Cluster) AddMember(announce func(peerURL string) error) *Member {
	c.t.Helper()
	var m *Member
	if c.Net != nil {
		m = c.networkMember(len(c.Members), c.Net.AddHost())
	} else {
		ports, err := harness.FreePorts(2)
		if err != nil {
			c.t.Fatal(err)
		}
		m = &Member{Name: fmt.Sprintf("cf%d", len(c.Members)+1), ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]),
			PeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[1]), DataDir: c.t.TempDir()}
	}
	if err := announce(m.PeerURL); err != nil {
		c.t.Fatalf("announce %s: %v", m.Name, err)
	}
	var initial []string
	for _, o := range c.Members {
		initial = append(initial, o.Name+"="+o.PeerURL)
	}
	initial = append(initial, m.Name+"="+m.PeerURL)
	c.Members = append(c.Members, m)
	c.spawn(m, strings.Join(initial, ","), "existing")
	return m
}

// Endpoints are the client URLs of all members.
func (c *Cluster) Endpoints() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, m.ClientURL)
	}
	return out
}

// HostPorts are the members' client addresses without scheme (etcdctl's --endpoints).
func (c *Cluster) HostPorts() []string {
	var out []string
	for _, m := range c.Members {
		out = append(out, strings.TrimPrefix(m.ClientURL, "http://"))
	}
	return out
}

// WaitReady waits up to 30 s until every running member answers /readyz.
func (c *Cluster) WaitReady() {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		if c.opts.TLS == nil {
			if err := m.WaitReady(ctx); err != nil {
				c.t.Fatalf("%s not ready: %v", m.Name, err)
			}
			continue
		}
		for {
			resp, err := c.hc.Get(m.ClientURL + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if ctx.Err() != nil {
				c.t.Fatalf("%s not ready over TLS: %v", m.Name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// clientTLS trusts the cluster's CA and presents its certificate (mutual TLS).
func clientTLS(f TLSFiles) (*tls.Config, error) {
	pem, err := os.ReadFile(f.CAFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

// Leader returns the index of the member that reports itself leader, waiting up to
// timeout; -1 if none does.
func (c *Cluster) Leader(timeout time.Duration) int {
	return c.LeaderAmong(timeout)
}

// LeaderAmong is Leader restricted to the given members (all when none is given): during
// a partition a deposed leader may still report itself leader for a moment, so a test
// waiting for the majority's new leader asks the majority's members only.
func (c *Cluster) LeaderAmong(timeout time.Duration, members ...int) int {
	if len(members) == 0 {
		for i := range c.Members {
			members = append(members, i)
		}
	}
	deadline := time.Now().Add(timeout)
	for {
		for _, i := range members {
			if m := c.Members[i]; m.Running() && c.metric(m, "chainfire_server_is_leader") == 1 {
				return i
			}
		}
		if time.Now().After(deadline) {
			return -1
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// MustLeader is Leader that fails the test when no leader appears within 10 s.
func (c *Cluster) MustLeader() int {
	c.t.Helper()
	i := c.Leader(10 * time.Second)
	if i < 0 {
		c.t.Fatal("no leader within 10s")
	}
	return i
}

// Follower returns the index of a running member other than the leader.
func (c *Cluster) Follower() int {
	c.t.Helper()
	l := c.MustLeader()
	for i, m := range c.Members {
		if i != l && m.Running() {
			return i
		}
	}
	c.t.Fatal("no running follower")
	return -1
}

// metric reads one unlabelled gauge from a member's /metrics; -1 when unavailable.
func (c *Cluster) metric(m *Member, name string) float64 {
	resp, err := c.hc.Get(m.ClientURL + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, name+" ") {
			var v float64
			fmt.Sscan(strings.TrimPrefix(line, name+" "), &v)
			return v
		}
	}
	return -1
}

// Metric exposes metric for tests.
func (c *Cluster) Metric(i int, name string) float64 { return c.metric(c.Members[i], name) }

// Isolate cuts member i off from every other member, both ways (harness.Network.Isolate);
// the test process still reaches it. It needs Options.Network and fails the test on
// error, as do Partition, Cut and Heal; members are indexed as in Members, and an index
// out of range panics.
func (c *Cluster) Isolate(i int) {
	c.t.Helper()
	if err := c.network().Isolate(c.Members[i].host); err != nil {
		c.t.Fatal(err)
	}
}

// Partition splits the members into groups that cannot reach each other
// (harness.Network.Partition), e.g. Partition([]int{0}, []int{1, 2}).
func (c *Cluster) Partition(groups ...[]int) {
	c.t.Helper()
	hosts := make([][]int, len(groups))
	for g, members := range groups {
		for _, i := range members {
			hosts[g] = append(hosts[g], c.Members[i].host)
		}
	}
	if err := c.network().Partition(hosts...); err != nil {
		c.t.Fatal(err)
	}
}

// Cut drops the packets member from sends to member to, one way (harness.Network.Cut).
func (c *Cluster) Cut(from, to int) {
	c.t.Helper()
	if err := c.network().Cut(c.Members[from].host, c.Members[to].host); err != nil {
		c.t.Fatal(err)
	}
}

// Netem delays member i's packets, both ways, by delay and loses a fraction loss of them
// (harness.Network.Netem); Heal or a later Netem call removes it.
func (c *Cluster) Netem(i int, delay time.Duration, loss float64) {
	c.t.Helper()
	if err := c.network().Netem(c.Members[i].host, delay, loss); err != nil {
		c.t.Fatal(err)
	}
}

// Heal removes every network fault (harness.Network.Heal).
func (c *Cluster) Heal() {
	c.t.Helper()
	if err := c.network().Heal(); err != nil {
		c.t.Fatal(err)
	}
}

// network returns c.Net, failing the test when the cluster has none.
func (c *Cluster) network() *harness.Network {
	c.t.Helper()
	if c.Net == nil {
		c.t.Fatal("chainfiretest: network faults need Options.Network")
	}
	return c.Net
}
