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

// Metrics are the device-list component's Prometheus metrics.
type Metrics struct {
	changes     *prometheus.CounterVec
	memberships prometheus.Counter
}

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
	}
	for _, k := range []string{ChangeNewDevice, ChangeDeviceUpdate, ChangeDeletedDevice, ChangeCrossSigning, ChangeEncryption, ChangeRemote} {
		m.changes.WithLabelValues(k)
	}
	if reg != nil {
		reg.MustRegister(m.changes, m.memberships)
	}
	return m
}
