package node

import (
	"crypto/sha1"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"plasmacloud.dev/chainfire/internal/mvcc"
)

// Config is one member's configuration. Field names follow etcd's flags so that an etcd
// operator's command line carries over (see cmd/chainfire).
type Config struct {
	Name                     string
	DataDir                  string
	ListenClientURLs         []string
	AdvertiseClientURLs      []string
	ListenPeerURLs           []string
	InitialAdvertisePeerURLs []string
	// InitialCluster maps member names to peer URLs: "a=http://h1:2380,b=http://h2:2380".
	InitialCluster      string
	InitialClusterState string // "new" or "existing"
	InitialClusterToken string

	// ElectionTimeout is how long a follower waits without hearing from the leader before it
	// starts an election (raft's heartbeat and election timeouts); the leader heartbeats at a
	// tenth of it, and its lease is half of it.
	ElectionTimeout time.Duration
	// SnapshotCount is the number of applied entries between raft snapshots.
	SnapshotCount uint64
	// LogStore selects the raft log store: "wal" (raft-wal, the default: faster appends) or
	// "boltdb" (raft-boltdb/v2). See docs/chainfire/performance.md.
	LogStore string
	// Limits bounds keys, values and txn sizes; requests over them get InvalidArgument.
	Limits mvcc.Limits
	// MaxRequestBytes bounds one request message.
	MaxRequestBytes int
	// QuotaBackendBytes is the store size operators are alerted at (80% of it, see
	// deploy/prometheus/alerts.yml); writes beyond it are not refused yet.
	QuotaBackendBytes int64
	// ProgressNotifyInterval is how often watchers that asked for progress notifications get one.
	ProgressNotifyInterval time.Duration

	// PeerClientTLS, when set, is used to reach other members' https client URLs (write
	// forwarding, read index, lease renewal): their CA, and this member's certificate when
	// they require client certificates.
	PeerClientTLS *tls.Config

	Logger *slog.Logger
}

// DefaultConfig returns a single-member configuration on etcd's default ports.
func DefaultConfig() Config {
	return Config{
		Name:                     "default",
		DataDir:                  "default.chainfire",
		ListenClientURLs:         []string{"http://localhost:2379"},
		AdvertiseClientURLs:      []string{"http://localhost:2379"},
		ListenPeerURLs:           []string{"http://localhost:2380"},
		InitialAdvertisePeerURLs: []string{"http://localhost:2380"},
		InitialCluster:           "default=http://localhost:2380",
		InitialClusterState:      "new",
		InitialClusterToken:      "chainfire-cluster",
		ElectionTimeout:          500 * time.Millisecond,
		SnapshotCount:            10000,
		LogStore:                 "wal",
		Limits:                   mvcc.DefaultLimits(),
		MaxRequestBytes:          int(1.5 * 1024 * 1024),
		ProgressNotifyInterval:   10 * time.Minute,
		QuotaBackendBytes:        8 << 30,
	}
}

// SelfCluster is the --initial-cluster of a member alone: name=each advertised peer URL
// (etcd's default).
func (c *Config) SelfCluster() string {
	parts := make([]string, len(c.InitialAdvertisePeerURLs))
	for i, u := range c.InitialAdvertisePeerURLs {
		parts[i] = c.Name + "=" + u
	}
	return strings.Join(parts, ",")
}

// initialMember is one entry of --initial-cluster.
type initialMember struct {
	Name     string
	PeerURLs []string
	ID       uint64
}

