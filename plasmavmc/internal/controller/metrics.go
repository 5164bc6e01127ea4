package controller

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// metrics are the controller's Prometheus collectors.
type metrics struct {
	creates, placements, conflicts, deletes prometheus.Counter
	leader                                  prometheus.Gauge
	vms                                     *prometheus.GaugeVec
	passSeconds                             prometheus.Histogram

	// HA manager (leader only).
	hostState       *prometheus.GaugeVec   // host, state: 1 for the host's current health state
	hostMaintenance *prometheus.GaugeVec   // host: 1 while drained
	transitions     *prometheus.CounterVec // from, to
	failovers       *prometheus.CounterVec // result: moved, no_room, host_down
	migrations      *prometheus.CounterVec // result: started, done, failed
	drains          *prometheus.CounterVec // result: done, failed
	fenceCommands   *prometheus.CounterVec // result: ok, failed
	timedOutOps     prometheus.Counter
}

func newMetrics() *metrics {
	return &metrics{
		creates:     prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_vm_creates_total", Help: "VMs created through this replica."}),
		placements:  prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_scheduler_placements_total", Help: "VMs placed on a host by this replica's scheduler."}),
		conflicts:   prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_scheduler_conflicts_total", Help: "Placements lost to a concurrent change (compare-and-swap failed) and retried."}),
		deletes:     prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_vm_deletes_finished_total", Help: "Deletes finished by this replica's housekeeping."}),
		leader:      prometheus.NewGauge(prometheus.GaugeOpts{Name: "plasmavmc_controller_leader", Help: "1 while this replica is the leader."}),
		vms:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "plasmavmc_vms", Help: "VMs by observed state (as of the leader's last pass)."}, []string{"state"}),
		passSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "plasmavmc_scheduler_pass_seconds", Help: "Duration of scheduling and housekeeping passes.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		hostState: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "plasmavmc_host_state",
			Help: "1 for each host's current health state (up, suspect, down, fenced, recovered), 0 for the others; set by the leader."}, []string{"host", "state"}),
		hostMaintenance: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "plasmavmc_host_maintenance",
			Help: "1 while the host is in maintenance (drained); set by the leader."}, []string{"host"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_host_transitions_total",
			Help: "Host health transitions decided by this replica as leader."}, []string{"from", "to"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_failovers_total",
			Help: "VMs of fenced hosts handled by this replica as leader: moved to another host, no_room (left FAILED, retried), host_down (failover off or a local disk)."}, []string{"result"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_migrations_total",
			Help: "Live migrations: started through this replica, and done or failed as finalized by this replica as leader."}, []string{"result"}),
		drains: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_drains_total",
			Help: "Host drains finished by this replica as leader."}, []string{"result"}),
		fenceCommands: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_fence_commands_total",
			Help: "Runs of --fence-command by result (ok: exit 0)."}, []string{"result"}),
		timedOutOps: prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_operations_timed_out_total",
			Help: "Operations the leader failed because they exceeded their deadline."}),
	}
}

// Register adds the controller's collectors to reg.
func (c *Controller) Register(reg prometheus.Registerer) error {
	m := c.metrics
	for _, col := range []prometheus.Collector{m.creates, m.placements, m.conflicts, m.deletes, m.leader, m.vms, m.passSeconds,
		m.hostState, m.hostMaintenance, m.transitions, m.failovers, m.migrations, m.drains, m.fenceCommands, m.timedOutOps} {
		if err := reg.Register(col); err != nil {
			return err
		}
	}
	return nil
}

func (m *metrics) setCounts(counts map[pb.VMState]int) {
	for v, name := range pb.VMState_name {
		if v == 0 {
			continue
		}
		m.vms.WithLabelValues(strings.ToLower(strings.TrimPrefix(name, "VM_STATE_"))).Set(float64(counts[pb.VMState(v)]))
	}
}

// hostStates are the label values of plasmavmc_host_state.
var hostStates = []pb.HostState{pb.HostState_HOST_STATE_UP, pb.HostState_HOST_STATE_SUSPECT, pb.HostState_HOST_STATE_DOWN,
	pb.HostState_HOST_STATE_FENCED, pb.HostState_HOST_STATE_RECOVERED}

// stateName is the lower-case name of a host state ("up", "fenced", ...).
func stateName(s pb.HostState) string {
	if s == pb.HostState_HOST_STATE_UNSPECIFIED {
		return "unknown"
	}
	return strings.ToLower(strings.TrimPrefix(s.String(), "HOST_STATE_"))
}

// setHostState sets plasmavmc_host_state of host: 1 for state, 0 for the others.
func (m *metrics) setHostState(host string, state pb.HostState) {
	for _, s := range hostStates {
		v := 0.0
		if s == state {
			v = 1
		}
		m.hostState.WithLabelValues(host, stateName(s)).Set(v)
	}
}

// setMaintenance sets plasmavmc_host_maintenance of host.
func (m *metrics) setMaintenance(host string, on bool) {
	v := 0.0
	if on {
		v = 1
	}
	m.hostMaintenance.WithLabelValues(host).Set(v)
}
