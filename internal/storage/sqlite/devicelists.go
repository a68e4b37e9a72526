package sqlite

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/storage/sqlstmt"
)

// The device-list stream needs no lock of its own, where PostgreSQL takes an
// advisory lock: every writer of the stream runs inside db.write, which holds
// the one writer connection for the whole transaction. Positions are
// therefore taken and committed in the same order (invariant 3 for this
// stream): a reader that saw position P never sees a lower position commit
// later.

// queryer is what both a transaction and the reader pool offer.
type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// queryStrings runs a query of one text column and returns its values.
func queryStrings(ctx context.Context, q queryer, query string, args ...any) ([]string, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// eachChunk calls fn with the "(?,?,…)" list and arguments of each chunk of
// values, so an IN list of any length stays far below SQLite's limit on
// bound parameters.
func eachChunk(values []string, fn func(in string, args []any) error) error {
	for chunk := range slices.Chunk(values, maxRowsPerStatement) {
		args := make([]any, len(chunk))
		for i, v := range chunk {
			args[i] = v
		}
		if err := fn(placeholders(1, len(chunk)), args); err != nil {
			return err
		}
	}
	return nil
}

// memberships returns the stored memberships of room of the users in ms.
func memberships(ctx context.Context, tx *sql.Tx, roomID string, ms []devicelists.Membership) (map[string]string, error) {
	args := make([]any, 0, 1+len(ms))
	args = append(args, roomID)
	for _, m := range ms {
		args = append(args, m.UserID)
	}
	rows, err := tx.QueryContext(ctx, `
		SELECT user_id, membership FROM room_members
		WHERE room_id = ? AND user_id IN `+placeholders(1, len(ms)), args...)
	if err != nil {
		return nil, err
	}
	return userMemberships(rows, len(ms))
}

// userMemberships reads rows of (user_id, membership) into a map.
func userMemberships(rows *sql.Rows, n int) (map[string]string, error) {
	defer rows.Close()
	out := make(map[string]string, n)
	for rows.Next() {
		var u, m string
		if err := rows.Scan(&u, &m); err != nil {
			return nil, err
		}
		out[u] = m
	}
	return out, rows.Err()
}

// upsertMemberships writes the memberships, each only if it is newer than
// the stored one, and returns the users whose row it inserted or updated,
// with their membership now.
func upsertMemberships(ctx context.Context, tx *sql.Tx, roomID string, ms []devicelists.Membership) (map[string]string, error) {
	args := make([]any, 0, 5*len(ms))
	for _, m := range ms {
		args = append(args, roomID, m.UserID, m.Membership, m.StreamOrdering, m.Local)
	}
	rows, err := tx.QueryContext(ctx, `
		INSERT INTO room_members (room_id, user_id, membership, stream_ordering, is_local)
		VALUES `+placeholders(len(ms), 5)+`
		ON CONFLICT (room_id, user_id) DO UPDATE SET
			membership = excluded.membership, stream_ordering = excluded.stream_ordering, is_local = excluded.is_local
		WHERE room_members.stream_ordering < excluded.stream_ordering
		RETURNING user_id, membership`, args...)
	if err != nil {
		return nil, err
	}
	return userMemberships(rows, len(ms))
}

// streamStateSQL is sqlstmt.StreamState, which the inbox store runs inside
// /sync's read.
var streamStateSQL = sqlstmt.StreamState.SQL(sqlstmt.SQLite)

// LocalKeys reads, in one snapshot, every live device of the users asked
// for whole and the named devices of the others, then orders them by user
// and device (byte order, SQLite's BINARY collation).
func (s *deviceStore) LocalKeys(ctx context.Context, query map[string][]string) ([]devicelists.DeviceKeys, error) {
	type pair struct{ user, device string }
	var allOf []string
	var exact []pair
	seen := map[pair]bool{}
	for u, devs := range query {
		if len(devs) == 0 {
			allOf = append(allOf, u)
		}
		for _, d := range devs {
			if p := (pair{u, d}); !seen[p] {
				seen[p] = true
				exact = append(exact, p)
			}
		}
	}
	var out []devicelists.DeviceKeys
	scan := func(tx *sql.Tx, query string, args []any) error {
		rows, err := tx.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var d devicelists.DeviceKeys
			var name sql.NullString
			var keys []byte
			if err := rows.Scan(&d.UserID, &d.DeviceID, &name, &keys); err != nil {
				return err
			}
			d.DisplayName = name.String
			if keys != nil {
				d.Keys = keys
			}
			out = append(out, d)
		}
		return rows.Err()
	}
	err := s.db.read(ctx, func(tx *sql.Tx) error {
		err := eachChunk(allOf, func(in string, args []any) error {
			return scan(tx, `
				SELECT user_id, device_id, display_name, keys FROM devices
				WHERE deleted_at IS NULL AND user_id IN `+in, args)
		})
		if err != nil {
			return err
		}
		for chunk := range slices.Chunk(exact, maxRowsPerStatement) {
			args := make([]any, 0, 2*len(chunk))
			for _, p := range chunk {
				args = append(args, p.user, p.device)
			}
			// The VALUES list drives the join: one index probe per device.
			if err := scan(tx, `
				SELECT d.user_id, d.device_id, d.display_name, d.keys
				FROM (VALUES `+placeholders(len(chunk), 2)+`) AS r
				JOIN devices d ON d.user_id = r.column1 AND d.device_id = r.column2
				WHERE d.deleted_at IS NULL`, args); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading device keys: %w", err)
	}
	// A user is asked for either whole or by device, and the named devices
	// are deduplicated, so no device was read twice.
	slices.SortFunc(out, func(a, b devicelists.DeviceKeys) int {
		return cmp.Or(cmp.Compare(a.UserID, b.UserID), cmp.Compare(a.DeviceID, b.DeviceID))
	})
	return out, nil
}

// LockStream does nothing: the writer's turn is all the ordering the
// stream needs (see above).
func (deviceTx) LockStream(context.Context) error { return nil }

// UpsertMemberships reads the stored memberships of the updated users, then
// upserts the updates, a chunk at a time; the upsert's WHERE ignores an
// update whose stream ordering is not newer than the stored one, and
// RETURNING names the rows it did change. Writers take turns, so nothing
// changes the rows between the read and the upsert.
func (t deviceTx) UpsertMemberships(ctx context.Context, roomID string, ms []devicelists.Membership) ([]devicelists.MembershipChange, error) {
	var out []devicelists.MembershipChange
	for chunk := range slices.Chunk(ms, maxRowsPerStatement) {
		before, err := memberships(ctx, t.tx, roomID, chunk)
		if err != nil {
			return nil, fmt.Errorf("reading memberships: %w", err)
		}
		after, err := upsertMemberships(ctx, t.tx, roomID, chunk)
		if err != nil {
			return nil, fmt.Errorf("storing memberships: %w", err)
		}
		// In the caller's order (by user), as the positions are taken.
		for _, m := range chunk {
			if cur, ok := after[m.UserID]; ok {
				out = append(out, devicelists.MembershipChange{UserID: m.UserID, Before: before[m.UserID], Now: cur})
			}
		}
	}
	return out, nil
}
