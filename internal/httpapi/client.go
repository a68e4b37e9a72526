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

func (a *api) sendToDevice(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	if a.limit != nil {
		// Before anything is read or recorded: a refused request is not a
		// transaction, so the client's retry with the same txnId is served.
		if ok, wait := a.limit.Allow(dev.NID); !ok {
			e := matrix.Errorf(matrix.LimitExceeded, "Too many requests.")
			e.RetryAfter = wait
			writeError(w, r, a.log, e)
			return
		}
	}
	eventType, err := pathParam(r, "eventType")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	txnID, err := pathParam(r, "txnId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	body, err := readBody(w, r, a.cfg.MaxSendBytes)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	msgs, err := inbox.DecodeSendBody(body)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	resp, err := a.inbox.Send(r.Context(), inbox.TxnKey{
		UserID: dev.UserID, DeviceID: dev.DeviceID, EventType: eventType, TxnID: txnID,
	}, msgs)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeRaw(w, http.StatusOK, resp)
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
