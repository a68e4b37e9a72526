package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/mxerr"
)

// decodeObject decodes a JSON object body into v, with the Matrix errors for
// what is not JSON or not of the expected shape.
func decodeObject(body []byte, v any) error {
	if len(body) == 0 {
		body = []byte("{}")
	}
	if !json.Valid(body) {
		return mxerr.New(mxerr.NotJSON, "Content not JSON.")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return mxerr.New(mxerr.BadJSON, "Malformed body: %v.", err)
	}
	return nil
}

type putDeviceBody struct {
	AccessToken *string         `json:"access_token"`
	DisplayName *string         `json:"display_name"`
	Keys        json.RawMessage `json:"keys"`
}

func (a *api) userDevice(r *http.Request) (string, string, error) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		return "", "", err
	}
	deviceID, err := pathParam(r, "deviceId")
	if err != nil {
		return "", "", err
	}
	return userID, deviceID, a.devices.CheckLocalDevice(userID, deviceID)
}

func (a *api) putDevice(w http.ResponseWriter, r *http.Request) {
	userID, deviceID, err := a.userDevice(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	body, err := readBody(w, r, maxInternalBytes)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	var b putDeviceBody
	if err := decodeObject(body, &b); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	token := ""
	if b.AccessToken != nil {
		if *b.AccessToken == "" {
			writeError(w, r, a.log, mxerr.New(mxerr.InvalidParam, "access_token must not be empty."))
			return
		}
		token = *b.AccessToken
	}
	if _, _, err := a.devices.PutDevice(r.Context(), userID, deviceID, token, b.DisplayName); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, []byte("{}"))
}

func (a *api) deleteDevice(w http.ResponseWriter, r *http.Request) {
	userID, deviceID, err := a.userDevice(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if _, err := a.devices.DeleteDevice(r.Context(), userID, deviceID); err != nil {
		if errors.Is(err, devicelists.ErrNotFound) {
			err = mxerr.New(mxerr.NotFound, "No such device.")
		}
		writeError(w, r, a.log, err)
		return
	}
	a.cfg.PurgeDeleted()
	writeRaw(w, http.StatusOK, []byte("{}"))
}

type internalToDevice struct {
	Events    []inbox.Event `json:"events"`
	NextBatch string        `json:"next_batch"`
	Limited   bool          `json:"limited"`
}

type internalDeviceLists struct {
	Changed   []string `json:"changed"`
	Left      []string `json:"left"`
	NextBatch string   `json:"next_batch"`
}

type internalSyncBody struct {
	ToDevice    internalToDevice    `json:"to_device"`
	DeviceLists internalDeviceLists `json:"device_lists"`
}

// internalSync serves the homeserver's sync service: the to-device part (and,
// with the device-lists component, the device-list part) of one device's
// sync, with positions of their own.
func (a *api) internalSync(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	userID, deviceID := q.Get("user_id"), q.Get("device_id")
	if userID == "" || deviceID == "" {
		writeError(w, r, a.log, mxerr.New(mxerr.MissingParam, "user_id and device_id are required."))
		return
	}
	if err := a.devices.CheckLocalDevice(userID, deviceID); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	limit := inbox.DefaultSyncLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeError(w, r, a.log, mxerr.New(mxerr.InvalidParam, "limit must be a positive integer."))
			return
		}
		limit = min(n, inbox.DefaultSyncLimit)
	}
	dev, err := a.devices.Device(r.Context(), userID, deviceID)
	if err != nil {
		if errors.Is(err, devicelists.ErrNotFound) {
			err = mxerr.New(mxerr.NotFound, "No such device.")
		}
		writeError(w, r, a.log, err)
		return
	}
	rec := inbox.Recipient{UserID: dev.UserID, NID: dev.NID}
	since := inbox.Position{NID: dev.NID}
	if s := q.Get("to_device_since"); s != "" {
		if since, err = inbox.ParseToken(a.inbox.Epoch(), rec, s); err != nil {
			writeError(w, r, a.log, err)
			return
		}
	}
	b, err := a.longPollInbox(r.Context(), rec, since, limit, timeout)
	if err != nil {
		if errors.Is(err, inbox.ErrDeviceGone) {
			err = mxerr.New(mxerr.NotFound, "The device was deleted.")
		}
		writeError(w, r, a.log, err)
		return
	}
	if b.Events == nil {
		b.Events = []inbox.Event{}
	}
	writeJSON(w, http.StatusOK, internalSyncBody{
		ToDevice: internalToDevice{Events: b.Events, NextBatch: inbox.FormatToken(a.inbox.Epoch(), b.Next), Limited: b.Limited},
		DeviceLists: internalDeviceLists{
			Changed: []string{}, Left: []string{},
			NextBatch: q.Get("device_lists_since"),
		},
	})
}
