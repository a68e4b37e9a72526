package inbox

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// AllDevices is the device id that addresses every device of a user.
const AllDevices = "*"

// TxnKey identifies one sendToDevice request for deduplication: the spec's
// "same path from the same device".
type TxnKey struct {
	UserID    string
	DeviceID  string
	EventType string
	TxnID     string
}

// LocalMessage is one message for a device of a local user. DeviceID is
// AllDevices when the message goes to every device the user has at accept time.
type LocalMessage struct {
	UserID   string
	DeviceID string
	Content  json.RawMessage
}

// OutboundEDU is one m.direct_to_device EDU for a remote server, built and
// given its message_id at accept time so that later batching never changes it.
type OutboundEDU struct {
	Destination string
	MessageID   string
	// EDU is the complete EDU object: {"edu_type": ..., "content": ...}.
	EDU json.RawMessage
	// Messages is how many device messages the EDU carries (for metrics).
	Messages int
}

// Accept is a validated sendToDevice request, ready to store atomically.
type Accept struct {
	Txn       TxnKey
	Sender    string
	EventType string
	// Local is sorted by (UserID, DeviceID).
	Local []LocalMessage
	// Remote is sorted by Destination, EDUs of one destination in order.
	Remote []OutboundEDU
	// Response is the body recorded for the transaction and returned to retries.
	Response []byte
	// Unaddressable counts messages dropped before storage: "*" next to
	// other device ids is just a device id nobody has.
	Unaddressable int
	// Stale is true when a local message has an MSC3944 rule (stale.go):
	// only then does the accept path look at pending messages.
	Stale bool
	// Guard, when set, is checked in the transaction that records the send
	// (see SenderGuard).
	Guard *SenderGuard
}

// SenderGuard is the access token a sendToDevice was made with, for a send
// that started on a device remembered for the token without a round trip to
// check it (DESIGN invariant 9). The store records the send only if the
// token still names the live device NID (devices.token_hash), checked in the
// statement that records the transaction; otherwise it writes nothing for
// the send and Accept returns ErrTokenRevoked.
type SenderGuard struct {
	NID       int64
	TokenHash []byte
}

// AcceptResult says what storing an Accept did.
type AcceptResult struct {
	// Duplicate is true when the transaction was already recorded; nothing
	// was enqueued and Response is the recorded answer.
	Duplicate bool
	Response  []byte
	// Delivered counts inbox rows written, Unknown local messages dropped
	// because their user or device does not exist, Queued outbox EDUs written.
	Delivered int
	Unknown   int
	Queued    int
	// Dropped counts messages the MSC3944 rules dropped, by reason: pending
	// ones and new ones (see PlanStale).
	Dropped map[string]int
}

// Recipient is one incarnation of a local device as the inbox addresses it.
// NID changes when a device is deleted and created again with the same id.
type Recipient struct {
	UserID string
	NID    int64
}

// Message is one pending inbox row.
type Message struct {
	Pos        int64
	Sender     string
	Type       string
	Content    json.RawMessage
	EnqueuedAt time.Time
}

// SyncQuery acknowledges the device's messages in (AckLo, AckHi] and fetches
// up to Limit messages above AckHi, oldest first. An AckHi above the highest
// position the inbox ever issued (to any device) is refused with
// ErrNotIssued before anything is deleted: no such since was handed out, and
// honouring it would delete messages never delivered and hide the next ones.
//
// A client's /sync check is this one query, one round trip on PostgreSQL:
// besides the messages it reads what the check needs of other packages'
// tables (the device-list head, the key counts) and checks the access token
// it was made with (TokenHash).
type SyncQuery struct {
	Device Recipient
	AckLo  int64
	AckHi  int64
	Limit  int
	// DeviceListHead also reads the head of the device-list stream (before
	// the messages), saving /sync a round trip of its own.
	DeviceListHead bool
	// KeyCounts also reads the device's one-time-key counts and unused
	// fallback key types, which every /sync answers.
	KeyCounts bool
	// TokenHash, when set, is the hash of the access token the sync was
	// made with, and guards everything the query does: unless the token
	// still names the live device (devices.token_hash, read in the
	// acknowledgement's own statement), nothing is deleted, nothing read
	// is returned, and Sync returns ErrTokenRevoked. This lets /sync start
	// on a device remembered for the token without a round trip to check
	// it first (DESIGN invariant 9). Nil means the caller has checked
	// (the internal API, a token the homeserver vouched for).
	TokenHash []byte
}

