package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/matrix"
	"github.com/todeviced/todeviced/internal/matrixfed"
)

// maxInternalEDUs bounds one internal POST /federation/edus.
const maxInternalEDUs = 1000

// FederationConfig is what the federation routes need. The routes exist only
// when federation is enabled (a server name other than localhost).
type FederationConfig struct {
	Receiver *federation.Receiver
	// Keys authenticates inbound requests (a *matrixfed.KeyFetcher).
	Keys matrixfed.KeyResolver
	// KeyResponse returns the self-signed body of GET /_matrix/key/v2/server.
	KeyResponse func() ([]byte, error)
	// Feed is the outbox feed for a homeserver that sends everything
	// itself; nil when todeviced sends (its routes are then absent).
	Feed *federation.Feed
	// Version is reported by GET /_matrix/federation/v1/version.
	Version string
	// MaxInflightBytes bounds the federation request bodies read before
	// their signatures are verified (DefaultMaxInflightFederationBytes).
	MaxInflightBytes int64
}

func (a *api) federationRoutes(r chi.Router) {
	a.inflight = &byteBudget{max: a.cfg.Federation.MaxInflightBytes}
	if a.inflight.max <= 0 {
		a.inflight.max = DefaultMaxInflightFederationBytes
	}
	r.Get(matrixfed.KeyServerPath, a.serverKeys)
	r.Get("/_matrix/federation/v1/version", a.federationVersion)
	r.Put("/_matrix/federation/v1/send/{txnId}", a.federationSend)
	r.Get(devicelists.UserDevicesPath+"{userId}", a.federationUserDevices)
	r.Post(devicelists.UserKeysPath, a.signedQuery(a.answerUserKeys))
	r.Post(devicelists.UserKeysClaimPath, a.signedQuery(a.answerUserKeysClaim))
}

func (a *api) internalFederationRoutes(r chi.Router) {
	r.Post("/federation/edus", a.internalEDUs)
	// The two device-list queries, for a homeserver whose federation API
	// answers them: the same answers, without X-Matrix.
	r.Get("/federation/user/devices/{userId}", a.answerUserDevices)
	r.Post("/federation/user/keys/query", a.internalQuery(a.answerUserKeys))
	r.Post("/federation/user/keys/claim", a.internalQuery(a.answerUserKeysClaim))
	if a.cfg.Federation.Feed != nil {
		r.Get("/federation/outbox/destinations", a.feedDestinations)
		r.Get("/federation/outbox", a.feedPull)
		r.Post("/federation/outbox/ack", a.feedAck)
	}
}

func (a *api) serverKeys(w http.ResponseWriter, r *http.Request) {
	body, err := a.cfg.Federation.KeyResponse()
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, body)
}

func (a *api) federationVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"server": map[string]string{"name": "todeviced", "version": a.cfg.Federation.Version}})
}

// authorize checks the X-Matrix headers of a federation request and finds
// the origin's keys, before any body is read: a request that cannot be
// authentic (malformed header, an invalid origin or ours, another
// destination, a key that cannot be had) is refused without its body ever
// being buffered. It answers the error itself; ok is false then.
func (a *api) authorize(w http.ResponseWriter, r *http.Request) (ra *matrixfed.RequestAuth, ok bool) {
	ra, err := matrixfed.AuthorizeHeaders(r.Context(), r, a.cfg.ServerName, a.cfg.Federation.Keys)
	if err != nil {
		a.refuseAuth(w, r, err)
		return nil, false
	}
	return ra, true
}

// verify checks the signatures of an authorized request over its body (nil
// for none), answering the error itself; ok is false then.
func (a *api) verify(w http.ResponseWriter, r *http.Request, ra *matrixfed.RequestAuth, body []byte) bool {
	if body != nil && (!utf8.Valid(body) || !json.Valid(body)) {
		writeError(w, r, a.log, matrix.Errorf(matrix.NotJSON, "Content not JSON."))
		return false
	}
	if err := ra.Verify(r, body); err != nil {
		a.refuseAuth(w, r, err)
		return false
	}
	return true
}

func (a *api) refuseAuth(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, matrixfed.ErrMalformedAuth):
		a.log.InfoContext(r.Context(), "refused federation request", "err", err)
		writeError(w, r, a.log, matrix.ErrorfStatus(http.StatusBadRequest, matrix.Unauthorized, "Malformed X-Matrix authorization."))
	case errors.Is(err, matrixfed.ErrUnauthorized):
		a.log.InfoContext(r.Context(), "refused federation request", "err", err)
		writeError(w, r, a.log, matrix.Errorf(matrix.Unauthorized, "Request not authorized."))
	default:
		writeError(w, r, a.log, err)
	}
}

