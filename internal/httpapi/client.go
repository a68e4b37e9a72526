package httpapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/mxerr"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// pathParam returns an unescaped chi URL parameter.
func pathParam(r *http.Request, name string) (string, error) {
	v, err := url.PathUnescape(chi.URLParam(r, name))
	if err != nil {
		return "", mxerr.New(mxerr.InvalidParam, "Malformed path parameter %s.", name)
	}
	return v, nil
}

func (a *api) versions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"versions": []string{"r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"},
	})
}

// readBody reads a body of at most limit bytes; a larger one is M_TOO_LARGE.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, mxerr.New(mxerr.TooLarge, "Request body is larger than %d bytes.", limit)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, mxerr.New(mxerr.TooLarge, "Request body is larger than %d bytes.", limit)
		}
		return nil, mxerr.New(mxerr.NotJSON, "Reading request body: %v.", err)
	}
	return body, nil
}

func (a *api) sendToDevice(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
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
		return 0, mxerr.New(mxerr.InvalidParam, "timeout must be a non-negative integer of milliseconds.")
	}
	return time.Duration(min(ms, MaxSyncTimeout)) * time.Millisecond, nil
}

type toDeviceBody struct {
	Events []inbox.Event `json:"events"`
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
	NextBatch   string       `json:"next_batch"`
	ToDevice    toDeviceBody `json:"to_device"`
	Rooms       roomsBody    `json:"rooms"`
	AccountData emptyEvents  `json:"account_data"`
	Presence    emptyEvents  `json:"presence"`
}

// splitClientToken separates a client /sync token into its to-device part
// and its device-list part: "EPOCH_NID_LO_HI" + "_" + "DL".
func splitClientToken(s string) (toDevice, deviceLists string, err error) {
	i := strings.LastIndexByte(s, '_')
	if i < 0 {
		return "", "", mxerr.New(mxerr.InvalidParam, "Unknown or malformed since token %q.", s)
	}
	return s[:i], s[i+1:], nil
}

// longPollInbox acknowledges since and waits up to timeout for messages.
// The first check acknowledges; later checks only read.
func (a *api) longPollInbox(ctx context.Context, rec inbox.Recipient, since inbox.Position, limit int, timeout time.Duration) (inbox.Batch, error) {
	pos := since
	var out inbox.Batch
	_, err := a.hub.Poll(ctx, timeout, []wakeup.Key{wakeup.DeviceKey(rec.NID)}, func(ctx context.Context) (bool, error) {
		b, err := a.inbox.Sync(ctx, rec, pos, limit)
		if err != nil {
			return false, err
		}
		pos = b.Next
		out = b
		return len(b.Events) > 0, nil
	})
	return out, err
}

func (a *api) sync(w http.ResponseWriter, r *http.Request) {
	dev := deviceFrom(r)
	q := r.URL.Query()
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	rec := inbox.Recipient{UserID: dev.UserID, NID: dev.NID}
	since := inbox.Position{NID: dev.NID}
	dlPart := "0"
	if s := q.Get("since"); s != "" {
		td, dl, err := splitClientToken(s)
		if err == nil {
			since, err = inbox.ParseToken(a.inbox.Epoch(), rec, td)
		}
		if err == nil {
			if _, ok := parseCount(dl); !ok {
				err = mxerr.New(mxerr.InvalidParam, "Unknown or malformed since token %q.", s)
			}
		}
		if err != nil {
			writeError(w, r, a.log, err)
			return
		}
		dlPart = dl
	}
	b, err := a.longPollInbox(r.Context(), rec, since, inbox.DefaultSyncLimit, timeout)
	if err != nil {
		if errors.Is(err, inbox.ErrDeviceGone) {
			writeError(w, r, a.log, mxerr.New(mxerr.UnknownToken, "The device was deleted."))
			return
		}
		writeError(w, r, a.log, err)
		return
	}
	if b.Events == nil {
		b.Events = []inbox.Event{}
	}
	writeJSON(w, http.StatusOK, syncBody{
		NextBatch:   inbox.FormatToken(a.inbox.Epoch(), b.Next) + "_" + dlPart,
		ToDevice:    toDeviceBody{Events: b.Events},
		AccountData: emptyEvents{Events: []struct{}{}},
		Presence:    emptyEvents{Events: []struct{}{}},
	})
}

func parseCount(s string) (int64, bool) {
	if s == "" || len(s) > 19 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}
