package httpapi

import (
	"context"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/matrix"
)

type ctxKey int

const deviceKey ctxKey = iota

// bearer returns the access token of a client request: the Authorization
// header, or the deprecated access_token query parameter that older clients
// send (the spec still allows it).
func bearer(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		return authorizationBearer(h)
	}
	if tok := r.URL.Query().Get("access_token"); tok != "" {
		return tok, true
	}
	return "", false
}

// authorizationBearer parses an "Authorization: Bearer <token>" header.
func authorizationBearer(h string) (string, bool) {
	scheme, tok, ok := strings.Cut(h, " ")
	if ok && strings.EqualFold(scheme, "Bearer") && strings.TrimSpace(tok) != "" {
		return strings.TrimSpace(tok), true
	}
	return "", false
}

// requireDevice authenticates a client request by its access token.
func (a *api) requireDevice(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := bearer(r)
		if !ok {
			writeError(w, r, a.log, matrix.Errorf(matrix.MissingToken, "Missing access token."))
			return
		}
		dev, err := authenticateShallow(r.Context(), a.devices, tok)
		if err != nil {
			if errors.Is(err, devicelists.ErrNotFound) {
				writeError(w, r, a.log, matrix.Errorf(matrix.UnknownToken, "Unknown access token."))
				return
			}
			writeError(w, r, a.log, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), deviceKey, dev)))
	})
}

func deviceFrom(r *http.Request) devicelists.Device {
	return r.Context().Value(deviceKey).(devicelists.Device)
}

// requireInternal checks the internal API's shared secret in constant time.
// The secret is taken only from the Authorization header: a query parameter
// lands in the access logs of every proxy on the way, and whoever reads them
// could then act as the homeserver.
func (a *api) requireInternal(next http.Handler) http.Handler {
	secret := []byte(a.cfg.InternalSecret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := authorizationBearer(r.Header.Get("Authorization"))
		if !ok {
			e := matrix.Errorf(matrix.MissingToken, "Missing internal secret: send it as Authorization: Bearer.")
			if r.URL.Query().Has("access_token") {
				e = matrix.Errorf(matrix.MissingToken, "The internal secret is accepted only in the Authorization header, not as access_token.")
			}
			writeError(w, r, a.log, e)
			return
		}
		if subtle.ConstantTimeCompare([]byte(tok), secret) != 1 {
			writeError(w, r, a.log, matrix.Errorf(matrix.UnknownToken, "Wrong internal secret."))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// authenticateShallow looks the token up on a goroutine of its own: the
// request's goroutine may go on to park in a long-poll for minutes, and it
// keeps a smaller stack if it never ran the database query's call chain (see
// wakeup.runShallow).
func authenticateShallow(ctx context.Context, devices *devicelists.Service, tok string) (devicelists.Device, error) {
	type result struct {
		dev devicelists.Device
		err error
	}
	c := make(chan result, 1)
	go func() {
		dev, err := devices.Authenticate(ctx, tok)
		c <- result{dev, err}
	}()
	r := <-c
	return r.dev, r.err
}
