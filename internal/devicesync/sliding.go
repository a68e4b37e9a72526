package devicesync

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// This file is the sliding-sync half of devicesync (MSC4186's to_device and
// e2ee extensions, issue 17): the extensions of one request for one device
// (Extensions), used by the client route for extension-only connections and
// by the internal route a homeserver's own sliding sync calls, and the
// stateless connection position (pos) of the client route.

// CodeUnknownPos is MSC4186's error for a pos the server cannot continue
// from (400): the client drops its connection state and starts over.
const CodeUnknownPos matrix.Code = "M_UNKNOWN_POS"

// PosMaxAge is how long a pos stays good after it was issued. A live
// connection gets a fresh pos on every answer; one idle for longer starts
// over, its e2ee answer then re-fetching every tracked user's keys.
const PosMaxAge = 7 * 24 * time.Hour

// posClockSkew is how far in the future an issue time may lie (replicas'
// clocks differ).
const posClockSkew = 5 * time.Minute

// MaxToDeviceLimit caps the to_device extension's limit (as Synapse does).
const MaxToDeviceLimit = inbox.DefaultSyncLimit

// ToDeviceExtension is a to_device extension that is enabled.
type ToDeviceExtension struct {
	// Since is the extension's since: a to-device token "EPOCH_NID_LO_HI"
	// (the internal /sync's), or a client /sync token "EPOCH_NID_LO_HI_POS"
	// (the classic /sync's next_batch, and what this extension issues).
	// Empty starts from the oldest pending message.
	Since string
	// Limit bounds the events, 1 to MaxToDeviceLimit (0: the maximum).
	Limit int
}

// ExtensionsRequest is what one sliding-sync request asks of one device's
// to-device inbox and device lists.
type ExtensionsRequest struct {
	Device inbox.Recipient
	// ToDevice is nil when the to_device extension is not enabled.
	ToDevice *ToDeviceExtension
	// E2EE is true when the e2ee extension is enabled.
	E2EE bool
	// Lists is where the e2ee device_lists start (the connection's previous
	// position); its zero value (a new connection) gives no device_lists.
	Lists ListsSince
	// Timeout is how long to wait for a to-device message (when ToDevice is
	// set), a device-list change (when E2EE is set and Lists incremental)
	// or a change of the device's one-time-key counts (when E2EE is set).
	Timeout time.Duration
}

// ToDeviceResult is the to_device extension's answer.
type ToDeviceResult struct {
	// NextBatch is a client /sync token: the next since of this extension
	// and of the classic /sync alike (one inbox, one acknowledgement).
	NextBatch string
	Events    []inbox.Event
	// Limited says more messages are pending.
	Limited bool
}

// E2EEResult is the e2ee extension's answer.
type E2EEResult struct {
	// DeviceLists is nil for a new connection.
	DeviceLists *devicelists.Changes
	// OneTimeKeys and FallbackTypes are the device's counts, read on every
	// check (Request.KeyCounts).
	OneTimeKeys   map[string]int
	FallbackTypes []string
}

// ExtensionsResult is what Extensions found.
type ExtensionsResult struct {
	// ToDevice and E2EE are nil for extensions not enabled.
	ToDevice *ToDeviceResult
	E2EE     *E2EEResult
	// ListsHead is the device-list position the answer covers: the next
	// request's Lists.
	ListsHead int64
}

// Extensions answers the to_device and e2ee extensions of one sliding-sync
// request, waiting up to req.Timeout for something new. It is Sync with the
// extensions' rules:
//
//   - a to_device since acknowledges (deletes) what it covers, as the
//     classic /sync's does: one inbox and one acknowledgement per device;
//   - a since above every position this server issued (a database restored
//     from a backup, or a forged token) deletes nothing and is answered from
//     the oldest pending message with a fresh next_batch. Synapse answers it
//     with no events and the same since, which stalls delivery until the
//     stream passes it and then acknowledges messages never delivered; a 400
//     would fail the whole sliding-sync request on every retry;
//   - with the to_device extension off, nothing is read from the inbox and
//     only device-list changes end the wait;
//   - a Lists position above the device-list head is CodeUnknownPos.
func (s *Service) Extensions(ctx context.Context, req ExtensionsRequest) (ExtensionsResult, error) {
	sreq, err := s.extensionsSync(req)
	if err != nil {
		return ExtensionsResult{}, err
	}
	res, err := s.Sync(ctx, sreq)
	if retry, ok := extensionsRetry(req, sreq, err); ok {
		sreq = retry
		res, err = s.Sync(ctx, sreq)
	}
	return extensionsResult(req, sreq, res, err)
}

// ParkExtensions is Extensions waiting without a goroutine (Park): finish
// is called once, on the wake-up hub's workers, with what Extensions would
// have returned. req.Timeout must be positive. The returned Waiting is for
// Cancel; it is the first sync's, and after a retry (an initial inbox sync
// after a refused since) the retry is not cancellable: it waits out its
// timeout, as a poll on a goroutine would.
func (s *Service) ParkExtensions(ctx context.Context, req ExtensionsRequest, finish func(ExtensionsResult, error)) (*Waiting, error) {
	sreq, err := s.extensionsSync(req)
	if err != nil {
		return nil, err
	}
	return s.Park(ctx, sreq, func(res Result, err error) {
		if retry, ok := extensionsRetry(req, sreq, err); ok {
			s.Park(ctx, retry, func(res Result, err error) { finish(extensionsResult(req, retry, res, err)) })
			return
		}
		finish(extensionsResult(req, sreq, res, err))
	}), nil
}