// OneTimeKeyCounts are a device's one-time-key counts, as a sync reads them
// with its messages (devicelists owns the keys; the inbox only carries the
// read).
type OneTimeKeyCounts struct {
	// OneTimeKeys counts the unclaimed one-time keys by algorithm (never
	// nil when read).
	OneTimeKeys map[string]int
	// UnusedFallback lists the algorithms with an unused fallback key,
	// sorted.
	UnusedFallback []string
}

// SyncResult is the answer to a SyncQuery.
type SyncResult struct {
	Messages []Message
	// More is true when messages beyond the returned ones are pending.
	More bool
	// Acked is how many messages the acknowledgement deleted.
	Acked int
	// DeviceListHead is the device-list stream's head, when asked for.
	DeviceListHead int64
	// KeyCounts are the device's counts, when asked for.
	KeyCounts OneTimeKeyCounts
}

// RemoteAccept is one m.direct_to_device EDU from another server, validated
// and ready to store atomically with its deduplication record.
type RemoteAccept struct {
	// Origin is the authenticated server the EDU came from; with MessageID
	// it is the deduplication key.
	Origin    string
	MessageID string
	Sender    string
	EventType string
	// Local is sorted by (UserID, DeviceID); every user is local.
	Local []LocalMessage
	// Unaddressable counts messages dropped before storage ("*" next to
	// other device ids).
	Unaddressable int
	// Stale is as in Accept.
	Stale bool
}

// DestinationCount is a number of outbox EDUs of one destination.
type DestinationCount struct {
	Destination string
	Count       int
}

// CountByDestination counts a list of destinations, in order of first
// appearance.
func CountByDestination(dests []string) []DestinationCount {
	var out []DestinationCount
	idx := map[string]int{}
	for _, d := range dests {
		i, ok := idx[d]
		if !ok {
			i = len(out)
			idx[d] = i
			out = append(out, DestinationCount{Destination: d})
		}
		out[i].Count++
	}
	return out
}

// OutboxSource names the to-device outbox among the EDU sources a federation
// transaction draws from (stored with the positions a transaction covers).
const OutboxSource = "todevice"

// QueuedEDU is an EDU waiting in the federation outbox.
type QueuedEDU struct {
	Pos         int64
	Destination string
	MessageID   string
	EDU         json.RawMessage
	EnqueuedAt  time.Time
}

// Backlog summarises the pending messages of every inbox.
type Backlog struct {
	// Pending is the number of pending messages; backends may estimate it
	// for large tables rather than count every row.
	Pending int64
	// Oldest is when the oldest pending message was accepted (zero if none).
	Oldest time.Time
}

// ErrDeviceGone is returned by Sync when the device was deleted.
var ErrDeviceGone = errors.New("device deleted")

// ErrNotIssued is returned by Sync when AckHi is above every position the
// inbox has issued: a since this server never handed out.
var ErrNotIssued = errors.New("inbox position never issued")

// ErrTokenRevoked is returned by Sync when SyncQuery.TokenHash, and by
// Accept when Accept.Guard, no longer names the device (the device was
// deleted or given another token): the sync or send did nothing.
var ErrTokenRevoked = errors.New("access token revoked")

