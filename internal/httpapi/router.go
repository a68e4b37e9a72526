// Package httpapi is todeviced's HTTP surface: the client routes it
// implements (sendToDevice, /sync), the federation routes of standalone mode
// (server keys, /send), the internal API a homeserver drives, the Matrix
// error JSON, authentication, and per-request logs and metrics.
// Handlers parse and answer; the domain packages decide.
package httpapi

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// Request limits.
const (
	// DefaultMaxSendBytes bounds a sendToDevice body. One message is at most
	// 64 KiB; 16 MiB leaves room for fan-outs to hundreds of devices with
	// per-device encrypted payloads.
	DefaultMaxSendBytes = 16 << 20
	// maxInternalBytes bounds internal API bodies.
	maxInternalBytes = 4 << 20
	// MaxSyncTimeout caps a long-poll; clients ask for 30 s in practice.
	MaxSyncTimeout = 5 * 60 * 1000
	// DefaultBodyTimeout is how long a request's body may take to arrive,
	// from the end of its headers (--request-body-timeout): a 16 MiB send
	// needs about 2.3 Mbit/s, and a client dribbling bytes to hold a
	// connection and a goroutine open is cut off.
	DefaultBodyTimeout = time.Minute
)

// Config is what the router needs.
type Config struct {
	ServerName string
	// InternalSecret enables the internal API; empty turns it off (404).
	InternalSecret string
	// AdminSecret enables the admin API; empty turns it off (404).
	AdminSecret string
	// AdminFederation serves the admin's federation routes (nil while
	// federation is off); AdminRetryNow kicks this process's sender after a
	// "retry now" (nil without one).
	AdminFederation federation.Store
	AdminRetryNow   func(destination string)
	// AdminKickResync starts the device-list resync worker after a forced
	// resync (nil while federation is off).
	AdminKickResync func()
	MaxSendBytes    int64
	// BodyTimeout bounds the time a request body takes to arrive (0:
	// DefaultBodyTimeout).
	BodyTimeout time.Duration
	// SendRate limits sendToDevice requests per sending device (requests a
	// second, with SendBurst saved up); 0 turns the limit off.
	SendRate  float64
	SendBurst int
	Inbox     *inbox.Service
	Devices   *devicelists.Service
	// Sync answers the client and internal /sync and /keys/changes.
	Sync *devicesync.Service
	// PurgeDeleted is called after a device is deleted, to start purging
	// its inbox in the background.
	PurgeDeleted func()
	// Federation enables the federation routes; nil while federation is
	// off.
	Federation *FederationConfig
	// Parking, when it has wrapped the API's listener, lets HTTP/1.1
	// long-polls of /sync wait without a goroutine (park.go); nil waits on
	// the request's goroutine.
	Parking *Parking
	Logger  *slog.Logger
	Metrics *Metrics
}

type api struct {
	cfg     Config
	limit   *inbox.RateLimiter[int64]
	log     *slog.Logger
	inbox   *inbox.Service
	devices *devicelists.Service
	devsync *devicesync.Service
	// syncNow is /sync served on the request's goroutine (sync.go).
	syncNow http.Handler
	// inflight bounds unauthenticated federation bodies (inflight.go).
	inflight *byteBudget
}