// extensionsSync is the sync an extensions request makes.
func (s *Service) extensionsSync(req ExtensionsRequest) (Request, error) {
	sreq := Request{Device: req.Device, ToDevice: inbox.Position{NID: req.Device.NID}, Timeout: req.Timeout}
	if req.E2EE {
		sreq.Lists = req.Lists
		sreq.KeyCounts = true
	}
	if req.ToDevice != nil {
		if req.ToDevice.Since != "" {
			td, err := parseToDeviceSince(s.Epoch(), req.Device, req.ToDevice.Since)
			if err != nil {
				return Request{}, err
			}
			sreq.ToDevice = td
		}
		sreq.Limit = req.ToDevice.Limit
		if sreq.Limit <= 0 || sreq.Limit > MaxToDeviceLimit {
			sreq.Limit = MaxToDeviceLimit
		}
	} else {
		sreq.ListsOnly = true
	}
	return sreq, nil
}

// extensionsRetry says whether a sync that failed with err is made again
// as an initial inbox sync, and returns it: the store refuses a
// never-issued to-device since before deleting anything (M_INVALID_PARAM);
// so does devicelists for a device-list position above the head. If the
// device-list position was at fault, the retry fails again the same way.
func extensionsRetry(req ExtensionsRequest, sreq Request, err error) (Request, bool) {
	if e, ok := matrix.AsError(err); ok && e.Code == matrix.InvalidParam && sreq.ToDevice.Hi > 0 {
		sreq.ToDevice = inbox.Position{NID: req.Device.NID}
		return sreq, true
	}
	return Request{}, false
}

// extensionsResult is the extensions' answer to what their sync returned.
func extensionsResult(req ExtensionsRequest, sreq Request, res Result, err error) (ExtensionsResult, error) {
	if e, ok := matrix.AsError(err); ok && e.Code == matrix.InvalidParam && sreq.Lists.Incremental {
		return ExtensionsResult{}, matrix.Errorf(CodeUnknownPos, "The connection's device-list position %d is ahead of this server; start over.", sreq.Lists.Pos)
	}
	if err != nil {
		return ExtensionsResult{}, err
	}
	out := ExtensionsResult{ListsHead: res.ListsHead}
	if req.ToDevice != nil {
		out.ToDevice = &ToDeviceResult{NextBatch: res.Token(), Events: res.ToDevice.Events, Limited: res.ToDevice.Limited}
	}
	if req.E2EE {
		out.E2EE = &E2EEResult{DeviceLists: res.Lists, OneTimeKeys: res.OneTimeKeys, FallbackTypes: res.FallbackTypes}
	}
	return out, nil
}

// parseToDeviceSince reads a to_device since: a to-device token or a client
// /sync token (whose device-list half is not used).
func parseToDeviceSince(epoch string, dev inbox.Recipient, s string) (inbox.Position, error) {
	if strings.Count(s, "_") == 3 {
		return ParseToDevice(epoch, dev, s)
	}
	tok, err := ParseToken(epoch, dev, s)
	return tok.ToDevice, err
}

// Pos is what a stateless sliding-sync pos carries.
type Pos struct {
	// Lists is the device-list position the connection was last answered
	// up to.
	Lists int64
	// Issued is when the pos was made (Unix seconds).
	Issued int64
}

// FormatPos renders a pos "EPOCH_LISTS_ISSUED_CHECK" for the connection
// connID of device dev. CHECK (16 hex digits) is a hash of everything else
// and of the user, the device's incarnation and connID, so a pos given to
// another connection, device or user, or altered, is unknown. It is not a
// secret and need not be: a pos names only a position of the device-list
// stream, which the client may ask about anyway (/keys/changes), and a
// position above the head is refused.
func FormatPos(epoch string, dev inbox.Recipient, connID string, p Pos) string {
	body := epoch + "_" + strconv.FormatInt(p.Lists, 10) + "_" + strconv.FormatInt(p.Issued, 10)
	return body + "_" + posCheck(body, dev, connID)
}

// ParsePos reads a pos made by FormatPos for the same connection and
// device, of this epoch, issued at most PosMaxAge before now. Anything else
// is CodeUnknownPos.
func ParsePos(epoch string, dev inbox.Recipient, connID, s string, now time.Time) (Pos, error) {
	parts := strings.Split(s, "_")
	unknown := matrix.Errorf(CodeUnknownPos, "Unknown or expired pos %q; start over without one.", matrix.Quote(s))
	if len(parts) != 4 || parts[0] != epoch {
		return Pos{}, unknown
	}
	lists, ok1 := readCount(parts[1])
	issued, ok2 := readCount(parts[2])
	if !ok1 || !ok2 || parts[3] != posCheck(strings.Join(parts[:3], "_"), dev, connID) {
		return Pos{}, unknown
	}
	at := time.Unix(issued, 0)
	if now.Sub(at) > PosMaxAge || at.Sub(now) > posClockSkew {
		return Pos{}, unknown
	}
	return Pos{Lists: lists, Issued: issued}, nil
}

func posCheck(body string, dev inbox.Recipient, connID string) string {
	h := sha256.New()
	var nid [8]byte
	binary.BigEndian.PutUint64(nid[:], uint64(dev.NID))
	for _, s := range []string{"todeviced sliding-sync pos", body, dev.UserID, string(nid[:]), connID} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
