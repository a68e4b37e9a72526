package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The baseline answers "how fast could the database take these rows if
// todeviced cost nothing?". To be a fair comparison it writes the same rows
// into the same table, so the same indexes (primary key and pos) and the
// same autovacuum settings apply:
//
//   - one COPY per send of the HTTP phase, Fanout rows each, each its own
//     transaction (and commit), as each sendToDevice is;
//   - from as many connections as there were senders;
//   - same user ids, sender, type and content sizes; the device_nid is the
//     negated nid of the real recipient, which no device has (nids are
//     positive identities), so no syncer ever sees these rows and the index
//     keys spread over the same users as the real ones.
//
// It leaves out what todeviced does on top: HTTP and JSON, authentication,
// the send_txns row, locking the recipients' device rows, NOTIFY. The rows
// are deleted afterwards.
func (r *Runner) baseline(ctx context.Context, sends int64, maxDur time.Duration) (_ *BaselineReport, err error) {
	if sends == 0 {
		return &BaselineReport{}, nil
	}
	pc, err := pgxpool.ParseConfig(r.cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parsing --database-url: %w", err)
	}
	pc.MaxConns = int32(r.cfg.Senders)
	pc.MinConns = int32(r.cfg.Senders)
	pc.ConnConfig.RuntimeParams["application_name"] = "todeviced-load-baseline"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("connecting to the database: %w", err)
	}
	defer pool.Close()

	nids, err := r.deviceNIDs(ctx, pool)
	if err != nil {
		return nil, err
	}
	users := make([]string, 0, r.cfg.Users)
	for _, d := range r.devices {
		if len(users) == 0 || users[len(users)-1] != d.userID {
			users = append(users, d.userID)
		}
	}
	defer func() {
		// Delete even when the run was interrupted: these rows belong to no
		// device and nothing else would ever remove them.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
		defer cancel()
		if _, derr := pool.Exec(dctx, `DELETE FROM device_inbox WHERE user_id = ANY($1) AND device_nid < 0`, users); derr != nil {
			err = errors.Join(err, fmt.Errorf("deleting baseline rows: %w", derr))
		}
	}()

	// Connect every worker before the clock starts.
	var warm sync.WaitGroup
	for range r.cfg.Senders {
		warm.Add(1)
		go func() {
			defer warm.Done()
			_ = pool.Ping(ctx)
		}()
	}
	warm.Wait()

	ctx, cancel := context.WithTimeoutCause(ctx, maxDur, errBaselineTime)
	defer cancel()
	var claimed, done atomic.Int64
	errs := make(chan error, r.cfg.Senders)
	start := time.Now()
	var wg sync.WaitGroup
	for s := range r.cfg.Senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- r.baselineWorker(ctx, pool, s, nids, func() bool { return claimed.Add(1) <= sends }, &done)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for werr := range errs {
		if werr != nil && !errors.Is(context.Cause(ctx), errBaselineTime) {
			return nil, werr
		}
	}
	n := done.Load()
	b := &BaselineReport{Sends: n, Rows: n * int64(r.cfg.Fanout), Seconds: elapsed.Seconds()}
	if s := elapsed.Seconds(); s > 0 {
		b.SendsPerSec = float64(n) / s
		b.RowsPerSec = float64(b.Rows) / s
	}
	return b, err
}

// errBaselineTime ends a baseline that would take longer than the HTTP
// phase did: the rate is measured well by then.
var errBaselineTime = errors.New("baseline time is up")

func (r *Runner) deviceNIDs(ctx context.Context, pool *pgxpool.Pool) ([]int64, error) {
	users := make([]string, len(r.devices))
	devs := make([]string, len(r.devices))
	for i, d := range r.devices {
		users[i], devs[i] = d.userID, d.deviceID
	}
	rows, err := pool.Query(ctx, `
		SELECT d.nid FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w(u, dev, i)
		JOIN devices d ON d.user_id = w.u AND d.device_id = w.dev AND d.deleted_at IS NULL
		ORDER BY w.i`, users, devs)
	if err != nil {
		return nil, fmt.Errorf("reading device nids: %w", err)
	}
	nids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("reading device nids: %w", err)
	}
	if len(nids) != len(r.devices) {
		return nil, fmt.Errorf("found %d of the run's %d devices in the database: is --database-url todeviced's database?", len(nids), len(r.devices))
	}
	return nids, nil
}

func (r *Runner) baselineWorker(ctx context.Context, pool *pgxpool.Pool, s int, nids []int64, claim func() bool, done *atomic.Int64) error {
	cfg := r.cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(s)))
	perm := make([]uint32, len(r.devices))
	for i := range perm {
		perm[i] = uint32(i)
	}
	recipients := make([]uint32, cfg.Fanout)
	sender := r.devices[r.senderDevice(s)].userID
	rows := make([][]any, cfg.Fanout)
	columns := []string{"user_id", "device_nid", "sender", "type", "content"}
	for seq := uint32(0); claim(); seq++ {
		for k := range cfg.Fanout {
			j := k + rng.IntN(len(perm)-k)
			perm[k], perm[j] = perm[j], perm[k]
		}
		copy(recipients, perm[:cfg.Fanout])
		slices.Sort(recipients)
		now := time.Now().UnixNano()
		for i, d := range recipients {
			content := appendContent(nil, r.runID, MsgID{Sender: uint32(s), Seq: seq, Device: d}, now, cfg.MessageBytes, r.pad)
			rows[i] = []any{r.devices[d].userID, -nids[d], sender, EventType, content}
		}
		if _, err := pool.CopyFrom(ctx, pgx.Identifier{"device_inbox"}, columns, pgx.CopyFromRows(rows)); err != nil {
			return fmt.Errorf("copying baseline rows: %w", err)
		}
		done.Add(1)
	}
	return nil
}