// NewRouter returns the HTTP handler of the API.
func NewRouter(cfg Config) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	if cfg.MaxSendBytes <= 0 {
		cfg.MaxSendBytes = DefaultMaxSendBytes
	}
	if cfg.BodyTimeout <= 0 {
		cfg.BodyTimeout = DefaultBodyTimeout
	}
	if cfg.PurgeDeleted == nil {
		cfg.PurgeDeleted = func() {}
	}
	a := &api{cfg: cfg, log: cfg.Logger, inbox: cfg.Inbox, devices: cfg.Devices, devsync: cfg.Sync}
	a.syncNow = a.requireSyncDevice(http.HandlerFunc(a.syncOnGoroutine))
	if cfg.SendRate > 0 {
		a.limit = inbox.NewRateLimiter[int64](cfg.SendRate, cfg.SendBurst, nil)
	}

	r := chi.NewRouter()
	r.Use(escapedRouting, observe(a.log, cfg.Metrics), bodyDeadline(cfg.BodyTimeout))
	r.NotFound(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, r, a.log, matrix.ErrorfStatus(http.StatusNotFound, matrix.Unrecognized, "Unrecognized request."))
	})
	r.MethodNotAllowed(func(w http.ResponseWriter, req *http.Request) {
		// RFC 9110 §15.5.6: a 405 MUST say which methods the resource has.
		w.Header().Set("Allow", strings.Join(allowedMethods(r, req.URL.EscapedPath()), ", "))
		writeError(w, req, a.log, matrix.ErrorfStatus(http.StatusMethodNotAllowed, matrix.Unrecognized, "Method not allowed."))
	})

	r.Route("/_matrix/client", func(r chi.Router) {
		r.Use(cors)
		r.Get("/versions", a.versions)
		// /sync and sendToDevice start on a remembered token: their every
		// effect is guarded by the token in their own round trip (the
		// sync's pipeline, the send's transaction). Other routes' writes
		// are not, so they read the token first. /sync authenticates itself
		// (sync.go): a parked long-poll does so on the hub's workers.
		for _, v := range []string{"/v3", "/r0"} {
			r.Get(v+"/sync", a.sync)
			r.With(a.requireSyncDevice).Put(v+"/sendToDevice/{eventType}/{txnId}", a.sendToDevice)
		}
		r.Group(func(r chi.Router) {
			r.Use(a.requireDevice)
			for _, v := range []string{"/v3", "/r0"} {
				r.Get(v+"/keys/changes", a.keyChanges)
				r.Post(v+"/keys/query", a.keysQuery)
				r.Post(v+"/keys/upload", a.keysUpload)
				r.Post(v+"/keys/claim", a.keysClaim)
				r.Post(v+"/keys/device_signing/upload", a.deviceSigningUpload)
				r.Post(v+"/keys/signatures/upload", a.signaturesUpload)
			}
			r.Post(strings.TrimPrefix(SlidingSyncPath, "/_matrix/client"), a.slidingSync)
			dehydrated := strings.TrimPrefix(DehydratedDevicePath, "/_matrix/client")
			r.Put(dehydrated, a.withUser(false, a.putDehydrated))
			r.Get(dehydrated, a.withUser(false, a.getDehydrated))
			r.Delete(dehydrated, a.withUser(false, a.deleteDehydrated))
			r.Post(dehydrated+"/{deviceId}/events", a.withUser(false, a.dehydratedEvents))
		})
	})

	if cfg.Federation != nil {
		a.federationRoutes(r)
	}

	if cfg.InternalSecret != "" {
		r.Route("/_todeviced/internal/v1", func(r chi.Router) {
			r.Use(a.requireInternal)
			r.Put("/users/{userId}/devices/{deviceId}", a.putDevice)
			r.Delete("/users/{userId}/devices/{deviceId}", a.deleteDevice)
			r.Put("/users/{userId}/cross_signing", a.putCrossSigning)
			r.Post("/users/{userId}/cross_signing/replace_allowed", a.allowCrossSigningReplacement)
			r.Post("/users/{userId}/signatures", a.internalSignatures)
			r.Put("/rooms/{roomId}/encryption", a.putRoomEncryption)
			r.Put("/rooms/{roomId}/members/{userId}", a.putRoomMember)
			r.Put("/rooms/{roomId}/members", a.putRoomMembers)
			r.Get("/sync", a.internalSync)
			r.Post("/sync/extensions", a.internalSyncExtensions)
			r.Get("/keys/changes", a.internalKeyChanges)
			r.Post("/users/{userId}/devices/{deviceId}/keys/upload", a.internalKeysUpload)
			r.Post("/keys/claim", a.keysClaim)
			r.Put("/users/{userId}/dehydrated_device", a.withUser(true, a.putDehydrated))
			r.Get("/users/{userId}/dehydrated_device", a.withUser(true, a.getDehydrated))
			r.Delete("/users/{userId}/dehydrated_device", a.withUser(true, a.deleteDehydrated))
			r.Post("/users/{userId}/dehydrated_device/{deviceId}/events", a.withUser(true, a.dehydratedEvents))
			if cfg.Federation != nil {
				a.internalFederationRoutes(r)
			}
		})
	}
	if cfg.AdminSecret != "" {
		a.adminRoutes(r)
	}
	return r
}

// routeMethods are the methods any route of the API is registered for.
var routeMethods = []string{http.MethodGet, http.MethodPut, http.MethodPost, http.MethodDelete}

// allowedMethods lists the methods that routes has a route for at path
// (escaped, as the router matches it), for a 405's Allow header.
func allowedMethods(routes chi.Routes, path string) []string {
	var out []string
	for _, m := range routeMethods {
		if routes.Match(chi.NewRouteContext(), m, path) {
			out = append(out, m)
		}
	}
	if strings.HasPrefix(path, "/_matrix/client/") {
		out = append(out, http.MethodOptions) // answered by the CORS middleware
	}
	return out
}
