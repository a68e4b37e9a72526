package httpapi

import (
	"net/http"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// keyChanges answers GET /_matrix/client/v3/keys/changes?from=&to= where
// both are /sync tokens.
func (a *api) keyChanges(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	q := r.URL.Query()
	if q.Get("from") == "" || q.Get("to") == "" {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "from and to are required."))
		return
	}
	rec := inbox.Recipient{UserID: dev.UserID, NID: dev.NID}
	from, err := devicesync.ParseToken(a.devsync.Epoch(), rec, q.Get("from"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	to, err := devicesync.ParseToken(a.devsync.Epoch(), rec, q.Get("to"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	a.answerKeyChanges(w, r, dev.UserID, from.Lists, to.Lists)
}

// keysQuery answers POST /_matrix/client/v3/keys/query.
func (a *api) keysQuery(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	var q devicelists.KeysQuery
	if err := readObject(w, r, maxInternalBytes, &q); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if q.DeviceKeys == nil {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing 'device_keys'."))
		return
	}
	res, err := a.devices.QueryKeys(r.Context(), dev.UserID, q)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// keysUpload answers POST /_matrix/client/v3/keys/upload for the device
// of the access token.
func (a *api) keysUpload(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	a.answerKeysUpload(w, r, dev.UserID, dev.DeviceID)
}

// internalKeysUpload is the same upload for a homeserver that
// authenticates its clients itself.
func (a *api) internalKeysUpload(w http.ResponseWriter, r *http.Request) {
	userID, deviceID, err := a.userDevice(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	a.answerKeysUpload(w, r, userID, deviceID)
}

func (a *api) answerKeysUpload(w http.ResponseWriter, r *http.Request, userID, deviceID string) {
	var u devicelists.KeysUpload
	if err := readObject(w, r, maxInternalBytes, &u); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	res, err := a.devices.UploadKeys(r.Context(), userID, deviceID, u)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// keysClaim answers POST /_matrix/client/v3/keys/claim (and the internal
// POST /keys/claim): local devices' keys and, through federation, remote
// ones.
func (a *api) keysClaim(w http.ResponseWriter, r *http.Request) {
	var q devicelists.KeysClaim
	if err := readObject(w, r, maxInternalBytes, &q); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if q.OneTimeKeys == nil {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing 'one_time_keys'."))
		return
	}
	res, err := a.devices.ClaimKeys(r.Context(), q)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// answerUserKeysClaim answers the federation claim (local users only), for
// the X-Matrix route and its internal twin.
func (a *api) answerUserKeysClaim(w http.ResponseWriter, r *http.Request, body []byte) {
	var q struct {
		OneTimeKeys map[string]map[string]string `json:"one_time_keys"`
	}
	if err := decodeObject(body, &q); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if q.OneTimeKeys == nil {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing 'one_time_keys'."))
		return
	}
	res, err := a.devices.ClaimLocalKeys(r.Context(), q.OneTimeKeys)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
