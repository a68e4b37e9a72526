package inbox

import (
	"context"
	"time"
)

// Database is what a storage backend provides for the inbox's upkeep (the
// use cases off the hot path: purging a deleted device, expiry, pruning,
// backlogs, the outbox as federation drains it): its statements (Queries)
// and two ways to run them. The use cases are written once, in Upkeep; the
// accept path and the sync stay per backend (Store), where each dialect's
// fastest way to write and read rows lives. Each call of a Database method
// is one database call.
type Database interface {
	// Each runs fn's statements, each atomic on its own, no transaction
	// needed around them (PostgreSQL runs them on the pool; SQLite, whose
	// writes all go through one writer, in one write transaction).
	Each(ctx context.Context, fn func(context.Context, Queries) error) error
	// Read runs fn's statements, which only read.
	Read(ctx context.Context, fn func(context.Context, Queries) error) error
}

// Queue names the inbox's two queues for the statements that measure them.
type Queue int

// The queues.
const (
	// DeviceInbox holds the pending messages of local devices.
	DeviceInbox Queue = iota
	// ToDeviceOutbox holds the EDUs waiting for other servers.
	ToDeviceOutbox
)

// Queries are the inbox upkeep's statements, each one SQL statement.
type Queries interface {
	// PurgeDeviceRows deletes up to limit inbox rows of the device with a
	// position above after, lowest first, and returns their positions.
	PurgeDeviceRows(ctx context.Context, d Recipient, after int64, limit int) ([]int64, error)
	// PruneTxns deletes up to limit transaction records created before
	// cutoff.
	PruneTxns(ctx context.Context, cutoff time.Time, limit int) (int, error)
	// ExpireMessages deletes up to limit messages accepted before cutoff,
	// oldest first.
	ExpireMessages(ctx context.Context, cutoff time.Time, limit int) (int, error)
	// PruneInboundDedupe deletes up to limit deduplication records received
	// before cutoff.
	PruneInboundDedupe(ctx context.Context, cutoff time.Time, limit int) (int, error)

	// EstimateRows reads the database's estimate of the queue's rows; ok is
	// false when the backend keeps no statistics to estimate from.
	EstimateRows(ctx context.Context, q Queue) (n int64, ok bool, err error)
	// CountRows counts the queue's rows, at most upTo (0: all).
	CountRows(ctx context.Context, q Queue, upTo int64) (int64, error)
	// Oldest reads when the queue's oldest row was queued (zero if none).
	Oldest(ctx context.Context, q Queue) (time.Time, error)

	// PeekOutbox reads up to limit EDUs queued for destination, oldest
	// first.
	PeekOutbox(ctx context.Context, destination string, limit int) ([]QueuedEDU, error)
	// DeleteOutbox deletes exactly the EDUs of destination at positions.
	DeleteOutbox(ctx context.Context, destination string, positions []int64) (int, error)
	// ExpireOutbox deletes up to limit EDUs queued before cutoff, oldest
	// first, except those a stored federation transaction covers, and
	// returns the destination of each.
	ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]string, error)
	// OutboxDestinations lists the destinations with EDUs queued.
	OutboxDestinations(ctx context.Context) ([]string, error)

	// InboxSummary counts the device's pending messages and reads when the
	// oldest was accepted (nil if none).
	InboxSummary(ctx context.Context, d Recipient) (int64, *time.Time, error)
	// InboxCountsByType and InboxCountsBySender count the device's pending
	// messages by type and by sender, largest first, at most limit keys.
	InboxCountsByType(ctx context.Context, d Recipient, limit int) ([]KeyCount, error)
	InboxCountsBySender(ctx context.Context, d Recipient, limit int) ([]KeyCount, error)
	// UserInboxes lists the user's live devices with their inbox sizes, by
	// device id.
	UserInboxes(ctx context.Context, userID string) ([]InboxSize, error)
	// LargestInboxes lists the limit largest inboxes of live or deleted
	// devices, largest first.
	LargestInboxes(ctx context.Context, limit int) ([]InboxSize, error)
	// PurgeInboxRows deletes up to limit of the device's messages matching
	// f, lowest positions first, and returns how many it deleted.
	PurgeInboxRows(ctx context.Context, d Recipient, f PurgeFilter, limit int) (int, error)
}
