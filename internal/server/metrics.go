package server

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/todeviced/todeviced/internal/storage"
)

// metrics of the process itself.
type serverMetrics struct {
	longPolls   prometheus.Gauge
	listenerUp  prometheus.Gauge
	inboxMaxAge prometheus.Gauge
	dbReady     prometheus.Gauge
	heapTrims   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, version, databaseURL string) *serverMetrics {
	if version == "" {
		version = "dev"
	}
	backend, _ := storage.Kind(databaseURL) // validated already
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "todeviced_build_info",
		Help:        "Always 1; its labels say which build runs, on which backend (join on it to label other series).",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version(), "backend": backend},
	})
	buildInfo.Set(1)
	m := &serverMetrics{
		longPolls: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_longpolls_active",
			Help: "Sync requests waiting for messages or device-list changes.",
		}),
		listenerUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_listener_up",
			Help: "1 when the wake-up listener (LISTEN/NOTIFY) is connected; while 0, waiters fall back to polling.",
		}),
		inboxMaxAge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_inbox_max_age_seconds",
			Help: "--inbox-max-age: messages pending longer are dropped (0: kept forever). Alerts compare the oldest pending message with it.",
		}),
		dbReady: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "todeviced_database_ready",
			Help: "1 when the database answers and its schema is migrated (what /readyz checks), refreshed every 15 s.",
		}),
		heapTrims: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "todeviced_heap_trims_total",
			Help: "Garbage collections run early because the process went quiet holding more than twice its live heap (after a burst such as thousands of clients connecting at once), so the memory goes back to the system.",
		}),
	}
	reg.MustRegister(buildInfo, m.longPolls, m.listenerUp, m.inboxMaxAge, m.dbReady, m.heapTrims,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}
