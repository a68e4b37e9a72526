package httpapi

import (
	"errors"
	"net/http"

	"github.com/todeviced/todeviced/internal/devicelists"
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
	// The one-time-key fields (read on every check, never omitted).
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

// sync serves the client /sync. Over HTTP/1.1 it is parked (park.go), a
// long-poll or not: its connection is taken over at once, and everything
// else, the token's authentication included, happens on the wake-up hub's
// workers (parkedSync), so a herd of syncs (every client coming back after
// a restart) queues as small objects rather than as goroutines holding
// buffers while they wait for the database. Anything else (HTTP/2, parking
// off, a malformed timeout) is authenticated by requireSyncDevice and
// served on its goroutine (syncNow).
func (a *api) sync(w http.ResponseWriter, r *http.Request) {
	if tok, ok := bearer(r); ok {
		q := syncParamsOf(r)
		if _, err := parseTimeout(q.timeout); err == nil && a.cfg.Parking.parkable(r) {
			if a.syncLingering(w, r, tok, q) ||
				a.cfg.Parking.park(w, r, func(ps *parkedSync) { a.parkedSync(ps, tok, q) }) {
				return
			}
		}
	}
	a.syncNow.ServeHTTP(w, r)
}

// syncLingering serves a parkable /sync of a remembered token on its own
// goroutine first, while few do (Parking.lingerSlot): its first check, and
// its wait for up to Parking.linger, as on any goroutine. Only a sync still
// waiting after that is parked. A busy device's syncs (each answered within
// milliseconds by the next message) then cost no take-over and hand-back of
// their connection, while an idle one still waits parked, and a herd of
// syncs, beyond the slots, is parked at once. It returns false, having
// answered nothing, when it did not serve the request.
func (a *api) syncLingering(w http.ResponseWriter, r *http.Request, tok string, q syncParams) bool {
	auth, ok := a.devices.CachedAuth(tok)
	if !ok {
		return false
	}
	req, err := a.syncRequest(q, auth)
	if err != nil {
		return false // answered by the parked path, which checks the token first
	}
	if !a.cfg.Parking.lingerSlot() {
		return false
	}
	wait, res, err := a.devsync.Begin(r.Context(), req)
	more := false
	if wait != nil {
		res, err, more = wait.Linger(r.Context(), a.cfg.Parking.linger)
	}
	a.cfg.Parking.releaseLinger()
	if errors.Is(err, devicesync.ErrTokenRevoked) {
		// The guard did nothing: the request goes the parked way, whose
		// lookup answers 401 or finds the device the token names now.
		a.devices.ForgetToken(auth.Guard)
		return false
	}
	if !more {
		a.answerSync(w, r, res, err)
		return true
	}
	if a.cfg.Parking.park(w, r, func(ps *parkedSync) {
		wait.Detach(ps.ctx(), a.parkedFinish(ps, tok, q, auth, true))
		ps.setWait(wait)
	}) {
		return true
	}
	res, err = wait.Wait(r.Context())
	a.answerSync(w, r, res, err)
	return true
}

// syncOnGoroutine serves a /sync authenticated by requireSyncDevice: every
// check is guarded by the token (a cached device is unverified until the
// first check's round trip says otherwise). When the guard fails the token
// is looked up again and, if it names a device, the sync is served as that
// device: a since made for another device acknowledges nothing of it
// (devicesync.ParseToken). A token revoked while the sync waits ends it
// with 401 M_UNKNOWN_TOKEN at its next check.
func (a *api) syncOnGoroutine(w http.ResponseWriter, r *http.Request) {
	auth := authFrom(r)
	q := syncParamsOf(r)
	req, err := a.syncRequest(q, auth)
	if err != nil {
		// Answered before the guard is checked: an unverified token is
		// checked first, so a revoked one is 401 whatever else is wrong.
		a.failUnverified(w, r, auth, err)
		return
	}
	res, err := a.devsync.Sync(r.Context(), req)
	if errors.Is(err, devicesync.ErrTokenRevoked) {
		var ok bool
		if auth, ok = a.reauthenticate(w, r, auth); !ok {
			return
		}
		if req, err = a.syncRequest(q, auth); err == nil {
			res, err = a.devsync.Sync(r.Context(), req)
		}
	}
	a.answerSync(w, r, res, err)
}

// parkedSync is syncOnGoroutine for a parked /sync, on a worker: the same
// authentication (a remembered token, else a database read), the same
// guard, and the same second chance when the guard fails, with the wait
// itself parked (devicesync.Park).
func (a *api) parkedSync(ps *parkedSync, tok string, q syncParams) {
	auth, ok := a.devices.CachedAuth(tok)
	if !ok {
		var err error
		if auth, err = a.lookUpToken(ps.ctx(), tok); err != nil {
			ps.respond(a.errorAnswer(err))
			return
		}
	}
	a.parkedSyncAs(ps, tok, q, auth, true)
}

func (a *api) parkedSyncAs(ps *parkedSync, tok string, q syncParams, auth devicelists.Auth, again bool) {
	req, err := a.syncRequest(q, auth)
	if err != nil {
		if auth.Unverified {
			a.devices.ForgetToken(auth.Guard)
			if _, lerr := a.lookUpToken(ps.ctx(), tok); lerr != nil {
				err = lerr
			}
		}
		ps.respond(a.errorAnswer(err))
		return
	}
	ps.setWait(a.devsync.Park(ps.ctx(), req, a.parkedFinish(ps, tok, q, auth, again)))
}

// parkedFinish answers a parked sync when it ends: a client gone gets
// nothing, a failed guard a second chance (once), anything else its answer.
func (a *api) parkedFinish(ps *parkedSync, tok string, q syncParams, auth devicelists.Auth, again bool) func(devicesync.Result, error) {
	return func(res devicesync.Result, err error) {
		defer ps.recoverWorker()
		switch {
		case errors.Is(err, errClientGone):
			ps.abandon()
		case errors.Is(err, devicesync.ErrTokenRevoked) && again:
			a.devices.ForgetToken(auth.Guard)
			if auth, err = a.lookUpToken(ps.ctx(), tok); err != nil {
				ps.respond(a.errorAnswer(err))
				return
			}
			a.parkedSyncAs(ps, tok, q, auth, false)
		default:
			ps.respond(func(w http.ResponseWriter, r *http.Request) { a.answerSync(w, r, res, err) })
		}
	}
}

// errorAnswer writes err as the answer.
func (a *api) errorAnswer(err error) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) { writeError(w, r, a.log, err) }
}

