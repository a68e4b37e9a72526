package httpapi

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// pathParam returns an unescaped chi URL parameter.
func pathParam(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(chi.URLParam(r, name))
	if err != nil {
		return "", matrix.Errorf(matrix.InvalidParam, "Malformed path parameter %s.", name)
	}
	return v, nil
}

// versions answers GET /_matrix/client/versions. A version in that list
// claims the whole client-server API of that version (login, rooms,
// profiles, …), and todeviced serves a few endpoints of it, so it claims
// none. The endpoints it does serve follow their definition in v1.1 to
// v1.12. An unstable feature names what it covers, so the two todeviced
// serves whole are listed: simplified sliding sync (MSC4186, for the
// extension-only connections clients open for encryption) and dehydrated
// devices (MSC3814); clients look for them there before using them. Behind
// a homeserver, the homeserver answers /versions.
func (a *api) versions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"versions": []string{},
		"unstable_features": map[string]bool{
			"org.matrix.simplified_msc3575": true,
			"org.matrix.msc3814":            true,
		},
	})
}

// readBody reads a body of at most limit bytes; a larger one is M_TOO_LARGE.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, matrix.Errorf(matrix.TooLarge, "Request body is larger than %d bytes.", limit)
	}
	body, err := readAll(http.MaxBytesReader(w, r.Body, limit), r.ContentLength)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, matrix.Errorf(matrix.TooLarge, "Request body is larger than %d bytes.", limit)
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, matrix.ErrorfStatus(http.StatusRequestTimeout, matrix.Unknown, "The request body did not arrive in time.")
		}
		return nil, matrix.Errorf(matrix.NotJSON, "Reading request body: %v.", err)
	}
	return body, nil
}

// maxPresize bounds the buffer readAll makes for a body's declared length
// before the body has arrived, so that a client declaring megabytes and
// sending them slowly does not get them reserved in advance. It is larger
// than the sendToDevice of a fan-out to a hundred devices.
const maxPresize = 64 << 10

// readAll is io.ReadAll with a first buffer of the body's declared length
// (up to maxPresize; -1 is unknown): io.ReadAll starts at 512 bytes and
// grows by copying, five allocations and four copies for a small fan-out's
// 2.5 KiB. A body longer than it declared still grows as io.ReadAll would.
func readAll(rd io.Reader, declared int64) ([]byte, error) {
	size := 512
	if declared >= 0 {
		// One more byte: the read that finds the end needs room.
		size = int(min(declared, maxPresize)) + 1
	}
	b := make([]byte, 0, size)
	for {
		n, err := rd.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // grow, as io.ReadAll does
		}
	}
}

// sendToDevice serves PUT sendToDevice. It may start on a device remembered
// for the token (requireSyncDevice): the transaction that records the send
// checks the token (inbox.SenderGuard), and when that check fails, having
// written nothing, the token is looked up again and the send made once more
// as whatever device the token names now, or answered 401. A request that
// fails before its guard is checked is answered only once the token is
// known to be good (failUnverified), so a revoked token is told so.
func (a *api) sendToDevice(w http.ResponseWriter, r *http.Request) {
	auth := authFrom(r)
	if a.limit != nil {
		// Before anything is read or recorded: a refused request is not a
		// transaction, so the client's retry with the same txnId is served.
		if ok, wait := a.limit.Allow(auth.NID); !ok {
			e := matrix.Errorf(matrix.LimitExceeded, "Too many requests.")
			e.RetryAfter = wait
			a.failUnverified(w, r, auth, e)
			return
		}
	}
	eventType, err := pathParam(r, "eventType")
	if err != nil {
		a.failUnverified(w, r, auth, err)
		return
	}
	txnID, err := pathParam(r, "txnId")
	if err != nil {
		a.failUnverified(w, r, auth, err)
		return
	}
	body, err := readBody(w, r, a.cfg.MaxSendBytes)
	if err != nil {
		a.failUnverified(w, r, auth, err)
		return
	}
	msgs, err := inbox.DecodeSendBody(body)
	if err != nil {
		a.failUnverified(w, r, auth, err)
		return
	}
	resp, err := a.send(r, auth, eventType, txnID, msgs)
	if errors.Is(err, inbox.ErrTokenRevoked) {
		var ok bool
		if auth, ok = a.reauthenticate(w, r, auth); !ok {
			return
		}
		resp, err = a.send(r, auth, eventType, txnID, msgs)
		if errors.Is(err, inbox.ErrTokenRevoked) {
			// Revoked again between the lookup and the transaction.
			a.devices.ForgetToken(auth.Guard)
			err = matrix.Errorf(matrix.UnknownToken, "Unknown access token.")
		}
	}
	if err != nil {
		a.failUnverified(w, r, auth, err)
		return
	}
	writeRaw(w, http.StatusOK, resp)
}

// send records a sendToDevice as auth's device, guarded by the token when
// todeviced holds it.
func (a *api) send(r *http.Request, auth devicelists.Auth, eventType, txnID string, msgs inbox.Messages) ([]byte, error) {
	var guard *inbox.SenderGuard
	if auth.Guard != nil {
		guard = &inbox.SenderGuard{NID: auth.NID, TokenHash: auth.Guard}
	}
	return a.inbox.SendGuarded(r.Context(), inbox.TxnKey{
		UserID: auth.UserID, DeviceID: auth.DeviceID, EventType: eventType, TxnID: txnID,
	}, guard, msgs)
}

// failUnverified answers err, unless auth was taken on trust and its token
// turns out to be unknown: then, as for any request, 401. A request whose
// context has ended (net/http ends it when reading the body failed, a 408)
// gets err without the lookup, which could not run.
func (a *api) failUnverified(w http.ResponseWriter, r *http.Request, auth devicelists.Auth, err error) {
	if auth.Unverified && r.Context().Err() == nil {
		if _, ok := a.reauthenticate(w, r, auth); !ok {
			return
		}
	}
	writeError(w, r, a.log, err)
}

// parseTimeout reads a long-poll timeout in milliseconds.
func parseTimeout(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms < 0 {
		return 0, matrix.Errorf(matrix.InvalidParam, "timeout must be a non-negative integer of milliseconds.")
	}
	return time.Duration(min(ms, MaxSyncTimeout)) * time.Millisecond, nil
}
