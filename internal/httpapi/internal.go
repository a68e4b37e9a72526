package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// decodeObject decodes a JSON object body into v, with the Matrix errors for
// what is not JSON or not of the expected shape.
func decodeObject(body []byte, v any) error {
	if len(body) == 0 {
		body = []byte("{}")
	}
	// One bounded check for every body (DESIGN invariant 12): syntax, UTF-8
	// and depth, before encoding/json builds anything from it.
	if err := matrix.CheckJSON(body, matrix.MaxDepth); err != nil {
		if errors.Is(err, matrix.ErrTooDeep) {
			return matrix.Errorf(matrix.BadJSON, "The body is nested more than %d levels deep.", matrix.MaxDepth)
		}
		return matrix.Errorf(matrix.NotJSON, "Content not JSON.")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return matrix.Errorf(matrix.BadJSON, "Malformed body: %v.", err)
	}
	return nil
}

// readObject reads a body of at most limit bytes and decodes it as a JSON
// object into v (readBody, then decodeObject).
func readObject(w http.ResponseWriter, r *http.Request, limit int64, v any) error {
	body, err := readBody(w, r, limit)
	if err != nil {
		return err
	}
	return decodeObject(body, v)
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
	var b putDeviceBody
	if err := readObject(w, r, maxInternalBytes, &b); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	token := ""
	if b.AccessToken != nil {
		if *b.AccessToken == "" {
			writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "access_token must not be empty."))
			return
		}
		token = *b.AccessToken
	}
	if _, _, err := a.devices.PutDevice(r.Context(), userID, deviceID, token, b.DisplayName, b.Keys); err != nil {
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
			err = matrix.Errorf(matrix.NotFound, "No such device.")
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

	OneTimeKeysCount   map[string]int `json:"device_one_time_keys_count,omitempty"`
	UnusedFallbackKeys *[]string      `json:"device_unused_fallback_key_types,omitempty"`
}

// internalSyncDevice reads what every internal sync names: the local device
// (user_id, device_id), which must exist, and the long-poll timeout.
func (a *api) internalSyncDevice(r *http.Request) (devicelists.Device, time.Duration, error) {
	q := r.URL.Query()
	userID, deviceID := q.Get("user_id"), q.Get("device_id")
	if userID == "" || deviceID == "" {
		return devicelists.Device{}, 0, matrix.Errorf(matrix.MissingParam, "user_id and device_id are required.")
	}
	if err := a.devices.CheckLocalDevice(userID, deviceID); err != nil {
		return devicelists.Device{}, 0, err
	}
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		return devicelists.Device{}, 0, err
	}
	dev, err := a.devices.Device(r.Context(), userID, deviceID)
	if errors.Is(err, devicelists.ErrNotFound) {
		err = matrix.Errorf(matrix.NotFound, "No such device.")
	}
	return dev, timeout, err
}

// internalSync serves the homeserver's sync service: the to-device part and
// the device-list part of one device's sync, each with a position of its own
// so a homeserver can embed them in its tokens (and sliding sync can use the
// to-device one alone).
func (a *api) internalSync(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dev, timeout, err := a.internalSyncDevice(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	limit := inbox.DefaultSyncLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "limit must be a positive integer."))
			return
		}
		limit = min(n, inbox.DefaultSyncLimit)
	}
	req := devicesync.Request{
		Device:    inbox.Recipient{UserID: dev.UserID, NID: dev.NID},
		ToDevice:  inbox.Position{NID: dev.NID},
		Limit:     limit,
		Timeout:   timeout,
		KeyCounts: true,
	}
	if s := q.Get("to_device_since"); s != "" {
		if req.ToDevice, err = devicesync.ParseToDevice(a.devsync.Epoch(), req.Device, s); err != nil {
			writeError(w, r, a.log, err)
			return
		}
	}
	if s := q.Get("device_lists_since"); s != "" {
		if req.Lists, err = devicesync.ParseLists(a.devsync.Epoch(), s); err != nil {
			writeError(w, r, a.log, err)
			return
		}
	}
	res, err := a.devsync.Sync(r.Context(), req)
	if err != nil {
		if errors.Is(err, devicesync.ErrDeviceGone) {
			err = matrix.Errorf(matrix.NotFound, "The device was deleted.")
		}
		writeError(w, r, a.log, err)
		return
	}
	lists := internalDeviceLists{Changed: []string{}, Left: []string{}, NextBatch: res.ListsToken()}
	if res.Lists != nil {
		lists.Changed, lists.Left = res.Lists.Changed, res.Lists.Left
	}
	writeJSON(w, http.StatusOK, internalSyncBody{
		ToDevice: internalToDevice{
			Events:    res.ToDevice.Events,
			NextBatch: res.ToDeviceToken(),
			Limited:   res.ToDevice.Limited,
		},
		DeviceLists:        lists,
		OneTimeKeysCount:   res.OneTimeKeys,
		UnusedFallbackKeys: fallbackTypes(res),
	})
}

func (a *api) putCrossSigning(w http.ResponseWriter, r *http.Request) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	var k devicelists.CrossSigningKeys
	if err := readObject(w, r, maxInternalBytes, &k); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if err := a.devices.PutCrossSigning(r.Context(), userID, k); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, []byte("{}"))
}

func (a *api) putRoomEncryption(w http.ResponseWriter, r *http.Request) {
	roomID, err := pathParam(r, "roomId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if err := a.devices.SetRoomEncrypted(r.Context(), roomID); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, []byte("{}"))
}

func (a *api) putRoomMember(w http.ResponseWriter, r *http.Request) {
	roomID, err := pathParam(r, "roomId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	var m devicelists.MemberUpdate
	if err := readObject(w, r, maxInternalBytes, &m); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if err := a.devices.SetMemberships(r.Context(), roomID, map[string]devicelists.MemberUpdate{userID: m}); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, []byte("{}"))
}

func (a *api) putRoomMembers(w http.ResponseWriter, r *http.Request) {
	roomID, err := pathParam(r, "roomId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	var b struct {
		Members map[string]devicelists.MemberUpdate `json:"members"`
	}
	if err := readObject(w, r, maxInternalBytes, &b); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if b.Members == nil {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing 'members'."))
		return
	}
	if err := a.devices.SetMemberships(r.Context(), roomID, b.Members); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, []byte("{}"))
}

// internalKeyChanges answers GET /keys/changes with device-list positions.
func (a *api) internalKeyChanges(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	userID := q.Get("user_id")
	if userID == "" || q.Get("from") == "" || q.Get("to") == "" {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "user_id, from and to are required."))
		return
	}
	from, err := devicesync.ParseLists(a.devsync.Epoch(), q.Get("from"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	to, err := devicesync.ParseLists(a.devsync.Epoch(), q.Get("to"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	a.answerKeyChanges(w, r, userID, from, to)
}

// answerKeyChanges writes the changes between two device-list positions.
func (a *api) answerKeyChanges(w http.ResponseWriter, r *http.Request, userID string, from, to devicesync.ListsSince) {
	c, err := a.devsync.KeyChanges(r.Context(), userID, from, to)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, deviceListsBody{Changed: c.Changed, Left: c.Left})
}
