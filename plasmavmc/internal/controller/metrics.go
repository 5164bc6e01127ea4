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
	}
}

// Register adds the controller's collectors to reg.
func (c *Controller) Register(reg prometheus.Registerer) error {
	m := c.metrics
	for _, col := range []prometheus.Collector{m.creates, m.placements, m.conflicts, m.deletes, m.leader, m.vms, m.passSeconds} {
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
