package server_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/testdb"
)

// benchCiphertext makes each device's message the size of an Olm-encrypted
// room key share (0.5–2 KiB in practice), distinct per device as real ones
// are.
var benchCiphertext = strings.Repeat("A", 480)

// BenchmarkFanOut100 measures messages per second delivered to 100 devices of
// one user, end to end: sendToDevice requests over HTTP (8 concurrent
// clients, every request addressing all 100 devices by id) until every
// message is in a device inbox. "local" has the devices on the sending
// server; "federated" has them on another todeviced (own database, signed
// HTTP over loopback), so the figure includes the outbox, the sender's
// transactions of up to 100 EDUs, signing and verification, and storage on
// the receiving side.
//
//	go test -run XXX -bench FanOut100 -benchtime 200x ./internal/server/
func BenchmarkFanOut100(b *testing.B) {
	backends := []struct {
		name string
		db   func(b *testing.B) string
	}{
		{"postgres", func(b *testing.B) string { return testdb.New(b) }},
		{"sqlite", func(b *testing.B) string { return "sqlite:" + filepath.Join(b.TempDir(), "todeviced.db") }},
	}
	for _, be := range backends {
		for _, federated := range []bool{false, true} {
			name := be.name + "/local"
			if federated {
				name = be.name + "/federated"
			}
			b.Run(name, func(b *testing.B) { benchmarkFanOut100(b, func() string { return be.db(b) }, federated) })
		}
	}
}

func benchmarkFanOut100(b *testing.B, db func() string, federated bool) {
	a, rcv := pair(b, db, nil)
	target := a
	user := "@bob:a.test"
	if federated {
		target, user = rcv, bob
	}
	devices := make([]string, 100)
	for i := range devices {
		devices[i] = fmt.Sprintf("D%03d", i)
		target.device(user, devices[i])
	}
	aliceTok := a.device(alice, "A1")
	// SQLite counts exactly; PostgreSQL's Backlog estimates large
	// tables, so count there directly.
	delivered := func() int {
		bl, err := target.srv.Backend().Inbox().Backlog(context.Background())
		require.NoError(b, err)
		return int(bl.Pending)
	}
	if strings.HasPrefix(target.cfg.DatabaseURL, "postgres") {
		conn, err := pgx.Connect(context.Background(), target.cfg.DatabaseURL)
		require.NoError(b, err)
		defer conn.Close(context.Background())
		delivered = func() int {
			var n int
			require.NoError(b, conn.QueryRow(context.Background(), `SELECT count(*) FROM device_inbox`).Scan(&n))
			return n
		}
	}

	const clients = 8
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				msgs := map[string]any{}
				for _, d := range devices {
					msgs[d] = map[string]any{"algorithm": "m.olm.v1.curve25519-aes-sha2", "n": i, "ciphertext": benchCiphertext}
				}
				a.send(aliceTok, fmt.Sprint("bench", i), map[string]map[string]any{user: msgs})
			}
		})
	}
	wg.Wait()
	want := 100 * b.N
	for delivered() < want {
		time.Sleep(2 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	require.Equal(b, want, delivered(), "every message once")
	b.ReportMetric(float64(want)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(0, "ns/op")
}