// Store is the persistence the inbox needs. Each method is one atomic unit;
// backends implement it in sql/<dialect> terms and are checked by the shared
// conformance suite (internal/storage/storetest).
type Store interface {
	// Epoch is the random id made when the database schema was created.
	Epoch() string

	// Accept records the transaction, every local inbox row and every
	// outbox EDU in one database transaction, or nothing. Writers to one
	// device serialize on that device's row (taken in a fixed order), so a
	// reader never sees a message commit below a position it already read.
	// It wakes waiters of the devices and destinations it wrote to.
	Accept(ctx context.Context, a *Accept) (AcceptResult, error)

	// Sync acknowledges and fetches as SyncQuery says. It returns, first
	// of these that applies: ErrTokenRevoked (having deleted nothing) when
	// the query's TokenHash does not name the live device; ErrNotIssued
	// (having deleted nothing) for an AckHi above every position issued;
	// ErrDeviceGone if the device no longer exists. The checks ride in
	// the sync's own round trip.
	Sync(ctx context.Context, q SyncQuery) (SyncResult, error)

	// PurgeDevice deletes up to limit inbox rows of a deleted device with a
	// position above after, and returns how many it deleted and the highest
	// position deleted (the next call's after).
	PurgeDevice(ctx context.Context, d Recipient, after int64, limit int) (deleted int, last int64, err error)

	// PruneTxns deletes up to limit transaction records created before cutoff.
	PruneTxns(ctx context.Context, cutoff time.Time, limit int) (int, error)

	// ExpireMessages deletes up to limit messages accepted before cutoff,
	// oldest first.
	ExpireMessages(ctx context.Context, cutoff time.Time, limit int) (int, error)

	// Backlog reports the pending messages.
	Backlog(ctx context.Context) (Backlog, error)

	// PeekOutbox returns up to limit EDUs queued for destination, oldest
	// first, without removing them.
	PeekOutbox(ctx context.Context, destination string, limit int) ([]QueuedEDU, error)

	// AcceptRemote stores EDUs from other servers (the to-device EDUs of
	// one transaction) in one database transaction, in order. For each it
	// inserts the (origin, message_id) deduplication record first (a
	// conflict, with a stored record or an earlier EDU of the batch, means a
	// duplicate: nothing more is stored for it and its result says
	// Duplicate), then the recipients are locked and expanded exactly as
	// Accept does, the inbox rows inserted and their waiters woken.
	// results[i] is batch[i]'s.
	AcceptRemote(ctx context.Context, batch []*RemoteAccept) (results []AcceptResult, err error)

	// PruneInboundDedupe deletes up to limit deduplication records received
	// before cutoff.
	PruneInboundDedupe(ctx context.Context, cutoff time.Time, limit int) (int, error)

	// DeleteOutbox deletes exactly the outbox EDUs of destination at the
	// given positions (never a range) and returns how many it deleted:
	// positions already gone, or of another destination, are skipped.
	DeleteOutbox(ctx context.Context, destination string, positions []int64) (int, error)

	// ExpireOutbox deletes up to limit outbox EDUs queued before cutoff,
	// oldest first, except those a stored federation transaction covers
	// (that transaction expires as a whole). It returns the counts by
	// destination.
	ExpireOutbox(ctx context.Context, cutoff time.Time, limit int) ([]DestinationCount, error)

	// OutboxDestinations lists the destinations with EDUs queued.
	OutboxDestinations(ctx context.Context) ([]string, error)

	// OutboxBacklog reports the queued EDUs of every destination (Pending may
	// be an estimate for large tables) and when the oldest was queued.
	OutboxBacklog(ctx context.Context) (Backlog, error)

	// InboxStats reads one device's pending messages (admin).
	InboxStats(ctx context.Context, d Recipient) (InboxStats, error)
	// UserInboxes lists a user's live devices with their inbox sizes (admin).
	UserInboxes(ctx context.Context, userID string) ([]InboxSize, error)
	// LargestInboxes lists the limit largest inboxes, largest first (admin).
	LargestInboxes(ctx context.Context, limit int) ([]InboxSize, error)
	// PurgeInbox deletes up to limit of one device's messages matching f,
	// lowest positions first, never another device's (admin).
	PurgeInbox(ctx context.Context, d Recipient, f PurgeFilter, limit int) (int, error)
}

// Hooks lets tests stop a store at interesting points. Production code leaves
// every field nil.
type Hooks struct {
	// BeforeAcceptCommit runs inside Accept's database transaction, after
	// every row is written and before the commit. An error it returns rolls
	// the transaction back, as a crash before the commit would.
	BeforeAcceptCommit func(ctx context.Context, a *Accept) error
	// BeforeAcceptRemoteCommit is the same for AcceptRemote.
	BeforeAcceptRemoteCommit func(ctx context.Context, batch []*RemoteAccept) error
}
