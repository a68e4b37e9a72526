package inbox

import (
	"context"
	"fmt"
)

// tombstoneBatch is how many deleted devices PurgeDeleted reads at once.
const tombstoneBatch = 100

// DeletedDevices lists the devices deleted but whose inboxes may still hold
// rows (their tombstones), and forgets one once its inbox is empty. The
// device registry keeps them; the wiring hands them to the inbox through
// this interface so the inbox needs nothing of the registry.
type DeletedDevices interface {
	// Tombstones returns at most limit deleted devices still to purge.
	Tombstones(ctx context.Context, limit int) ([]Recipient, error)
	// ForgetTombstone removes the tombstone of a device whose inbox was
	// purged.
	ForgetTombstone(ctx context.Context, nid int64) error
}

// PurgeDeleted empties the inboxes of every deleted device (PurgeDevice,
// in bounded batches) and then forgets each, until none is left. A run cut
// short (an error, a crash) is finished by the next: a tombstone is
// forgotten only after its inbox is empty.
func (s *Service) PurgeDeleted(ctx context.Context, deleted DeletedDevices) error {
	for {
		tombs, err := deleted.Tombstones(ctx, tombstoneBatch)
		if err != nil {
			return fmt.Errorf("listing deleted devices: %w", err)
		}
		for _, d := range tombs {
			if err := s.PurgeDevice(ctx, d); err != nil {
				return err
			}
			if err := deleted.ForgetTombstone(ctx, d.NID); err != nil {
				return fmt.Errorf("forgetting deleted device %d: %w", d.NID, err)
			}
		}
		if len(tombs) < tombstoneBatch {
			return nil
		}
	}
}