// answerSync writes a client /sync's answer: res, or err in the words of
// the client API.
func (a *api) answerSync(w http.ResponseWriter, r *http.Request, res devicesync.Result, err error) {
	if err != nil {
		switch {
		case errors.Is(err, devicesync.ErrDeviceGone):
			err = matrix.Errorf(matrix.UnknownToken, "The device was deleted.")
		case errors.Is(err, devicesync.ErrTokenRevoked):
			err = matrix.Errorf(matrix.UnknownToken, "Unknown access token.")
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

// syncParams are the parameters of a client /sync that it reads: kept as
// two strings, not the parsed query, while a parked sync waits.
type syncParams struct{ timeout, since string }

func syncParamsOf(r *http.Request) syncParams {
	q := r.URL.Query()
	return syncParams{timeout: q.Get("timeout"), since: q.Get("since")}
}

// syncRequest reads a client /sync's parameters for the device auth names,
// its checks guarded by the token (auth.Guard; nil for a token the
// homeserver vouched for).
func (a *api) syncRequest(q syncParams, auth devicelists.Auth) (devicesync.Request, error) {
	timeout, err := parseTimeout(q.timeout)
	if err != nil {
		return devicesync.Request{}, err
	}
	req := devicesync.Request{
		Device:    inbox.Recipient{UserID: auth.UserID, NID: auth.NID},
		ToDevice:  inbox.Position{NID: auth.NID},
		Limit:     inbox.DefaultSyncLimit,
		Timeout:   timeout,
		KeyCounts: true,
		TokenHash: auth.Guard,
	}
	if s := q.since; s != "" {
		tok, err := devicesync.ParseToken(a.devsync.Epoch(), req.Device, s)
		if err != nil {
			return devicesync.Request{}, err
		}
		req.ToDevice, req.Lists = tok.ToDevice, tok.Lists
	}
	return req, nil
}