// Validate checks the configuration and names the first bad field.
func (c *Config) Validate() error {
	if c.Name == "" {
		return errors.New("--name is empty")
	}
	if c.DataDir == "" {
		return errors.New("--data-dir is empty")
	}
	for flag, urls := range map[string][]string{
		"--listen-client-urls": c.ListenClientURLs, "--advertise-client-urls": c.AdvertiseClientURLs,
		"--listen-peer-urls": c.ListenPeerURLs, "--initial-advertise-peer-urls": c.InitialAdvertisePeerURLs,
	} {
		if len(urls) == 0 {
			return fmt.Errorf("%s is empty", flag)
		}
		for _, u := range urls {
			if _, err := hostPort(u); err != nil {
				return fmt.Errorf("%s: %w", flag, err)
			}
		}
	}
	if len(c.ListenClientURLs) > 1 || len(c.ListenPeerURLs) > 1 {
		return errors.New("--listen-client-urls and --listen-peer-urls take one URL each (bind 0.0.0.0 to serve several interfaces)")
	}
	if c.InitialClusterState != "new" && c.InitialClusterState != "existing" {
		return fmt.Errorf("--initial-cluster-state %q: want new or existing", c.InitialClusterState)
	}
	members, err := c.initialMembers()
	if err != nil {
		return err
	}
	self := false
	for _, m := range members {
		if m.Name == c.Name {
			self = true
			if !sameURLs(m.PeerURLs, c.InitialAdvertisePeerURLs) {
				return fmt.Errorf("--initial-cluster gives %s peer URLs %v but --initial-advertise-peer-urls is %v", c.Name, m.PeerURLs, c.InitialAdvertisePeerURLs)
			}
		}
	}
	if !self {
		return fmt.Errorf("--initial-cluster has no entry for --name %q", c.Name)
	}
	if c.ElectionTimeout < 50*time.Millisecond {
		return fmt.Errorf("--election-timeout %v is below 50ms", c.ElectionTimeout)
	}
	if c.LogStore != "boltdb" && c.LogStore != "wal" {
		return fmt.Errorf("--log-store %q: want boltdb or wal", c.LogStore)
	}
	if c.Limits.MaxKeyBytes <= 0 || c.Limits.MaxValueBytes <= 0 || c.Limits.MaxTxnOps <= 0 {
		return errors.New("--max-key-bytes, --max-value-bytes and --max-txn-ops must be positive")
	}
	return nil
}

// initialMembers parses --initial-cluster; a name may appear several times (several peer URLs).
func (c *Config) initialMembers() ([]initialMember, error) {
	byName := map[string]*initialMember{}
	var order []string
	for _, part := range strings.Split(c.InitialCluster, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" || u == "" {
			return nil, fmt.Errorf("--initial-cluster: %q is not name=peerURL", part)
		}
		if _, err := hostPort(u); err != nil {
			return nil, fmt.Errorf("--initial-cluster: %w", err)
		}
		m, seen := byName[name]
		if !seen {
			m = &initialMember{Name: name}
			byName[name] = m
			order = append(order, name)
		}
		m.PeerURLs = append(m.PeerURLs, u)
	}
	if len(order) == 0 {
		return nil, errors.New("--initial-cluster is empty")
	}
	out := make([]initialMember, 0, len(order))
	for _, name := range order {
		m := byName[name]
		m.ID = MemberID(m.PeerURLs, c.InitialClusterToken)
		out = append(out, *m)
	}
	return out, nil
}

// raftConfiguration is --initial-cluster as a raft configuration: every member a voter,
// identified by its member id, reached at its first peer URL.
func raftConfiguration(members []initialMember) raft.Configuration {
	var c raft.Configuration
	for _, m := range members {
		addr, _ := hostPort(m.PeerURLs[0])
		c.Servers = append(c.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(serverID(m.ID)), Address: raft.ServerAddress(addr)})
	}
	return c
}

// MemberID derives a member's id from its peer URLs and the cluster token, as etcd does, so
// that a member started with --initial-cluster-state existing knows the id MemberAdd gave it.
func MemberID(peerURLs []string, token string) uint64 {
	urls := append([]string(nil), peerURLs...)
	sort.Strings(urls)
	sum := sha1.Sum([]byte(strings.Join(urls, "") + token))
	return binary.BigEndian.Uint64(sum[:8])
}

// ClusterID derives the cluster id from the cluster token.
func ClusterID(token string) uint64 {
	sum := sha1.Sum([]byte("chainfire-cluster/" + token))
	return binary.BigEndian.Uint64(sum[:8])
}

// hostPort returns host:port of an http(s) URL (raft's TCP transport binds and dials it).
func hostPort(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("URL %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("URL %q: scheme must be http or https", raw)
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return "", fmt.Errorf("URL %q: want scheme://host:port", raw)
	}
	return u.Host, nil
}

func sameURLs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = append([]string(nil), a...), append([]string(nil), b...)
	sort.Strings(a)
	sort.Strings(b)
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// serverID is the raft ServerID of a member: its id in hex, as etcdctl prints it.
func serverID(id uint64) string { return fmt.Sprintf("%x", id) }
