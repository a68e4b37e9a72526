package storage

import (
	"database/sql"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// PoolStats is a snapshot of a backend's connection pool, in terms every
// backend can fill: pgxpool's Stat on PostgreSQL, database/sql's DBStats on
// SQLite. Counters are cumulative since the pool was opened.
type PoolStats struct {
	MaxConns     int64 // 0: unlimited (database/sql's default)
	Acquired     int64 // connections handed out and not yet returned
	Idle         int64 // open connections waiting in the pool
	Constructing int64 // connections being opened
	// Acquires counts successful acquisitions; AcquiresKnown is false where
	// the pool does not count them (database/sql counts only waits).
	Acquires      int64
	AcquiresKnown bool
	// EmptyAcquires counts acquisitions that had to wait because no idle
	// connection was available, and AcquireWait is the time they waited: the
	// pair that shows a pool too small for its load.
	EmptyAcquires int64
	AcquireWait   time.Duration
	// CanceledAcquires counts acquisitions given up because their context
	// ended first (only pgxpool counts them).
	CanceledAcquires      int64
	CanceledAcquiresKnown bool
}

// PoolStatser is implemented by backends that have a connection pool. It is
// an optional interface beside Backend, so a backend without a pool (or one
// still being written) needs nothing, and the server needs no knowledge of
// the backend's type to export pool metrics.
type PoolStatser interface {
	PoolStats() PoolStats
}

// PoolStats reads pgxpool's statistics (a cheap snapshot under the pool's
// lock, no database round trip).
func (b pgBackend) PoolStats() PoolStats {
	s := b.Pool().Stat()
	return PoolStats{
		MaxConns:              int64(s.MaxConns()),
		Acquired:              int64(s.AcquiredConns()),
		Idle:                  int64(s.IdleConns()),
		Constructing:          int64(s.ConstructingConns()),
		Acquires:              s.AcquireCount(),
		AcquiresKnown:         true,
		EmptyAcquires:         s.EmptyAcquireCount(),
		AcquireWait:           s.EmptyAcquireWaitTime(),
		CanceledAcquires:      s.CanceledAcquireCount(),
		CanceledAcquiresKnown: true,
	}
}

// PoolStats reads the SQLite read pool's statistics.
func (b sqliteBackend) PoolStats() PoolStats { return PoolStatsFromDB(b.ReaderStats()) }

// PoolStatsFromDB maps database/sql's statistics onto PoolStats, for
// backends built on database/sql (SQLite). database/sql has no
// "constructing" state and counts only the acquisitions that waited.
func PoolStatsFromDB(s sql.DBStats) PoolStats {
	return PoolStats{
		MaxConns:      int64(s.MaxOpenConnections),
		Acquired:      int64(s.InUse),
		Idle:          int64(s.Idle),
		EmptyAcquires: s.WaitCount,
		AcquireWait:   s.WaitDuration,
	}
}

// poolCollector exports a backend's pool statistics, read at scrape time:
// the pool keeps the numbers anyway, so there is nothing to update on the
// hot path and a scrape always sees the current state.
type poolCollector struct {
	src                                              PoolStatser
	conns, maxConns, acquires, wait, empty, canceled *prometheus.Desc
}

// NewPoolCollector returns a collector of src's pool statistics, to be
// registered on the server's registry.
func NewPoolCollector(src PoolStatser) prometheus.Collector {
	return &poolCollector{
		src: src,
		conns: prometheus.NewDesc("todeviced_db_pool_connections",
			"Database connections in the pool, by state (acquired: in use; idle; constructing: being opened).",
			[]string{"state"}, nil),
		maxConns: prometheus.NewDesc("todeviced_db_pool_max_connections",
			"Largest number of connections the database pool may open.", nil, nil),
		acquires: prometheus.NewDesc("todeviced_db_pool_acquires_total",
			"Connections acquired from the database pool.", nil, nil),
		wait: prometheus.NewDesc("todeviced_db_pool_acquire_wait_seconds_total",
			"Time spent waiting for a database connection because none was idle.", nil, nil),
		empty: prometheus.NewDesc("todeviced_db_pool_empty_acquires_total",
			"Acquisitions that had to wait for a database connection because none was idle.", nil, nil),
		canceled: prometheus.NewDesc("todeviced_db_pool_canceled_acquires_total",
			"Acquisitions abandoned because the request ended before a database connection was free.", nil, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.conns, c.maxConns, c.acquires, c.wait, c.empty, c.canceled} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.PoolStats()
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.Acquired), "acquired")
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.Idle), "idle")
	ch <- prometheus.MustNewConstMetric(c.conns, prometheus.GaugeValue, float64(s.Constructing), "constructing")
	ch <- prometheus.MustNewConstMetric(c.maxConns, prometheus.GaugeValue, float64(s.MaxConns))
	ch <- prometheus.MustNewConstMetric(c.wait, prometheus.CounterValue, s.AcquireWait.Seconds())
	ch <- prometheus.MustNewConstMetric(c.empty, prometheus.CounterValue, float64(s.EmptyAcquires))
	// A counter the pool does not keep is left out rather than exported as
	// a constant 0 that would read as "no acquisitions".
	if s.AcquiresKnown {
		ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.Acquires))
	}
	if s.CanceledAcquiresKnown {
		ch <- prometheus.MustNewConstMetric(c.canceled, prometheus.CounterValue, float64(s.CanceledAcquires))
	}
}
