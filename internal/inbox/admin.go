package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// The administrator's view of the inboxes (the admin API): what a device
// has pending and by whom, the devices of a user, the largest inboxes, and
// purges of one device's messages. Purges delete by device and, optionally,
// by type or sender; they never touch another device's rows and never wake
// anyone: a waiting long-poll keeps waiting, and a client's next since
// acknowledges what is left exactly as before (a purged row is as if
// delivered).

// KeyCount is a number of messages sharing one key (a type or a sender).
type KeyCount struct {
	Key   string `json:"key"`
	Count int64  `json:"count"`
}

// InboxStats describes one device's pending messages.
type InboxStats struct {
	Count int64
	// Oldest is when the oldest pending message was accepted (nil if none).
	Oldest   *time.Time
	ByType   []KeyCount
	BySender []KeyCount
}

// InboxSize is the size of one device's inbox.
type InboxSize struct {
	UserID   string
	DeviceID string
	NID      int64
	Count    int64
	Oldest   *time.Time
}

// PurgeFilter narrows a purge of one device's inbox: empty fields match
// everything.
type PurgeFilter struct {
	Type   string
	Sender string
}

// MaxAdminList bounds the lists the admin API reads (largest inboxes,
// counts by key).
const MaxAdminList = 1000

// ErrBadFilter is returned for a purge filter that names both a type and a
// sender: purges are by one key or of everything.
var ErrBadFilter = errors.New("purge by type or by sender, not both")

// InboxStats reads one device's pending messages.
func (u Upkeep) InboxStats(ctx context.Context, d Recipient) (InboxStats, error) {
	var st InboxStats
	err := u.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		st = InboxStats{}
		if st.Count, st.Oldest, err = q.InboxSummary(ctx, d); err != nil {
			return err
		}
		if st.ByType, err = q.InboxCountsByType(ctx, d, MaxAdminList); err != nil {
			return err
		}
		st.BySender, err = q.InboxCountsBySender(ctx, d, MaxAdminList)
		return err
	})
	if err != nil {
		return InboxStats{}, fmt.Errorf("reading inbox stats: %w", err)
	}
	return st, nil
}

// UserInboxes lists a user's live devices with their inbox sizes.
func (u Upkeep) UserInboxes(ctx context.Context, userID string) ([]InboxSize, error) {
	var out []InboxSize
	err := u.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		out, err = q.UserInboxes(ctx, userID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading a user's inboxes: %w", err)
	}
	return out, nil
}

// LargestInboxes lists the limit largest inboxes, largest first. It counts
// every pending row: an administrator's question, never asked on a path.
func (u Upkeep) LargestInboxes(ctx context.Context, limit int) ([]InboxSize, error) {
	var out []InboxSize
	err := u.db.Read(ctx, func(ctx context.Context, q Queries) (err error) {
		out, err = q.LargestInboxes(ctx, limit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading the largest inboxes: %w", err)
	}
	return out, nil
}

// PurgeInbox deletes up to limit of the device's messages matching f,
// lowest positions first, and returns how many it deleted.
func (u Upkeep) PurgeInbox(ctx context.Context, d Recipient, f PurgeFilter, limit int) (int, error) {
	return u.each(ctx, "purging an inbox", func(ctx context.Context, q Queries) (int, error) {
		return q.PurgeInboxRows(ctx, d, f, limit)
	})
}

// AdminInbox reads one device's pending messages for the admin API.
func (s *Service) AdminInbox(ctx context.Context, d Recipient) (InboxStats, error) {
	return s.cfg.Store.InboxStats(ctx, d)
}

// AdminUserInboxes lists a user's devices with their inbox sizes.
func (s *Service) AdminUserInboxes(ctx context.Context, userID string) ([]InboxSize, error) {
	return s.cfg.Store.UserInboxes(ctx, userID)
}

// AdminLargestInboxes lists the limit largest inboxes (at most
// MaxAdminList).
func (s *Service) AdminLargestInboxes(ctx context.Context, limit int) ([]InboxSize, error) {
	return s.cfg.Store.LargestInboxes(ctx, min(max(limit, 1), MaxAdminList))
}

// AdminPurge deletes the device's messages matching f, in batches of
// purgeBatch (no batch holds locks long or bloats one transaction), and
// returns how many it deleted.
func (s *Service) AdminPurge(ctx context.Context, d Recipient, f PurgeFilter) (int, error) {
	if f.Type != "" && f.Sender != "" {
		return 0, ErrBadFilter
	}
	total := 0
	for {
		n, err := s.cfg.Store.PurgeInbox(ctx, d, f, purgeBatch)
		total += n
		if err != nil {
			return total, err
		}
		if n < purgeBatch {
			return total, nil
		}
	}
}
