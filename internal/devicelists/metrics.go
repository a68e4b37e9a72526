package devicelists

import "github.com/prometheus/client_golang/prometheus"

// Kinds of device-list change: the fixed values of the kind label.
const (
	ChangeNewDevice     = "new_device"
	ChangeDeviceUpdate  = "device_update"
	ChangeDeletedDevice = "deleted_device"
	ChangeCrossSigning  = "cross_signing"
	ChangeEncryption    = "room_encrypted"
	ChangeRemote        = "remote_update"
)

// Results of resyncs: the fixed values of the result label of
// todeviced_device_list_resyncs_total.
const (
	ResyncOK     = "ok"
	ResyncFailed = "failed"
)

// Metrics are the device-list component's Prometheus metrics.
type Metrics struct {
	changes     *prometheus.CounterVec
	memberships prometheus.Counter
	received    *prometheus.CounterVec
	resyncs     *prometheus.CounterVec
	remoteUsers prometheus.Gauge

	keysUploaded   *prometheus.CounterVec
	keysClaimed    prometheus.Counter
	keysExhausted  prometheus.Counter
	fallbackServed prometheus.Counter
}

// Kinds of uploaded key: the fixed values of the kind label of
// todeviced_e2e_keys_uploaded_total.
const (
	KeyOneTime  = "one_time"
	KeyFallback = "fallback"
)

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_device_list_changes_total",
			Help: "Device-list changes recorded, by kind.",
		}, []string{"kind"}),
		memberships: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_room_membership_updates_total",
			Help: "Room membership updates that took effect (older or repeated ones are ignored).",
		}),
		received: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_device_list_updates_received_total",
			Help: "Device-list EDUs (m.device_list_update, m.signing_key_update) from other servers, by what became of them.",
		}, []string{"result"}),
		resyncs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_device_list_resyncs_total",
			Help: "Fetches of a remote user's whole device list (GET /user/devices), by result.",
		}, []string{"result"}),
		remoteUsers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_device_list_remote_users",
			Help: "Remote users whose device list is cached (they share an encrypted room with a local user).",
		}),
		keysUploaded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "todeviced_e2e_keys_uploaded_total",
			Help: "One-time and fallback keys accepted by /keys/upload, by kind (one_time, fallback).",
		}, []string{"kind"}),
		keysClaimed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_one_time_keys_claimed_total",
			Help: "One-time keys of local devices handed out by claims (each exactly once).",
		}),
		keysExhausted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_one_time_keys_exhausted_total",
			Help: "Claims of a local device that found no one-time key of the algorithm left (answered with the fallback key, or nothing).",
		}),
		fallbackServed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_fallback_keys_served_total",
			Help: "Claims of a local device answered with its fallback key.",
		}),
	}
	for _, k := range []string{KeyOneTime, KeyFallback} {
		m.keysUploaded.WithLabelValues(k)
	}
	for _, k := range []string{ChangeNewDevice, ChangeDeviceUpdate, ChangeDeletedDevice, ChangeCrossSigning, ChangeEncryption, ChangeRemote} {
		m.changes.WithLabelValues(k)
	}
	for _, r := range []RemoteOutcome{RemoteApplied, RemoteResync, RemoteIgnored, RemoteRejected} {
		m.received.WithLabelValues(string(r))
	}
	for _, r := range []string{ResyncOK, ResyncFailed} {
		m.resyncs.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.changes, m.memberships, m.received, m.resyncs, m.remoteUsers,
			m.keysUploaded, m.keysClaimed, m.keysExhausted, m.fallbackServed)
	}
	return m
}
