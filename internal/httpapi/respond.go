package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"sync"

	"github.com/todeviced/todeviced/internal/matrix"
)

// writeJSON answers with status and v encoded as JSON.
func writeJSON(w http.ResponseWriter, status int, v any) {
	if a, ok := v.(jsonAppender); ok {
		writeAppended(w, status, a)
		return
	}
	body, err := json.Marshal(v)
	if err != nil {
		writeEncodingError(w)
		return
	}
	writeRaw(w, status, body)
}

func writeEncodingError(w http.ResponseWriter) {
	http.Error(w, `{"errcode":"M_UNKNOWN","error":"encoding response"}`, http.StatusInternalServerError)
}

// bodyBuffers are the buffers answers with an appendJSON are written into:
// the ResponseWriter copies what it is given, so the buffer is free again
// once Write returns.
var bodyBuffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledBody is the largest buffer put back: a /sync of a hundred large
// messages should not stay allocated for the small ones after it.
const maxPooledBody = 64 << 10

func writeAppended(w http.ResponseWriter, status int, a jsonAppender) {
	buf := bodyBuffers.Get().(*[]byte)
	body, err := a.appendJSON((*buf)[:0])
	if err != nil {
		writeEncodingError(w)
	} else {
		writeRaw(w, status, body)
	}
	if cap(body) <= maxPooledBody {
		*buf = body
		bodyBuffers.Put(buf)
	}
}

// jsonContentType is the Content-Type value of every JSON answer, one
// slice for all of them instead of a new one per answer (Header.Set makes
// one). Header values are only ever read or replaced, never written in
// place, and its capacity is its length, so an Add copies it.
var jsonContentType = []string{"application/json"}[:1:1]

func writeRaw(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = jsonContentType
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

type errorBody struct {
	Errcode      matrix.Code `json:"errcode"`
	Error        string      `json:"error"`
	RetryAfterMS int64       `json:"retry_after_ms,omitempty"`
}

// writeError is the one place an error becomes a response: a Matrix error
// as itself, anything else as 500 M_UNKNOWN, logged with the request.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	e, ok := matrix.AsError(err)
	if !ok {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			e = matrix.Errorf(matrix.TooLarge, "Request body is larger than %d bytes.", mbe.Limit)
		case r.Context().Err() != nil:
			return // the client went away; nobody to answer
		case errors.Is(err, context.DeadlineExceeded):
			// A database call (or an outbound call) ran out of time: the
			// request's own context has no deadline. Nothing is known to have
			// happened, so the client retries; a retried send is deduplicated
			// by its transaction id.
			log.WarnContext(r.Context(), "request timed out", "method", r.Method, "route", routePattern(r), "err", err)
			e = matrix.Errorf(matrix.Unavailable, "The server's database did not answer in time; try again.")
		default:
			log.ErrorContext(r.Context(), "request failed", "method", r.Method, "route", routePattern(r), "err", err)
			e = matrix.Errorf(matrix.Unknown, "Internal server error.")
		}
	}
	if e.RetryAfter > 0 {
		secs := int64((e.RetryAfter + 999_999_999) / 1_000_000_000)
		w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	}
	writeJSON(w, e.Status, errorBody{Errcode: e.Code, Error: e.Message, RetryAfterMS: e.RetryAfter.Milliseconds()})
}
