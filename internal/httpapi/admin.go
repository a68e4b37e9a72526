package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/federation"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// AdminPrefix is where the admin API lives; nothing is served under it
// without an admin secret (404).
const AdminPrefix = "/_todeviced/admin/v1"

// maxAdminBytes bounds an admin request body.
const maxAdminBytes = 64 << 10

// adminRoutes mounts the admin API. Every request is logged at info, once,
// with who made it (the remote address and a short hash of the secret,
// never the secret) and what it did.
func (a *api) adminRoutes(r chi.Router) {
	r.Route(AdminPrefix, func(r chi.Router) {
		r.Use(a.requireAdmin)
		r.Get("/users/{userId}/devices", a.adminUserDevices)
		r.Get("/users/{userId}/devices/{deviceId}/inbox", a.adminInbox)
		r.Post("/users/{userId}/devices/{deviceId}/inbox/purge", a.adminPurgeInbox)
		r.Get("/inboxes/largest", a.adminLargestInboxes)
		r.Get("/users/{userId}/device_list", a.adminRemoteDeviceList)
		r.Post("/users/{userId}/device_list/resync", a.adminForceResync)
		if a.cfg.AdminFederation != nil {
			r.Get("/federation/destinations", a.adminDestinations)
			r.Post("/federation/destinations/{destination}/retry", a.adminRetryDestination)
			r.Post("/federation/destinations/{destination}/drop", a.adminDropDestination)
		}
	})
}

// SecretHash is the short hash of a secret the audit log names its holder
// by: enough to tell secrets apart after a rotation, useless to guess one.
func SecretHash(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(sum[:4])
}

type auditKey struct{}

// auditRecord collects what one admin request did, for its log line.
type auditRecord struct{ attrs []any }

// audit adds what the request did to its log line.
func audit(ctx context.Context, attrs ...any) {
	if rec, ok := ctx.Value(auditKey{}).(*auditRecord); ok {
		rec.attrs = append(rec.attrs, attrs...)
	}
}

// requireAdmin checks the admin secret, in constant time, from the
// Authorization header only, and logs the request when it ends.
func (a *api) requireAdmin(next http.Handler) http.Handler {
	secret := []byte(a.cfg.AdminSecret)
	who := SecretHash(a.cfg.AdminSecret)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := authorizationBearer(r.Header.Get("Authorization"))
		if !ok || subtle.ConstantTimeCompare([]byte(tok), secret) != 1 {
			a.log.InfoContext(r.Context(), "admin request refused", "remote", r.RemoteAddr, "method", r.Method, "secret_given", ok)
			if !ok {
				writeError(w, r, a.log, matrix.Errorf(matrix.MissingToken, "Missing admin secret: send it as Authorization: Bearer."))
			} else {
				writeError(w, r, a.log, matrix.Errorf(matrix.UnknownToken, "Wrong admin secret."))
			}
			return
		}
		rec := &auditRecord{}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), auditKey{}, rec)))
		attrs := append([]any{"remote", r.RemoteAddr, "secret", who, "method", r.Method, "route", routePattern(r), "status", sw.status}, rec.attrs...)
		a.log.InfoContext(r.Context(), "admin action", attrs...)
	})
}

// statusWriter remembers the status a handler answered.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	w.status = status
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// adminDevice reads the path's local device.
func (a *api) adminDevice(r *http.Request) (devicelists.Device, error) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		return devicelists.Device{}, err
	}
	deviceID, err := pathParam(r, "deviceId")
	if err != nil {
		return devicelists.Device{}, err
	}
	if err := a.devices.CheckLocalDevice(userID, deviceID); err != nil {
		return devicelists.Device{}, err
	}
	dev, err := a.devices.Device(r.Context(), userID, deviceID)
	if errors.Is(err, devicelists.ErrNotFound) {
		return devicelists.Device{}, matrix.ErrorfStatus(http.StatusNotFound, matrix.NotFound, "No such device.")
	}
	return dev, err
}

// adminTime is a time in the admin API: milliseconds since the epoch, or
// null.
func adminTime(t *time.Time) *int64 {
	if t == nil || t.IsZero() {
		return nil
	}
	ms := t.UnixMilli()
	return &ms
}

// AdminKeyCount is one count of an inbox by type or sender.
type AdminKeyCount = inbox.KeyCount

// AdminInbox is the answer of GET …/devices/{deviceId}/inbox.
type AdminInbox struct {
	UserID   string          `json:"user_id"`
	DeviceID string          `json:"device_id"`
	Count    int64           `json:"count"`
	OldestTS *int64          `json:"oldest_ts"`
	ByType   []AdminKeyCount `json:"by_type"`
	BySender []AdminKeyCount `json:"by_sender"`
}

