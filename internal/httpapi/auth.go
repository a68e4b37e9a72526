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

// requireDevice authenticates a client request by its access token, with a
// database read.
func (a *api) requireDevice(next http.Handler) http.Handler { return a.authenticated(false, next) }

// requireSyncDevice authenticates a client /sync or sendToDevice
// speculatively: a token authenticated on this replica before is taken for
// the device it named then, without a round trip
// (devicelists.Auth.Unverified); any other as requireDevice does. The
// handler guards everything it does with the token's hash (a sync's
// devicesync.Request.TokenHash, a send's inbox.SenderGuard), which the
// store checks in the request's own round trip, and calls reauthenticate
// when the guard fails. So a warm /sync check and a send cost one round
// trip, and a revoked token (DESIGN invariant 9) still does nothing, on any
// replica, at once.
func (a *api) requireSyncDevice(next http.Handler) http.Handler { return a.authenticated(true, next) }

func (a *api) authenticated(cached bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := bearer(r)
		if !ok {
			writeError(w, r, a.log, matrix.Errorf(matrix.MissingToken, "Missing access token."))
			return
		}
		var auth devicelists.Auth
		hit := false
		if cached {
			auth, hit = a.devices.CachedAuth(tok)
		}
		if !hit {
			if auth, ok = a.authenticate(w, r, tok); !ok {
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), deviceKey, auth)))
	})
}

// authenticate looks tok up in the database (or asks the homeserver), and
// answers the request itself when that fails.
func (a *api) authenticate(w http.ResponseWriter, r *http.Request, tok string) (devicelists.Auth, bool) {
	auth, err := a.lookUpToken(r.Context(), tok)
	if err != nil {
		writeError(w, r, a.log, err)
		return auth, false
	}
	return auth, true
}

// lookUpToken looks tok up in the database (or asks the homeserver), on a
// goroutine of its own (authenticateShallow); an unknown token is
// M_UNKNOWN_TOKEN.
func (a *api) lookUpToken(ctx context.Context, tok string) (devicelists.Auth, error) {
	auth, err := authenticateShallow(ctx, a.devices, tok)
	if errors.Is(err, devicelists.ErrNotFound) {
		err = matrix.Errorf(matrix.UnknownToken, "Unknown access token.")
	}
	return auth, err
}

// reauthenticate is for a request of requireSyncDevice whose guard failed,
// or that fails before its guard was checked while its device is
// unverified: the remembered token is forgotten and looked up in the
// database once more. A token no device holds is answered 401
// M_UNKNOWN_TOKEN, as always; one that names a device (perhaps another
// one: the internal API may give a deleted device's token to a new device)
// is returned, to serve the request as that device.
func (a *api) reauthenticate(w http.ResponseWriter, r *http.Request, failed devicelists.Auth) (devicelists.Auth, bool) {
	a.devices.ForgetToken(failed.Guard)
	tok, _ := bearer(r)
	return a.authenticate(w, r, tok)
}

func deviceFrom(r *http.Request) devicelists.Device { return authFrom(r).Device }

// authFrom is how the request's token was authenticated.
func authFrom(r *http.Request) devicelists.Auth {
	return r.Context().Value(deviceKey).(devicelists.Auth)
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
func authenticateShallow(ctx context.Context, devices *devicelists.Service, tok string) (devicelists.Auth, error) {
	type result struct {
		dev devicelists.Auth
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
