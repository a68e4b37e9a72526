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
