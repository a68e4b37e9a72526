package httpapi

import (
	"context"
	"errors"
	"net/http"

	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
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
	// The one-time-key fields, omitted only when no key counts are wired
	// (tests).
	OneTimeKeysCount   map[string]int `json:"device_one_time_keys_count,omitempty"`
	UnusedFallbackKeys *[]string      `json:"device_unused_fallback_key_types,omitempty"`
}

// fallbackTypes is the unused fallback key types for JSON: nil when not
// read, never a null list.
func fallbackTypes(res devicesync.Result) *[]string {
	if res.OneTimeKeys == nil {
		return nil
	}
	t := res.FallbackTypes
	if t == nil {
		t = []string{}
	}
	return &t
}

func (a *api) sync(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	q := r.URL.Query()
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	req := devicesync.Request{
		Device:    inbox.Recipient{UserID: dev.UserID, NID: dev.NID},
		ToDevice:  inbox.Position{NID: dev.NID},
		Limit:     inbox.DefaultSyncLimit,
		Timeout:   timeout,
		KeyCounts: true,
	}
	if s := q.Get("since"); s != "" {
		tok, err := devicesync.ParseToken(a.devsync.Epoch(), req.Device, s)
		if err != nil {
			writeError(w, r, a.log, err)
			return
		}
		req.ToDevice, req.Lists = tok.ToDevice, tok.Lists
	}
	if req.Timeout > 0 && a.cfg.Parking.park(w, r, func(ctx context.Context, finish func(devicesync.Result, error)) *devicesync.Waiting {
		return a.devsync.Park(ctx, req, finish)
	}, a.answerSync) {
		return // answered later, by the hub's workers (park.go)
	}
	res, err := a.devsync.Sync(r.Context(), req)
	a.answerSync(w, r, res, err)
}

// answerSync writes a client /sync's answer.
func (a *api) answerSync(w http.ResponseWriter, r *http.Request, res devicesync.Result, err error) {
	if err != nil {
		if errors.Is(err, devicesync.ErrDeviceGone) {
			err = matrix.Errorf(matrix.UnknownToken, "The device was deleted.")
		}
		writeError(w, r, a.log, err)
		return
	}
	body := syncBody{
		NextBatch:   res.Token(),
		ToDevice:    toDeviceBody{Events: res.ToDevice.Events},
		AccountData: emptyEvents{Events: []struct{}{}},
		Presence:    emptyEvents{Events: []struct{}{}},

		OneTimeKeysCount:   res.OneTimeKeys,
		UnusedFallbackKeys: fallbackTypes(res),
	}
	if res.Lists != nil {
		body.DeviceLists = &deviceListsBody{Changed: res.Lists.Changed, Left: res.Lists.Left}
	}
	writeJSON(w, http.StatusOK, body)
}
