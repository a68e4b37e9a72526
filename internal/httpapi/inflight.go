package httpapi

import (
	"errors"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// DefaultMaxInflightFederationBytes bounds the bytes of federation request
// bodies being read and checked at once, before their signatures are
// verified (--federation-inflight-bytes). A body is counted at its
// Content-Length (at the route's limit when it has none) from before it is
// read until its request is answered. Verifying makes one canonical copy,
// so the memory this allows is about twice the bound.
const DefaultMaxInflightFederationBytes = 64 << 20

// inflightRetryAfter is what a request refused for the bound is told to
// wait: bodies in flight are answered within seconds.
const inflightRetryAfter = time.Second

// byteBudget is a semaphore counted in bytes. It never queues: a request
// that does not fit is refused at once, so a flood of large unauthenticated
// bodies costs neither memory nor waiting goroutines.
type byteBudget struct {
	mu    sync.Mutex
	max   int64
	inUse int64
}

// tryAcquire takes n bytes if they fit; a single request larger than the
// whole budget fits only while nothing else is in flight.
func (b *byteBudget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.inUse > 0 && b.inUse+n > b.max {
		return false
	}
	b.inUse += n
	return true
}

func (b *byteBudget) release(n int64) {
	b.mu.Lock()
	b.inUse -= n
	b.mu.Unlock()
}

// readBoundedBody reads a federation request body of at most limit bytes
// within the in-flight budget, into one buffer of exactly its size when the
// length is declared. release must be called once the body is no longer
// needed; on failure the answer has been written and ok is false.
func (a *api) readBoundedBody(w http.ResponseWriter, r *http.Request, limit int64) (body []byte, release func(), ok bool) {
	if r.ContentLength > limit {
		writeError(w, r, a.log, matrix.Errorf(matrix.TooLarge, "Request body is larger than %d bytes.", limit))
		return nil, nil, false
	}
	n := r.ContentLength
	if n < 0 {
		n = limit
	}
	if !a.inflight.tryAcquire(n) {
		e := matrix.Errorf(matrix.LimitExceeded, "Too many request bodies in flight; retry shortly.")
		e.RetryAfter = inflightRetryAfter
		writeError(w, r, a.log, e)
		return nil, nil, false
	}
	release = func() { a.inflight.release(n) }
	rd := http.MaxBytesReader(w, r.Body, limit)
	var err error
	if r.ContentLength >= 0 {
		body = make([]byte, r.ContentLength)
		_, err = io.ReadFull(rd, body)
		if err == nil {
			// Nothing may follow the declared length.
			var one [1]byte
			if m, _ := rd.Read(one[:]); m > 0 {
				err = errors.New("body longer than its Content-Length")
			}
		}
	} else {
		body, err = io.ReadAll(rd)
	}
	if err != nil {
		release()
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, r, a.log, matrix.Errorf(matrix.TooLarge, "Request body is larger than %d bytes.", limit))
		} else {
			writeError(w, r, a.log, matrix.Errorf(matrix.NotJSON, "Reading request body: %v.", err))
		}
		return nil, nil, false
	}
	return body, release, true
}
