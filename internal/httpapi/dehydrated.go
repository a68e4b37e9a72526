package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// DehydratedDevicePath is the client's dehydrated device (MSC3814, the
// unstable prefix Synapse serves); its events are at
// DehydratedDevicePath/{deviceId}/events.
const DehydratedDevicePath = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device"

type dehydratedIDBody struct {
	DeviceID string `json:"device_id"`
}

type dehydratedBody struct {
	DeviceID   string          `json:"device_id"`
	DeviceData json.RawMessage `json:"device_data"`
}

type dehydratedEventsBody struct {
	Events    []inbox.Event `json:"events"`
	NextBatch string        `json:"next_batch"`
}

// internalUser reads and checks the internal API's {userId}.
func (a *api) internalUser(r *http.Request) (string, error) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		return "", err
	}
	if _, err := matrix.ParseUserID(userID); err != nil {
		return "", matrix.Errorf(matrix.InvalidParam, "Invalid user id %q: %v.", matrix.Quote(userID), err)
	}
	return userID, nil
}

// withUser runs h for the user of the access token (client routes) or of
// the path (internal routes).
func (a *api) withUser(internal bool, h func(w http.ResponseWriter, r *http.Request, userID string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !internal {
			h(w, r, deviceFrom(r).UserID)
			return
		}
		userID, err := a.internalUser(r)
		if err != nil {
			writeError(w, r, a.log, err)
			return
		}
		h(w, r, userID)
	}
}

// putDehydrated answers PUT …/dehydrated_device: the new dehydrated device
// replaces the old one, whose inbox is then purged.
func (a *api) putDehydrated(w http.ResponseWriter, r *http.Request, userID string) {
	var u devicelists.DehydratedUpload
	if err := readObject(w, r, maxInternalBytes, &u); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	d, replaced, err := a.devices.PutDehydrated(r.Context(), userID, u)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if replaced != nil {
		a.cfg.PurgeDeleted()
	}
	writeJSON(w, http.StatusOK, dehydratedIDBody{DeviceID: d.DeviceID})
}

// getDehydrated answers GET …/dehydrated_device.
func (a *api) getDehydrated(w http.ResponseWriter, r *http.Request, userID string) {
	d, err := a.devices.Dehydrated(r.Context(), userID)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, dehydratedBody{DeviceID: d.DeviceID, DeviceData: d.Data})
}

// deleteDehydrated answers DELETE …/dehydrated_device.
func (a *api) deleteDehydrated(w http.ResponseWriter, r *http.Request, userID string) {
	d, err := a.devices.DeleteDehydrated(r.Context(), userID)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	a.cfg.PurgeDeleted()
	writeJSON(w, http.StatusOK, dehydratedIDBody{DeviceID: d.DeviceID})
}

// dehydratedEvents answers POST …/dehydrated_device/{deviceId}/events: the
// to-device half of a sync of the dehydrated device, without waiting. The
// next_batch given acknowledges (deletes) what the call that returned it
// delivered, exactly as /sync's since does.
func (a *api) dehydratedEvents(w http.ResponseWriter, r *http.Request, userID string) {
	deviceID, err := pathParam(r, "deviceId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	limit := devicelists.DehydratedEventsLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "limit must be a positive integer."))
			return
		}
		limit = min(n, devicelists.DehydratedEventsLimit)
	}
	var b struct {
		NextBatch *string `json:"next_batch"`
	}
	if err := readObject(w, r, maxInternalBytes, &b); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	dev, err := a.devices.DehydratedForEvents(r.Context(), userID, deviceID)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	req := devicesync.Request{
		Device:   inbox.Recipient{UserID: dev.UserID, NID: dev.NID},
		ToDevice: inbox.Position{NID: dev.NID},
		Limit:    limit,
	}
	if b.NextBatch != nil && *b.NextBatch != "" {
		if req.ToDevice, err = devicesync.ParseToDevice(a.devsync.Epoch(), req.Device, *b.NextBatch); err != nil {
			writeError(w, r, a.log, err)
			return
		}
	}
	res, err := a.devsync.Sync(r.Context(), req)
	if err != nil {
		if errors.Is(err, devicesync.ErrDeviceGone) {
			err = matrix.ErrorfStatus(http.StatusForbidden, matrix.Forbidden, "No dehydrated device exists.")
		}
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, dehydratedEventsBody{Events: res.ToDevice.Events, NextBatch: res.ToDeviceToken()})
}
