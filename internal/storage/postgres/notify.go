package postgres

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/todeviced/todeviced/internal/wakeup"
)

// notifyChannel is the one channel every replica listens on.
const notifyChannel = "todeviced_wake"

// maxPayload stays under PostgreSQL's 8000-byte NOTIFY payload limit.
const maxPayload = 7900

// Listener timing.
const (
	// listenerPing bounds how long a silent LISTEN connection is trusted
	// before it is checked, so a half-open TCP connection is noticed.
	listenerPing = 30 * time.Second
	// listenerMaxBackoff caps reconnect backoff; while the listener is down
	// every waiter is woken at each attempt, so it is also the slow-poll
	// interval that covers for lost notifications.
	listenerMaxBackoff = 2 * time.Second
)

// A payload is the notifying replica's origin field ('r' and a random id,
// made when it opened the database), then the keys, space-separated. A
// replica's listener drops its own notifications: every commit it
// notifies, it also wakes its own waiters for at once (wakeLocal, on
// failure paths too), and the echo, arriving a moment later, would only
// make a long-poll that registered in between look at the store again
// for nothing, and make devicesync's quiet devices forget the device.
// Keys never start with 'r' (wakeup's are 'd', 'u' and 'o'); a payload
// without an origin (an older replica's) wakes its keys, and an older
// replica takes the origin field for a key nobody waits on.

// notifyPayloads packs wake-up keys into as few NOTIFY payloads as fit,
// each led by origin. Keys never contain spaces (user ids and server names
// cannot).
func notifyPayloads(origin string, keys []wakeup.Key) []string {
	var out []string
	var b strings.Builder
	for _, k := range keys {
		if b.Len() > 0 && b.Len()+1+len(k) > maxPayload {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteString(origin)
		}
		b.WriteByte(' ')
		b.WriteString(string(k))
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

// queueNotify adds the NOTIFYs for keys to a batch, to be sent with the
// transaction's last writes: one notification per transaction, split only
// when the payload would overflow.
func (db *DB) queueNotify(b *pgx.Batch, keys []wakeup.Key) {
	for _, p := range notifyPayloads(db.origin, keys) {
		b.Queue(`SELECT pg_notify('`+notifyChannel+`', $1)`, p)
	}
}

// notify sends the NOTIFYs for keys after a commit, outside any
// transaction (see inboxStore.Accept for why).
func (db *DB) notify(ctx context.Context, keys []wakeup.Key) {
	if len(keys) == 0 {
		return
	}
	b := &pgx.Batch{}
	db.queueNotify(b, keys)
	if err := db.pool.SendBatch(ctx, b).Close(); err != nil {
		db.notifyFailed(ctx, err)
	}
}

// notifyFailed reports a NOTIFY that failed after its transaction had
// committed. The rows are stored and this replica's waiters were woken; a
// waiter on another replica finds them when its long-poll next looks (at
// the latest when it times out and the client syncs again).
func (db *DB) notifyFailed(ctx context.Context, err error) {
	db.log.WarnContext(ctx, "waking other replicas failed; their long-polls see the committed messages when they next look", "err", err)
}

// parsePayload returns a payload's keys, and whether self (this replica's
// origin field) sent it.
func parsePayload(p, self string) (keys []wakeup.Key, own bool) {
	fields := strings.Fields(p)
	if len(fields) > 0 && strings.HasPrefix(fields[0], "r") {
		if fields[0] == self {
			return nil, true
		}
		fields = fields[1:]
	}
	keys = make([]wakeup.Key, len(fields))
	for i, f := range fields {
		keys[i] = wakeup.Key(f)
	}
	return keys, false
}

// listener holds one LISTEN connection per replica and wakes the hub.
type listener struct {
	url     string
	origin  string // this replica's payload origin: its own to drop
	hub     *wakeup.Hub
	log     *slog.Logger
	onState func(up bool)
}

func (l *listener) setState(up bool) {
	l.hub.SetDeaf(!up)
	if l.onState != nil {
		l.onState(up)
	}
}

func (l *listener) run(ctx context.Context) {
	const minBackoff = 50 * time.Millisecond
	backoff := minBackoff
	for ctx.Err() == nil {
		connected, err := l.listen(ctx)
		l.setState(false)
		if ctx.Err() != nil {
			return
		}
		if connected {
			backoff = minBackoff
		}
		l.log.WarnContext(ctx, "wake-up listener disconnected; waiters fall back to polling", "err", err, "retry_in", backoff.String())
		// Whatever was notified while we were away is lost: let every
		// waiter look for itself.
		l.hub.WakeAll()
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff/2 + rand.N(backoff/2+1)):
		}
		backoff = min(backoff*2, listenerMaxBackoff)
	}
}

// listen connects, listens, and dispatches notifications until the
// connection fails or ctx ends.
func (l *listener) listen(ctx context.Context) (connected bool, err error) {
	conn, err := pgx.Connect(ctx, l.url)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return false, err
	}
	// Notifications sent before LISTEN took effect were missed: every
	// waiter looks, and devicesync forgets its quiet devices. Only then is
	// the hub said to hear again, so nothing settled quiet before this
	// WakeAll is taken for current after it.
	l.hub.WakeAll()
	l.setState(true)
	l.log.InfoContext(ctx, "wake-up listener connected")
	for {
		wctx, cancel := context.WithTimeout(ctx, listenerPing)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return true, ctx.Err()
			}
			if wctx.Err() != nil {
				// Quiet for a while: make sure the connection still works.
				pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				err = conn.Ping(pctx)
				cancel()
				if err == nil {
					continue
				}
			}
			return true, err
		}
		if keys, own := parsePayload(n.Payload, l.origin); !own {
			l.hub.Wake(keys...)
		}
	}
}

// newOrigin is a replica's payload origin: 'r' and 64 random bits.
func newOrigin() string {
	return "r" + strconv.FormatUint(rand.Uint64(), 36)
}
