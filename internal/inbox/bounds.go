package inbox

import (
	"context"
	"fmt"
)

// DropFirst are the event types a full inbox loses first: key requests,
// secret requests and verification steps. They are requests for an answer
// that a device returning after a long time is least likely to still owe,
// and a client re-sends them when it still wants one (MSC3944's reasoning);
// room keys and other content are what the device came back for.
var DropFirst = []string{
	"m.room_key_request", "m.secret.request",
	"m.key.verification.request", "m.key.verification.ready", "m.key.verification.start",
	"m.key.verification.accept", "m.key.verification.key", "m.key.verification.mac",
	"m.key.verification.done", "m.key.verification.cancel",
}

// trimScan is how many of the largest inboxes one housekeeping run looks at;
// an inbox over the cap that is not among them is trimmed in a later run.
const trimScan = 100

// TrimInboxes brings every inbox over MaxMessages back to it (the
// --inbox-max-messages bound, off when 0). What goes: first the inbox's
// requests and verification steps (DropFirst), oldest first; then, if that
// is not enough, its oldest messages of any type. Nothing is refused at the
// door: a sender cannot know a recipient's backlog, and refusing a room-key
// share because one of its hundred recipients is full would fail the other
// ninety-nine. Deleting pending rows never moves positions (invariant 3): a
// device that was handed a trimmed message has it, and its acknowledgement
// deletes the rest as usual. It returns how many messages it dropped,
// counted under DropInboxFull.
func (s *Service) TrimInboxes(ctx context.Context) (int, error) {
	limit := s.cfg.MaxMessages
	if limit <= 0 {
		return 0, nil
	}
	sizes, err := s.cfg.Store.LargestInboxes(ctx, trimScan)
	if err != nil {
		return 0, fmt.Errorf("finding inboxes over the cap: %w", err)
	}
	total := 0
	for _, sz := range sizes {
		if sz.Count <= int64(limit) {
			break // largest first: the rest are within the cap
		}
		d := Recipient{UserID: sz.UserID, NID: sz.NID}
		excess := int(sz.Count - int64(limit))
		dropped, err := s.trim(ctx, d, excess)
		total += dropped
		s.m.Dropped.WithLabelValues(DropInboxFull).Add(float64(dropped))
		if dropped > 0 {
			s.log.WarnContext(ctx, "dropped messages of an inbox over --inbox-max-messages", "user_id", sz.UserID,
				"device_nid", sz.NID, "messages", dropped, "max_messages", limit)
		}
		if err != nil {
			return total, fmt.Errorf("trimming an inbox over the cap: %w", err)
		}
	}
	return total, nil
}

// trim deletes up to excess of d's messages, DropFirst types before the
// rest, each oldest first, in batches of at most pruneBatch.
func (s *Service) trim(ctx context.Context, d Recipient, excess int) (int, error) {
	dropped := 0
	for _, f := range append(dropFirstFilters(), PurgeFilter{}) {
		for excess > 0 {
			n, err := s.cfg.Store.PurgeInbox(ctx, d, f, min(excess, pruneBatch))
			dropped += n
			excess -= n
			if err != nil {
				return dropped, err
			}
			if n < min(excess+n, pruneBatch) {
				break // nothing more of this filter
			}
		}
	}
	return dropped, nil
}

func dropFirstFilters() []PurgeFilter {
	fs := make([]PurgeFilter, len(DropFirst))
	for i, t := range DropFirst {
		fs[i] = PurgeFilter{Type: t}
	}
	return fs
}
