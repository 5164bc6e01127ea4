package bus

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the bus's Prometheus collectors. Build them once per process with
// NewMetrics; they are safe for concurrent use.
type Metrics struct {
	Subscribers          *prometheus.GaugeVec // by mode: window, history, snapshot
	SubscribersTotal     prometheus.Counter
	SubscriberLag        prometheus.Histogram
	MaxLag               prometheus.Gauge
	SlowConsumerCuts     *prometheus.CounterVec // by reason
	Ended                *prometheus.CounterVec // by code
	EventsIn             prometheus.Counter
	RevisionsIn          prometheus.Counter
	MessagesOut          *prometheus.CounterVec // by kind: events, bookmark, snapshot
	EventsOut            prometheus.Counter
	UpstreamRestarts     prometheus.Counter
	WindowResets         prometheus.Counter
	UpstreamLagRevisions prometheus.Gauge
	UpstreamLagSeconds   prometheus.Gauge
	Head, Floor          prometheus.Gauge
	WindowRevisions      prometheus.Gauge
	WindowEvents         prometheus.Gauge
	HistoryReads         prometheus.Counter

	// MessagesOut's children, resolved once: a label lookup per send showed in profiles.
	sentEvents, sentBookmarks, sentSnapshots prometheus.Counter
}

// messagesOut returns MessagesOut's counter for kind.
func (m *Metrics) messagesOut(kind string) prometheus.Counter {
	switch kind {
	case "events":
		return m.sentEvents
	case "bookmark":
		return m.sentBookmarks
	case "snapshot":
		return m.sentSnapshots
	}
	return m.MessagesOut.WithLabelValues(kind)
}

// NewMetrics creates the collectors and registers them with reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Subscribers: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "watchbus_subscribers",
			Help: "Open subscriptions, by mode (window: live or replay from memory; history: catching up from ChainFire; snapshot: sending the initial state)."}, []string{"mode"}),
		SubscribersTotal: prometheus.NewCounter(prometheus.CounterOpts{Name: "watchbus_subscriptions_total",
			Help: "Subscriptions accepted."}),
		SubscriberLag: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "watchbus_subscriber_lag_revisions",
			Help:    "Queue depth of window-mode subscribers (revisions behind the head), sampled by the sweeper.",
			Buckets: []float64{0, 1, 4, 16, 64, 256, 1024, 4096, 16384}}),
		MaxLag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "watchbus_subscriber_lag_max_revisions",
			Help: "Largest queue depth of any window-mode subscriber at the last sweep."}),
		SlowConsumerCuts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "watchbus_slow_consumer_cuts_total",
			Help: "Subscribers ended with ResourceExhausted, by reason (queue_full, stalled_send, evicted)."}, []string{"reason"}),
		Ended: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "watchbus_subscriptions_ended_total",
			Help: "Subscriptions ended, by Connect code (canceled: the client left)."}, []string{"code"}),
		EventsIn: prometheus.NewCounter(prometheus.CounterOpts{Name: "watchbus_upstream_events_total",
			Help: "Events received from the upstream ChainFire watch."}),
		RevisionsIn: prometheus.NewCounter(prometheus.CounterOpts{Name: "watchbus_upstream_revisions_total",
			Help: "Revisions received from the upstream ChainFire watch."}),
		MessagesOut: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "watchbus_messages_sent_total",
			Help: "Messages sent to subscribers, by kind (events, bookmark, snapshot)."}, []string{"kind"}),
		EventsOut: prometheus.NewCounter(prometheus.CounterOpts{Name: "watchbus_events_sent_total",
			Help: "Events sent to subscribers (an event sent to N subscribers counts N)."}),
		UpstreamRestarts: prometheus.NewCounter(prometheus.CounterOpts{Name: "watchbus_upstream_restarts_total",
			Help: "Times the upstream watch was re-created (server cancel or compaction). Stream failovers inside the ChainFire client are not counted: see chainfire client logs."}),
		WindowResets: prometheus.NewCounter(prometheus.CounterOpts{Name: "watchbus_window_resets_total",
			Help: "Times ChainFire compacted past the upstream's resume point and the window was reset."}),
		UpstreamLagRevisions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "watchbus_upstream_lag_revisions",
			Help: "ChainFire's revision minus the window head at the last probe."}),
		UpstreamLagSeconds: prometheus.NewGauge(prometheus.GaugeOpts{Name: "watchbus_upstream_lag_seconds",
			Help: "How long ago ChainFire was first seen at a revision the window has not reached (0: caught up)."}),
		Head: prometheus.NewGauge(prometheus.GaugeOpts{Name: "watchbus_window_head_revision",
			Help: "Newest revision in the window."}),
		Floor: prometheus.NewGauge(prometheus.GaugeOpts{Name: "watchbus_window_floor_revision",
			Help: "Revisions above this one are all in the window."}),
		WindowRevisions: prometheus.NewGauge(prometheus.GaugeOpts{Name: "watchbus_window_revisions",
			Help: "Revisions held in the window."}),
		WindowEvents: prometheus.NewGauge(prometheus.GaugeOpts{Name: "watchbus_window_events",
			Help: "Events held in the window."}),
		HistoryReads: prometheus.NewCounter(prometheus.CounterOpts{Name: "watchbus_history_reads_total",
			Help: "Subscriptions that started below the window and were served from ChainFire's history."}),
	}
	m.sentEvents = m.MessagesOut.WithLabelValues("events")
	m.sentBookmarks = m.MessagesOut.WithLabelValues("bookmark")
	m.sentSnapshots = m.MessagesOut.WithLabelValues("snapshot")
	if reg != nil {
		reg.MustRegister(m.Subscribers, m.SubscribersTotal, m.SubscriberLag, m.MaxLag, m.SlowConsumerCuts, m.Ended,
			m.EventsIn, m.RevisionsIn, m.MessagesOut, m.EventsOut, m.UpstreamRestarts, m.WindowResets,
			m.UpstreamLagRevisions, m.UpstreamLagSeconds, m.Head, m.Floor, m.WindowRevisions, m.WindowEvents,
			m.HistoryReads)
	}
	return m
}