// AdminInboxSize is one device's inbox in a list.
type AdminInboxSize struct {
	UserID   string `json:"user_id"`
	DeviceID string `json:"device_id"`
	Count    int64  `json:"count"`
	OldestTS *int64 `json:"oldest_ts"`
}

func adminSizes(in []inbox.InboxSize) []AdminInboxSize {
	out := make([]AdminInboxSize, 0, len(in))
	for _, s := range in {
		out = append(out, AdminInboxSize{UserID: s.UserID, DeviceID: s.DeviceID, Count: s.Count, OldestTS: adminTime(s.Oldest)})
	}
	return out
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func (a *api) adminInbox(w http.ResponseWriter, r *http.Request) {
	dev, err := a.adminDevice(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	st, err := a.inbox.AdminInbox(r.Context(), inbox.Recipient{UserID: dev.UserID, NID: dev.NID})
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	audit(r.Context(), "action", "inbox", "user_id", dev.UserID, "device_id", dev.DeviceID)
	writeJSON(w, http.StatusOK, AdminInbox{UserID: dev.UserID, DeviceID: dev.DeviceID, Count: st.Count, OldestTS: adminTime(st.Oldest),
		ByType: nonNil(st.ByType), BySender: nonNil(st.BySender)})
}

// AdminPurge is the body of POST …/inbox/purge: empty purges everything,
// else one of type or sender.
type AdminPurge struct {
	Type   string `json:"type,omitempty"`
	Sender string `json:"sender,omitempty"`
}

func (a *api) adminPurgeInbox(w http.ResponseWriter, r *http.Request) {
	dev, err := a.adminDevice(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	var body AdminPurge
	if err := readObject(w, r, maxAdminBytes, &body); err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if body.Type != "" && body.Sender != "" {
		writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "Purge by type or by sender, not both."))
		return
	}
	if body.Type != "" {
		if err := matrix.ValidateEventType(body.Type); err != nil {
			writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "Invalid type: %v.", err))
			return
		}
	}
	if body.Sender != "" {
		if _, err := matrix.ParseUserID(body.Sender); err != nil {
			writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "Invalid sender: %v.", err))
			return
		}
	}
	n, err := a.inbox.AdminPurge(r.Context(), inbox.Recipient{UserID: dev.UserID, NID: dev.NID}, inbox.PurgeFilter(body))
	audit(r.Context(), "action", "purge inbox", "user_id", dev.UserID, "device_id", dev.DeviceID, "type", body.Type, "sender", body.Sender, "purged", n)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"purged": n})
}

func (a *api) adminUserDevices(w http.ResponseWriter, r *http.Request) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if _, err := matrix.ParseUserID(userID); err != nil {
		writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam, "Invalid user id: %v.", err))
		return
	}
	devs, err := a.inbox.AdminUserInboxes(r.Context(), userID)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	audit(r.Context(), "action", "user devices", "user_id", userID)
	writeJSON(w, http.StatusOK, map[string]any{"user_id": userID, "devices": adminSizes(devs)})
}

// adminLimit reads ?limit=, 1 to max, def when absent.
func adminLimit(r *http.Request, def, most int) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > most {
		return 0, matrix.Errorf(matrix.InvalidParam, "limit must be an integer from 1 to %d.", most)
	}
	return n, nil
}

func (a *api) adminLargestInboxes(w http.ResponseWriter, r *http.Request) {
	limit, err := adminLimit(r, 20, inbox.MaxAdminList)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	top, err := a.inbox.AdminLargestInboxes(r.Context(), limit)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	audit(r.Context(), "action", "largest inboxes", "limit", limit)
	writeJSON(w, http.StatusOK, map[string]any{"inboxes": adminSizes(top)})
}

// AdminDestination is one destination in GET /federation/destinations.
type AdminDestination struct {
	Destination  string `json:"destination"`
	Queued       int64  `json:"queued"`
	OldestTS     *int64 `json:"oldest_ts"`
	Failures     int    `json:"failures"`
	RetryTS      *int64 `json:"retry_ts"`
	BackingOff   bool   `json:"backing_off"`
	LeaseHolder  string `json:"lease_holder,omitempty"`
	LeaseUntilTS *int64 `json:"lease_until_ts"`
	TxnID        string `json:"txn_id,omitempty"`
	TxnAttempts  int    `json:"txn_attempts"`
	LastStatus   int    `json:"last_status"`
}

