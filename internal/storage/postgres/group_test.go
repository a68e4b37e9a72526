package postgres_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage/postgres"
	"github.com/todeviced/todeviced/internal/testdb"
)

// TestGroupAccept drives many concurrent sends over overlapping devices, so
// that they are written in groups, with retries of the same txnId racing
// each other (inside one group and across groups), retries of transactions
// recorded long before, remote recipients, a fan-out large enough for COPY,
// and groups that fail before their commit. Every send must end exactly as
// a lone send would: each device gets each message once, in each sender's
// order; a retry gets the first answer and writes nothing; the outbox holds
// each remote EDU once.
func TestGroupAccept(t *testing.T) {
	ctx := context.Background()
	var failures atomic.Int32 // groups left to fail before their commit
	var groups atomic.Int32
	db, err := postgres.Open(ctx, postgres.Options{URL: testdb.New(t), Migrate: true,
		BeforeGroupCommit: func(context.Context, int) error {
			groups.Add(1)
			if failures.Add(-1) >= 0 {
				return errors.New("simulated failure before commit")
			}
			return nil
		}})
	require.NoError(t, err)
	defer db.Close()

	const bobDevices = postgres.CopyThreshold + 20 // "*" of bob alone is a COPY
	nids := map[string]int64{}
	put := func(user, dev string) {
		d, _, err := db.Devices().PutDevice(ctx, devicelists.PutDevice{UserID: user, DeviceID: dev})
		require.NoError(t, err)
		nids[user+"|"+dev] = d.NID
	}
	for i := range bobDevices {
		put("@bob:example.org", fmt.Sprintf("B%04d", i))
	}
	for i := range 6 {
		put("@carol:example.org", fmt.Sprintf("C%d", i))
	}
	store := db.Inbox()

	// A transaction recorded before the storm, retried during it.
	old := inbox.TxnKey{UserID: "@s0:example.org", DeviceID: "S", EventType: "m.test", TxnID: "old"}
	oldAccept, err := inbox.BuildAccept("example.org", old, inbox.Messages{"@carol:example.org": {"C0": []byte(`{"old":true}`)}})
	require.NoError(t, err)
	oldAccept.Response = []byte(`{"first":"old"}`)
	_, err = store.Accept(ctx, oldAccept)
	require.NoError(t, err)

	// Readers sync and acknowledge throughout the storm, as devices do: if a
	// group's rows could commit below a position a reader has already
	// acknowledged past, the acknowledgement would delete them unseen
	// (invariant 3) and the checks below would find them missing.
	type reader struct {
		user, dev string
		got       []string
		err       error
	}
	var readers []*reader
	for c := range 6 {
		readers = append(readers, &reader{user: "@carol:example.org", dev: fmt.Sprintf("C%d", c)})
	}
	for _, b := range []int{0, bobDevices / 2, bobDevices - 1} {
		readers = append(readers, &reader{user: "@bob:example.org", dev: fmt.Sprintf("B%04d", b)})
	}
	stop := make(chan struct{})
	var readersDone sync.WaitGroup
	for _, rd := range readers {
		readersDone.Go(func() {
			r := inbox.Recipient{UserID: rd.user, NID: nids[rd.user+"|"+rd.dev]}
			var lo, hi int64 // acknowledged (lo, hi], as a device's since would say
			for {
				stopping := false
				select {
				case <-stop:
					stopping = true
				default:
				}
				res, err := store.Sync(ctx, inbox.SyncQuery{Device: r, AckLo: lo, AckHi: hi, Limit: 100})
				if err != nil {
					rd.err = err
					return
				}
				for _, m := range res.Messages {
					rd.got = append(rd.got, string(m.Content))
				}
				if len(res.Messages) > 0 {
					lo, hi = hi, res.Messages[len(res.Messages)-1].Pos
				} else if stopping {
					return // everything sent before stop has been read
				} else {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}

	const senders, sendsEach = 12, 25
	failures.Store(2)
	type outcome struct {
		res inbox.AcceptResult
		err error
	}
	results := make([][][]outcome, senders) // sender, send, copy
	var oldRetry outcome
	var wg sync.WaitGroup
	for g := range senders {
		results[g] = make([][]outcome, sendsEach)
		wg.Go(func() {
			for j := range sendsEach {
				msgs := inbox.Messages{
					"@carol:example.org":  {fmt.Sprintf("C%d", (g+j)%6): []byte(fmt.Sprintf(`{"g":%d,"j":%d}`, g, j)), "NOPE": []byte(`{}`)},
					"@nobody:example.org": {"X": []byte(`{}`)},
					"@x:remote.test":      {"R": []byte(fmt.Sprintf(`{"g":%d,"j":%d}`, g, j))},
				}
				if j%5 == 0 {
					msgs["@bob:example.org"] = map[string]json.RawMessage{"*": []byte(fmt.Sprintf(`{"g":%d,"j":%d}`, g, j))}
				}
				txn := inbox.TxnKey{UserID: fmt.Sprintf("@s%d:example.org", g), DeviceID: "S", EventType: "m.test", TxnID: fmt.Sprint(j)}
				copies := 1
				if j%3 == 0 {
					copies = 3 // the same txnId three times at once
				}
				results[g][j] = make([]outcome, copies)
				var inner sync.WaitGroup
				for c := range copies {
					inner.Go(func() {
						a, err := inbox.BuildAccept("example.org", txn, msgs)
						if err == nil {
							a.Response = []byte(fmt.Sprintf(`{"g":%d,"j":%d,"copy":%d}`, g, j, c))
							var res inbox.AcceptResult
							res, err = store.Accept(ctx, a)
							results[g][j][c] = outcome{res, err}
						} else {
							results[g][j][c] = outcome{err: err}
						}
					})
				}
				if g == 0 && j == 7 {
					inner.Go(func() {
						a := *oldAccept
						a.Response = []byte(`{"second":"old"}`)
						oldRetry.res, oldRetry.err = store.Accept(ctx, &a)
					})
				}
				inner.Wait()
			}
		})
	}
	wg.Wait()
	close(stop)
	readersDone.Wait()
	nGroups, nGrouped := db.SendGroups()
	require.Positive(t, nGroups, "sends were written in groups")
	require.GreaterOrEqual(t, nGrouped, 2*nGroups, "a group holds two sends or more")
	require.Positive(t, groups.Load())
	require.LessOrEqual(t, failures.Load(), int32(0), "the failing groups happened")

	require.NoError(t, oldRetry.err)
	require.True(t, oldRetry.res.Duplicate)
	require.JSONEq(t, `{"first":"old"}`, string(oldRetry.res.Response), "a retry gets the recorded answer")

	// Each send: exactly one copy wrote, the others got its answer.
	for g := range senders {
		for j := range sendsEach {
			var firsts []inbox.AcceptResult
			for _, o := range results[g][j] {
				require.NoError(t, o.err)
				if !o.res.Duplicate {
					firsts = append(firsts, o.res)
				}
			}
			require.Len(t, firsts, 1, "send %d/%d written once", g, j)
			f := firsts[0]
			wantDelivered := 1
			if j%5 == 0 {
				wantDelivered += bobDevices
			}
			require.Equal(t, wantDelivered, f.Delivered)
			require.Equal(t, 2, f.Unknown, "NOPE and @nobody")
			require.Equal(t, 1, f.Queued)
			for _, o := range results[g][j] {
				require.JSONEq(t, string(f.Response), string(o.res.Response), "every copy answers what the first answered")
			}
		}
	}

	// Each device: each sender's messages once, in send order.
	for _, rd := range readers {
		require.NoError(t, rd.err)
		var want func(g, j int) bool
		if rd.user == "@bob:example.org" {
			want = func(_, j int) bool { return j%5 == 0 }
		} else {
			c := int(rd.dev[1] - '0')
			want = func(g, j int) bool { return (g+j)%6 == c }
		}
		next := make([]int, senders)
		for _, content := range rd.got {
			var g, j int
			if _, err := fmt.Sscanf(content, `{"g":%d,"j":%d}`, &g, &j); err != nil {
				continue // the old transaction's message
			}
			for next[g] < sendsEach && !want(g, next[g]) {
				next[g]++
			}
			require.Equal(t, next[g], j, "%s %s: sender %d out of order, twice or lost", rd.user, rd.dev, g)
			next[g]++
		}
		for g := range senders {
			for next[g] < sendsEach && !want(g, next[g]) {
				next[g]++
			}
			require.Equal(t, sendsEach, next[g], "%s %s: sender %d's last messages missing", rd.user, rd.dev, g)
		}
	}

	var edus, dests int
	require.NoError(t, db.Pool().QueryRow(ctx, `SELECT count(*) FROM todevice_outbox WHERE destination = 'remote.test'`).Scan(&edus))
	require.NoError(t, db.Pool().QueryRow(ctx, `SELECT count(*) FROM todevice_outbox_destinations WHERE destination = 'remote.test'`).Scan(&dests))
	require.Equal(t, senders*sendsEach, edus, "each remote message queued once")
	require.Equal(t, 1, dests)
}
