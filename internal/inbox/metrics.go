package inbox

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Drop reasons: the fixed set of values of the reason label of
// todeviced_messages_dropped_total.
const (
	DropUnknownDevice = "unknown_device" // no such local user or device at accept time
	DropDeviceDeleted = "device_deleted" // purged with its deleted device
	DropExpired       = "expired"        // pending longer than the inbox maximum age
	// DropUndeliverable: stored content no answer can carry (rows written
	// before the door checked depth), skipped at sync time.
	DropUndeliverable = "undeliverable"
	// DropInboxFull: trimmed from an inbox over --inbox-max-messages
	// (TrimInboxes).
	DropInboxFull = "inbox_full"
)

// Origins: values of the origin label of todeviced_messages_enqueued_total.
const (
	OriginLocal      = "local"
	OriginFederation = "federation"
)

// Metrics are the inbox's Prometheus metrics.
type Metrics struct {
	Enqueued      *prometheus.CounterVec
	Delivered     prometheus.Counter
	Acknowledged  prometheus.Counter
	Dropped       *prometheus.CounterVec
	Forwarded     prometheus.Counter
	Pending       prometheus.Gauge
	OldestAge     prometheus.Gauge
	DeliveryDelay prometheus.Histogram
	Duplicates    prometheus.Counter
}

// NewMetrics creates the inbox metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_messages_enqueued_total",
			Help: "To-device messages written to local device inboxes, by where they came from.",
		}, []string{"origin"}),
		Delivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_messages_delivered_total",
			Help: "To-device messages handed out in sync responses (a message re-sent after a lost response counts again).",
		}),
		Acknowledged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_messages_acknowledged_total",
			Help: "To-device messages deleted because their device acknowledged them with the next since token.",
		}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_messages_dropped_total",
			Help: "To-device messages dropped without delivery, by reason.",
		}, []string{"reason"}),
		Forwarded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_messages_forwarded_total",
			Help: "To-device messages for users of other servers written to the federation outbox.",
		}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_inbox_pending_messages",
			Help: "Messages waiting in device inboxes (an estimate for large tables on PostgreSQL).",
		}),
		OldestAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_inbox_oldest_pending_age_seconds",
			Help: "Age of the oldest message waiting in any device inbox.",
		}),
		DeliveryDelay: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "todeviced_delivery_delay_seconds",
			Help:    "Time from accepting a message to handing it out in a sync response.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60, 600, 3600, 86400},
		}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_send_duplicates_total",
			Help: "sendToDevice retries answered from the transaction record without enqueuing again.",
		}),
	}
	for _, o := range []string{OriginLocal, OriginFederation} {
		m.Enqueued.WithLabelValues(o)
	}
	for _, r := range []string{DropUnknownDevice, DropDeviceDeleted, DropExpired, DropUndeliverable, DropKeyRequestRateLimited, DropInboxFull} {
		m.Dropped.WithLabelValues(r)
	}
	for _, r := range staleReasons {
		m.Dropped.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.Enqueued, m.Delivered, m.Acknowledged, m.Dropped, m.Forwarded,
			m.Pending, m.OldestAge, m.DeliveryDelay, m.Duplicates)
	}
	return m
}
