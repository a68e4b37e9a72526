package federation

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/todeviced/todeviced/internal/matrix"
)

// eduOther is the type label of every EDU type but matrix.EDUDirectToDevice,
// matrix.EDUDeviceListUpdate and matrix.EDUSigningKeyUpdate, so a remote
// server cannot grow the label set.
const eduOther = "other"

// Drop reasons: the fixed values of the reason label of
// todeviced_federation_edus_dropped_total.
const (
	// DropRejected: the destination refused the transaction with the same
	// 4xx RejectAfter times in a row.
	DropRejected = "rejected"
	// DropExpired: queued for longer than the message TTL.
	DropExpired = "expired"
	// DropMalformed: an outbound EDU that cannot be signed (not canonical
	// JSON), or an inbound EDU of the wrong shape.
	DropMalformed = "malformed"
	// DropSenderNotOrigin: an inbound EDU whose sender is not of the origin.
	DropSenderNotOrigin = "sender_not_origin"
	// DropRecipientNotLocal: an inbound EDU addressed to users of other
	// servers.
	DropRecipientNotLocal = "recipient_not_local"
	// DropDuplicate: an inbound EDU whose (origin, message_id) was seen.
	DropDuplicate = "duplicate"
	// DropInvalidID: an inbound EDU whose sender, event type, message id
	// or a device id is not an identifier every store can hold (NUL or
	// other control characters, invalid UTF-8, too long).
	DropInvalidID = "invalid_id"
	// DropTooDeep: an inbound message whose content is nested deeper than
	// matrix.MaxContentDepth.
	DropTooDeep = "too_deep"
	// DropPoison: an outbound EDU that, sent alone, kept failing with the
	// same status while the destination took other transactions.
	DropPoison = "poison"
)

// Transaction results: the fixed values of the result label of
// todeviced_federation_transactions_total, one per outbound attempt.
const (
	ResultOK          = "ok"           // 2xx
	ResultRetry       = "retry"        // no answer, 5xx, 401, 408: retried with backoff
	ResultRateLimited = "rate_limited" // 429: retried after Retry-After
	ResultRejected    = "rejected"     // another 4xx: retried, dropped after RejectAfter in a row
)

// Metrics are the federation component's Prometheus metrics.
type Metrics struct {
	EDUsSent        *prometheus.CounterVec
	EDUsReceived    *prometheus.CounterVec
	EDUsDropped     *prometheus.CounterVec
	Transactions    *prometheus.CounterVec
	SendDuration    prometheus.Histogram
	BackingOff      prometheus.Gauge
	OutboxEDUs      prometheus.Gauge
	OutboxOldestAge prometheus.Gauge
}

// NewMetrics creates the federation metrics and registers them with reg
// (nil: unregistered, for tests).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		EDUsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_federation_edus_sent_total",
			Help: "EDUs delivered to other servers (their transaction was answered 200), by EDU type.",
		}, []string{"type"}),
		EDUsReceived: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_federation_edus_received_total",
			Help: "EDUs received from other servers (through /send or the internal API), by EDU type.",
		}, []string{"type"}),
		EDUsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_federation_edus_dropped_total",
			Help: "EDUs given up, outbound or inbound, by reason.",
		}, []string{"reason"}),
		Transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_federation_transactions_total",
			Help: "Attempts to send a transaction to another server, by result.",
		}, []string{"result"}),
		SendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "todeviced_federation_send_duration_seconds",
			Help:    "Time for one attempt to send a transaction, until the answer or the failure.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}),
		BackingOff: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_federation_destinations_backing_off",
			Help: "Destinations whose last attempt failed and whose backoff has not ended.",
		}),
		OutboxEDUs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_federation_outbox_edus",
			Help: "EDUs (to-device and device-list) queued for other servers (an estimate for large tables on PostgreSQL).",
		}),
		OutboxOldestAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_federation_outbox_oldest_age_seconds",
			Help: "Age of the oldest EDU queued for another server.",
		}),
	}
	for _, t := range []string{matrix.EDUDirectToDevice, matrix.EDUDeviceListUpdate, matrix.EDUSigningKeyUpdate, eduOther} {
		m.EDUsSent.WithLabelValues(t)
		m.EDUsReceived.WithLabelValues(t)
	}
	for _, r := range []string{DropRejected, DropExpired, DropMalformed, DropSenderNotOrigin, DropRecipientNotLocal, DropDuplicate,
		DropInvalidID, DropTooDeep, DropPoison} {
		m.EDUsDropped.WithLabelValues(r)
	}
	for _, r := range []string{ResultOK, ResultRetry, ResultRateLimited, ResultRejected} {
		m.Transactions.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.EDUsSent, m.EDUsReceived, m.EDUsDropped, m.Transactions, m.SendDuration,
			m.BackingOff, m.OutboxEDUs, m.OutboxOldestAge)
	}
	return m
}

// eduTypeLabel maps an EDU type to its label value.
func eduTypeLabel(t string) string {
	switch t {
	case matrix.EDUDirectToDevice, matrix.EDUDeviceListUpdate, matrix.EDUSigningKeyUpdate:
		return t
	}
	return eduOther
}
