package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "plasmacloud.dev/proto/plasmavmc/v1"
)

// metrics are the agent's Prometheus collectors. Counters and histograms are safe for
// concurrent use; the VM gauge is computed at scrape time from the workers.
type metrics struct {
	restarts      *prometheus.CounterVec
	reconcile     *prometheus.HistogramVec
	leaseRenewals prometheus.Counter
	leaseGrants   prometheus.Counter
	statusWrites  *prometheus.CounterVec
	orphans       prometheus.Counter
	selfFences    prometheus.Counter
	watchdogPets  prometheus.Counter
	stale         prometheus.Counter
	migrations    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, a *agent) *metrics {
	m := &metrics{
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_agent_vm_restarts_total",
			Help: "Restarts of VMs whose QEMU stopped unexpectedly, by the stop's reason."}, []string{"reason"}),
		reconcile: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "plasmavmc_agent_reconcile_seconds",
			Help:    "Time of one reconcile of one VM (driver and storage calls included), by outcome.",
			Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}}, []string{"outcome"}),
		leaseRenewals: prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_agent_lease_renewals_total",
			Help: "Renewals of the host's heartbeat lease answered by ChainFire."}),
		leaseGrants: prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_agent_lease_grants_total",
			Help: "Heartbeat leases granted (1 at start, one more after every lease loss)."}),
		statusWrites: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_agent_chainfire_writes_total",
			Help: "Writes of VM status, deletions and operation results to ChainFire, by kind and result."}, []string{"kind", "result"}),
		orphans: prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_agent_orphans_removed_total",
			Help: "Domains of PlasmaVMC no longer assigned to this host that were destroyed and undefined."}),
		selfFences: prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_agent_self_fences_total",
			Help: "Self-fences of this host by the agent (lease lost or not renewed before the fence deadline)."}),
		watchdogPets: prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_agent_watchdog_pets_total",
			Help: "Pets of the watchdog process answered."}),
		stale: prometheus.NewCounter(prometheus.CounterOpts{Name: "plasmavmc_agent_stale_copies_destroyed_total",
			Help: "Domains destroyed by the epoch rule (older epoch, or the VM's record names another host)."}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "plasmavmc_agent_migrations_total",
			Help: "Live migrations sent by this host, by result (done, failed)."}, []string{"result"}),
	}
	reg.MustRegister(m.restarts, m.reconcile, m.leaseRenewals, m.leaseGrants, m.statusWrites, m.orphans,
		m.selfFences, m.watchdogPets, m.stale, m.migrations,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plasmavmc_agent_lease_fence_in_seconds",
			Help: "Time left before the host self-fences unless its lease is renewed (negative: past)."}, func() float64 {
			if a.leaseValidUntil.Load() == 0 {
				return 0
			}
			return time.Until(a.fenceAt()).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plasmavmc_agent_joined",
			Help: "1 while the host has joined (lease held, assigned VMs relisted) and may start VMs."}, func() float64 {
			return b2f(a.joined.Load())
		}),
		&vmCollector{a: a, desc: prometheus.NewDesc("plasmavmc_agent_vms",
			"VMs this agent handles, by observed state.", []string{"state"}, nil)},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plasmavmc_agent_informer_synced",
			Help: "1 once the informer of assigned VMs has listed them."}, func() float64 { return b2f(a.synced()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plasmavmc_agent_driver_connected",
			Help: "1 while the hypervisor driver holds a connection to libvirtd."}, func() float64 {
			d := a.drvReady.Load()
			return b2f(d != nil && d.Hypervisor != nil && d.Connected())
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "plasmavmc_agent_status_pending",
			Help: "ChainFire writes waiting to be (re)tried."}, func() float64 { return float64(a.writer.pendingCount()) }),
	)
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// vmCollector reports plasmavmc_agent_vms{state} from the workers' latest statuses.
type vmCollector struct {
	a    *agent
	desc *prometheus.Desc
}

func (c *vmCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *vmCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[pb.VMState]int{}
	for _, w := range c.a.workerList() {
		counts[w.observedState()]++
	}
	for s := pb.VMState_VM_STATE_STARTING; s <= pb.VMState_VM_STATE_UNKNOWN; s++ {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), stateName(s))
	}
}

// stateName is the lower-case short name of s ("running").
func stateName(s pb.VMState) string {
	n := s.String()
	const p = "VM_STATE_"
	if len(n) > len(p) {
		n = n[len(p):]
	}
	b := []byte(n)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