func (a *api) adminDestinations(w http.ResponseWriter, r *http.Request) {
	limit, err := adminLimit(r, 100, federation.MaxAdminDestinations)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	ds, err := a.cfg.AdminFederation.Destinations(r.Context(), limit)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	now := time.Now()
	out := make([]AdminDestination, 0, len(ds))
	for _, d := range ds {
		out = append(out, AdminDestination{
			Destination: d.Destination, Queued: d.Queued, OldestTS: adminTime(d.Oldest), Failures: d.Failures,
			RetryTS: adminTime(d.RetryAt), BackingOff: d.RetryAt != nil && d.RetryAt.After(now),
			LeaseHolder: d.LeaseHolder, LeaseUntilTS: adminTime(d.LeaseUntil),
			TxnID: d.TxnID, TxnAttempts: d.TxnAttempts, LastStatus: d.LastStatus,
		})
	}
	audit(r.Context(), "action", "destinations", "limit", limit)
	writeJSON(w, http.StatusOK, map[string]any{"destinations": out})
}

// adminDestinationParam reads the path's server name.
func adminDestinationParam(r *http.Request) (string, error) {
	d, err := pathParam(r, "destination")
	if err != nil {
		return "", err
	}
	if err := matrix.ValidateServerName(d); err != nil {
		return "", matrix.Errorf(matrix.InvalidParam, "Invalid destination: %v.", err)
	}
	return d, nil
}

func (a *api) adminRetryDestination(w http.ResponseWriter, r *http.Request) {
	d, err := adminDestinationParam(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	found, err := a.cfg.AdminFederation.RetryNow(r.Context(), d)
	audit(r.Context(), "action", "retry destination", "destination", d, "found", found)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if a.cfg.AdminRetryNow != nil {
		a.cfg.AdminRetryNow(d)
	}
	writeJSON(w, http.StatusOK, map[string]bool{"found": found})
}

func (a *api) adminDropDestination(w http.ResponseWriter, r *http.Request) {
	d, err := adminDestinationParam(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	n, err := a.cfg.AdminFederation.DropQueue(r.Context(), d)
	audit(r.Context(), "action", "drop destination queue", "destination", d, "dropped", n)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]int{"dropped": n})
}

// AdminRemoteDevice is one cached device of a remote user.
type AdminRemoteDevice struct {
	DeviceID    string          `json:"device_id"`
	DisplayName string          `json:"display_name,omitempty"`
	Keys        json.RawMessage `json:"keys,omitempty"`
}

// AdminRemoteDeviceList is the answer of GET /users/{userId}/device_list.
type AdminRemoteDeviceList struct {
	UserID       string              `json:"user_id"`
	Tracked      bool                `json:"tracked"`
	StreamID     int64               `json:"stream_id"`
	Stale        bool                `json:"stale"`
	SeenStreamID int64               `json:"seen_stream_id"`
	Failures     int                 `json:"failures"`
	RetryTS      *int64              `json:"retry_ts"`
	UpdatedTS    *int64              `json:"updated_ts"`
	Devices      []AdminRemoteDevice `json:"devices"`
}

func (a *api) adminRemoteDeviceList(w http.ResponseWriter, r *http.Request) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	st, err := a.devices.AdminRemoteCache(r.Context(), userID)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	out := AdminRemoteDeviceList{UserID: userID, Tracked: st.Tracked, StreamID: st.StreamID, Stale: st.Stale, SeenStreamID: st.SeenStreamID,
		Failures: st.Failures, RetryTS: adminTime(st.RetryAt), UpdatedTS: adminTime(&st.UpdatedAt), Devices: []AdminRemoteDevice{}}
	if !st.Stale {
		out.RetryTS = nil // the time of a past resync's claim, not a plan
	}
	for _, d := range st.Devices {
		out.Devices = append(out.Devices, AdminRemoteDevice{DeviceID: d.DeviceID, DisplayName: d.DisplayName, Keys: d.Keys})
	}
	audit(r.Context(), "action", "remote device list", "user_id", userID)
	writeJSON(w, http.StatusOK, out)
}

func (a *api) adminForceResync(w http.ResponseWriter, r *http.Request) {
	userID, err := pathParam(r, "userId")
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	found, err := a.devices.AdminForceResync(r.Context(), userID)
	audit(r.Context(), "action", "force resync", "user_id", userID, "found", found)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if found && a.cfg.AdminKickResync != nil {
		a.cfg.AdminKickResync()
	}
	writeJSON(w, http.StatusOK, map[string]bool{"found": found})
}
