package httpapi

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/mxerr"
	"github.com/todeviced/todeviced/internal/mxjson"
	"github.com/todeviced/todeviced/internal/wakeup"
)

type toDeviceBody struct {
	Events []inbox.Event `json:"events"`
}

type deviceListsBody struct {
	Changed []string `json:"changed"`
	Left    []string `json:"left"`
}

type emptyEvents struct {
	Events []struct{} `json:"events"`
}

type roomsBody struct {
	Join   struct{} `json:"join"`
	Invite struct{} `json:"invite"`
	Leave  struct{} `json:"leave"`
	Knock  struct{} `json:"knock"`
}

type syncBody struct {
	NextBatch   string           `json:"next_batch"`
	ToDevice    toDeviceBody     `json:"to_device"`
	DeviceLists *deviceListsBody `json:"device_lists,omitempty"`
	Rooms       roomsBody        `json:"rooms"`
	AccountData emptyEvents      `json:"account_data"`
	Presence    emptyEvents      `json:"presence"`
}

// dlSince is where the device-list part of a sync starts.
type dlSince struct {
	// incremental is false for an initial sync: no device_lists answer.
	incremental bool
	pos         int64
	// everyone: the position is from another database epoch, so the exact
	// changes are unknowable; answer with everyone the user shares a room with.
	everyone bool
}

// parseDLToken parses an internal device-list token "EPOCH_POS".
func parseDLToken(epoch, s string) (dlSince, error) {
	e, p, ok := strings.Cut(s, "_")
	n, okN := parseCount(p)
	if !ok || !okN || e == "" {
		return dlSince{}, mxerr.New(mxerr.InvalidParam, "Unknown or malformed device-list token %q.", mxjson.Quote(s))
	}
	if e != epoch {
		return dlSince{incremental: true, everyone: true}, nil
	}
	return dlSince{incremental: true, pos: n}, nil
}

func formatDLToken(epoch string, pos int64) string {
	return epoch + "_" + strconv.FormatInt(pos, 10)
}

// parseClientToken parses a client /sync token "EPOCH_NID_LO_HI_DL" into its
// to-device position (for rec) and its device-list position.
func (a *api) parseClientToken(rec inbox.Recipient, s string) (inbox.Position, dlSince, error) {
	i := strings.LastIndexByte(s, '_')
	if i < 0 {
		return inbox.Position{}, dlSince{}, mxerr.New(mxerr.InvalidParam, "Unknown or malformed since token %q.", mxjson.Quote(s))
	}
	td, dl := s[:i], s[i+1:]
	pos, err := inbox.ParseToken(a.inbox.Epoch(), rec, td)
	if err != nil {
		return inbox.Position{}, dlSince{}, err
	}
	n, ok := parseCount(dl)
	if !ok {
		return inbox.Position{}, dlSince{}, mxerr.New(mxerr.InvalidParam, "Unknown or malformed since token %q.", mxjson.Quote(s))
	}
	if !strings.HasPrefix(td, a.inbox.Epoch()+"_") {
		return pos, dlSince{incremental: true, everyone: true}, nil
	}
	return pos, dlSince{incremental: true, pos: n}, nil
}

// syncResult is what one device's sync found.
type syncResult struct {
	batch  inbox.Batch
	lists  *devicelists.Changes // nil for an initial sync
	dlNext int64
}

// longPoll acknowledges since and waits up to timeout for to-device messages
// or device-list changes. The first check acknowledges; later checks only read.
func (a *api) longPoll(ctx context.Context, userID string, rec inbox.Recipient, since inbox.Position, dl dlSince, limit int, timeout time.Duration) (syncResult, error) {
	pos := since
	var res syncResult
	keys := []wakeup.Key{wakeup.DeviceKey(rec.NID), wakeup.UserKey(userID)}
	_, err := a.hub.Poll(ctx, timeout, keys, func(ctx context.Context) (bool, error) {
		// The device-list head is read with the inbox, before it, so the
		// answer never claims a position whose changes it did not include.
		b, head, err := a.inbox.SyncAndHead(ctx, rec, pos, limit)
		if err != nil {
			return false, err
		}
		pos = b.Next
		res.batch = b
		res.dlNext = head
		found := len(b.Events) > 0
		if dl.incremental {
			var c devicelists.Changes
			switch {
			case dl.everyone:
				if c, err = a.devices.Everyone(ctx, userID); err != nil {
					return false, err
				}
				dl = dlSince{incremental: true, pos: head}
			case head != dl.pos:
				if c, err = a.devices.Changes(ctx, userID, dl.pos, head); err != nil {
					return false, err
				}
				if len(c.Changed)+len(c.Left) == 0 {
					// Nothing for us below head: later checks start there.
					dl.pos = head
				}
			default:
				c = devicelists.Changes{Changed: []string{}, Left: []string{}}
			}
			res.lists = &c
			found = found || len(c.Changed)+len(c.Left) > 0
		}
		return found, nil
	})
	return res, err
}

func (a *api) sync(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	q := r.URL.Query()
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	rec := inbox.Recipient{UserID: dev.UserID, NID: dev.NID}
	since := inbox.Position{NID: dev.NID}
	var dl dlSince
	if s := q.Get("since"); s != "" {
		if since, dl, err = a.parseClientToken(rec, s); err != nil {
			writeError(w, r, a.log, err)
			return
		}
	}
	res, err := a.longPoll(r.Context(), dev.UserID, rec, since, dl, inbox.DefaultSyncLimit, timeout)
	if err != nil {
		if errors.Is(err, inbox.ErrDeviceGone) {
			err = mxerr.New(mxerr.UnknownToken, "The device was deleted.")
		}
		writeError(w, r, a.log, err)
		return
	}
	body := syncBody{
		NextBatch:   inbox.FormatToken(a.inbox.Epoch(), res.batch.Next) + "_" + strconv.FormatInt(res.dlNext, 10),
		ToDevice:    toDeviceBody{Events: nonNilEvents(res.batch.Events)},
		AccountData: emptyEvents{Events: []struct{}{}},
		Presence:    emptyEvents{Events: []struct{}{}},
	}
	if res.lists != nil {
		body.DeviceLists = &deviceListsBody{Changed: res.lists.Changed, Left: res.lists.Left}
	}
	writeJSON(w, http.StatusOK, body)
}

func nonNilEvents(e []inbox.Event) []inbox.Event {
	if e == nil {
		return []inbox.Event{}
	}
	return e
}
