package node

import (
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the node's Prometheus collectors (names follow etcd's where one exists).
type metrics struct {
	leaderChanges      prometheus.Counter
	hasLeader          prometheus.Gauge
	isLeader           prometheus.Gauge
	proposalsCommitted prometheus.Counter
	proposalsFailed    prometheus.Counter
	proposalsForwarded prometheus.Counter
	applyDuration      prometheus.Histogram
	applyBatch         prometheus.Histogram
	logAppendDuration  prometheus.Histogram
	readIndexDuration  prometheus.Histogram
}

func newMetrics() *metrics {
	return &metrics{
		leaderChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chainfire_server_leader_changes_seen_total", Help: "Leader changes seen by this member."}),
		hasLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chainfire_server_has_leader", Help: "1 if this member knows a leader."}),
		isLeader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "chainfire_server_is_leader", Help: "1 if this member is the leader."}),
		proposalsCommitted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chainfire_server_proposals_committed_total", Help: "Proposals this member committed as leader."}),
		proposalsFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chainfire_server_proposals_failed_total", Help: "Proposals that failed (no leader, lost leadership, timeout)."}),
		proposalsForwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "chainfire_server_proposals_forwarded_total", Help: "Proposals this member forwarded to the leader."}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chainfire_server_apply_duration_seconds", Help: "Time to apply one batch of committed entries to the store.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
		applyBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chainfire_server_apply_batch_entries", Help: "Entries per applied batch.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10)}),
		logAppendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chainfire_disk_wal_fsync_duration_seconds", Help: "Time to append (and fsync) raft log entries.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16)}),
		readIndexDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "chainfire_server_read_index_duration_seconds", Help: "Time to confirm a linearizable read barrier.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16)}),
	}
}

// register adds the collectors plus gauges read live from raft and the store.
func (m *metrics) register(reg prometheus.Registerer, n *Node) {
	reg.MustRegister(m.leaderChanges, m.hasLeader, m.isLeader, m.proposalsCommitted, m.proposalsFailed,
		m.proposalsForwarded, m.applyDuration, m.applyBatch, m.logAppendDuration, m.readIndexDuration)
	gauge := func(name, help string, f func() float64) {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
	gauge("chainfire_server_raft_term", "Current raft term.", func() float64 { return float64(n.raft.CurrentTerm()) })
	gauge("chainfire_server_raft_commit_index", "Raft commit index.", func() float64 { return float64(n.raft.CommitIndex()) })
	gauge("chainfire_server_raft_applied_index", "Index applied to the store.", func() float64 { return float64(n.fsm.Applied()) })
	gauge("chainfire_server_raft_last_index", "Last raft log index.", func() float64 { return float64(n.raft.LastIndex()) })
	gauge("chainfire_mvcc_db_total_size_in_bytes", "Store size on disk.", func() float64 { return float64(n.store.DBSize()) })
	gauge("chainfire_server_quota_backend_bytes", "Store size at which operators are alerted (--quota-backend-bytes).", func() float64 { return float64(n.cfg.QuotaBackendBytes) })
	gauge("chainfire_mvcc_revision", "Current store revision.", func() float64 { cur, _ := n.store.Revision(); return float64(cur) })
	gauge("chainfire_server_raft_last_contact_seconds", "Seconds since this member last heard from the leader (0 on the leader).", func() float64 {
		if n.raft.State() == raft.Leader {
			return 0
		}
		lc := n.raft.LastContact()
		if lc.IsZero() {
			return -1
		}
		return time.Since(lc).Seconds()
	})
}

// timedLogStore measures raft log appends, where the log store fsyncs.
type timedLogStore struct {
	raft.LogStore
	h prometheus.Histogram
}

func (s timedLogStore) StoreLogs(logs []*raft.Log) error {
	start := time.Now()
	err := s.LogStore.StoreLogs(logs)
	s.h.Observe(time.Since(start).Seconds())
	return err
}

func (s timedLogStore) StoreLog(l *raft.Log) error { return s.StoreLogs([]*raft.Log{l}) }
