package inbox

// Position is where a device's reader stands in its inbox. Every message of
// the device at or below Lo was deleted before the position was handed out;
// the next sync acknowledges (deletes) the messages in (Lo, Hi] and reads above
// Hi. Carrying Lo lets the acknowledgement scan only the delivered range
// instead of every dead index entry below it. The tokens that carry positions
// to clients are made and read by internal/devicesync.
type Position struct {
	NID int64
	Lo  int64
	Hi  int64
}

// Acked is the position after p has been acknowledged: nothing left to delete.
func (p Position) Acked() Position { return Position{NID: p.NID, Lo: p.Hi, Hi: p.Hi} }
