package storage

import "github.com/prometheus/client_golang/prometheus"

// SendGrouper is implemented by backends that write concurrent sends
// together in one transaction: PostgreSQL's group accept, SQLite's group
// commit. Like PoolStatser it is optional beside Backend.
type SendGrouper interface {
	// SendGroups reports how many groups of two or more sends were written,
	// and how many sends they held, since the backend was opened.
	SendGroups() (groups, sends int64)
}

// SendGroups reads PostgreSQL's group-accept counters.
func (b pgBackend) SendGroups() (groups, sends int64) { return b.DB.SendGroups() }

// SendGroups reads SQLite's group-commit counters for sends.
func (b sqliteBackend) SendGroups() (groups, sends int64) { return b.DB.SendGroups() }

// NewSendGroupCollectors exports a SendGrouper's counters: their ratio is
// the mean group size, and sends outside groups are the difference to
// todeviced_http_requests_total for the sendToDevice route.
func NewSendGroupCollectors(g SendGrouper) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "todeviced_send_groups_total",
			Help: "Groups of two or more sendToDevice requests written in one transaction (sends that arrived while others were being written).",
		}, func() float64 { g, _ := g.SendGroups(); return float64(g) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "todeviced_send_grouped_total",
			Help: "sendToDevice requests written as part of a group of two or more.",
		}, func() float64 { _, s := g.SendGroups(); return float64(s) }),
	}
}