// federationSend is PUT /_matrix/federation/v1/send/{txnId}: check the
// X-Matrix headers and the origin's key, read the body within the in-flight
// budget, verify the signature over it, then let the receiver process the
// transaction.
func (a *api) federationSend(w http.ResponseWriter, r *http.Request) {
	txnID, err := pathParam(r, "txnId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if err := matrix.ValidateTxnID(txnID); err != nil {
		writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "Invalid transaction id: %v.", err))
		return
	}
	ra, ok := a.authorize(w, r)
	if !ok {
		return
	}
	body, release, ok := a.readBoundedBody(w, r, federation.MaxTxnBytes)
	if !ok {
		return
	}
	defer release()
	if !a.verify(w, r, ra, body) {
		return
	}
	resp, err := a.cfg.Federation.Receiver.HandleTransaction(r.Context(), ra.Origin, txnID, body)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, resp)
}

type internalEDUsBody struct {
	Origin string            `json:"origin"`
	EDUs   []json.RawMessage `json:"edus"`
}

// internalEDUs takes EDUs the homeserver's federation receiver already
// authenticated.
func (a *api) internalEDUs(w http.ResponseWriter, r *http.Request) {
	var b internalEDUsBody
	if err := readObject(w, r, federation.MaxTxnBytes, &b); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if b.Origin == "" {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing 'origin'."))
		return
	}
	if err := matrix.ValidateServerName(b.Origin); err != nil || b.Origin == a.cfg.ServerName {
		writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "Invalid origin %q.", matrix.Quote(b.Origin)))
		return
	}
	if len(b.EDUs) > maxInternalEDUs {
		writeError(w, r, a.log, matrix.Errorf(matrix.TooLarge, "At most %d EDUs per request.", maxInternalEDUs))
		return
	}
	if err := a.cfg.Federation.Receiver.HandleEDUs(r.Context(), b.Origin, b.EDUs); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, []byte("{}"))
}

func (a *api) feedDestinations(w http.ResponseWriter, r *http.Request) {
	dests, err := a.cfg.Federation.Feed.Destinations(r.Context())
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if dests == nil {
		dests = []string{}
	}
	writeJSON(w, http.StatusOK, map[string][]string{"destinations": dests})
}

type feedPullBody struct {
	EDUs  []json.RawMessage `json:"edus"`
	Batch string            `json:"batch,omitempty"`
}

func (a *api) feedPull(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	dest := q.Get("destination")
	if dest == "" {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing destination."))
		return
	}
	limit := federation.MaxEDUsPerTxn
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "limit must be a positive integer."))
			return
		}
		limit = min(n, federation.MaxEDUsPerTxn)
	}
	b, err := a.cfg.Federation.Feed.Pull(r.Context(), dest, limit)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, feedPullBody{EDUs: b.EDUs, Batch: b.Token})
}

type feedAckBody struct {
	Batch string `json:"batch"`
}

func (a *api) feedAck(w http.ResponseWriter, r *http.Request) {
	var b feedAckBody
	if err := readObject(w, r, maxInternalBytes, &b); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if b.Batch == "" {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing 'batch'."))
		return
	}
	n, err := a.cfg.Federation.Feed.Ack(r.Context(), b.Batch)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted": n})
}

// federationUserDevices is GET /_matrix/federation/v1/user/devices/{userId}:
// a local user's whole device list, for a server that resyncs it.
func (a *api) federationUserDevices(w http.ResponseWriter, r *http.Request) {
	ra, ok := a.authorize(w, r)
	if !ok || !a.verify(w, r, ra, nil) {
		return
	}
	a.answerUserDevices(w, r)
}

func (a *api) answerUserDevices(w http.ResponseWriter, r *http.Request) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	res, err := a.devices.UserDevices(r.Context(), userID)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// signedQuery serves a federation query whose body answer reads, once the
// request's X-Matrix authorization is checked (before the body is read) and
// its signature over the body verified: POST /user/keys/query (local users'
// keys, in the shape of the client /keys/query) and /user/keys/claim (local
// devices' one-time keys).
func (a *api) signedQuery(answer func(http.ResponseWriter, *http.Request, []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ra, ok := a.authorize(w, r)
		if !ok {
			return
		}
		body, release, ok := a.readBoundedBody(w, r, maxInternalBytes)
		if !ok {
			return
		}
		defer release()
		if !a.verify(w, r, ra, body) {
			return
		}
		answer(w, r, body)
	}
}

// internalQuery serves the same queries on the internal API, for a
// homeserver whose federation API answers them (no X-Matrix there).
func (a *api) internalQuery(answer func(http.ResponseWriter, *http.Request, []byte)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r, maxInternalBytes)
		if err != nil {
			writeError(w, r, a.log, err)
			return
		}
		answer(w, r, body)
	}
}

func (a *api) answerUserKeys(w http.ResponseWriter, r *http.Request, body []byte) {
	var q struct {
		DeviceKeys map[string][]string `json:"device_keys"`
	}
	if err := decodeObject(body, &q); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if q.DeviceKeys == nil {
		writeError(w, r, a.log, matrix.Errorf(matrix.MissingParam, "Missing 'device_keys'."))
		return
	}
	res, err := a.devices.QueryLocalKeys(r.Context(), q.DeviceKeys)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}
