package httpapi

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/matrix"
)

// Simplified sliding sync (MSC4186) for extension-only connections: the
// to_device and e2ee extensions (issue 17). The rules are devicesync's
// (Extensions, ParsePos, FormatPos); this file parses and answers.

// SlidingSyncPath is the client route of simplified sliding sync.
const SlidingSyncPath = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"

// maxSlidingSyncBytes bounds a sliding-sync body: an extension-only one is
// a few hundred bytes; room lists, refused anyway, may be larger.
const maxSlidingSyncBytes = 1 << 20

// slidingSyncRequest is the part of an MSC4186 request body todeviced reads.
// Other fields (txn_id, unsubscribe_rooms, …) and other extensions
// (account_data, receipts, typing, …) are ignored, as the MSC lets servers.
type slidingSyncRequest struct {
	ConnID            string                     `json:"conn_id"`
	Lists             map[string]json.RawMessage `json:"lists"`
	RoomSubscriptions map[string]json.RawMessage `json:"room_subscriptions"`
	Extensions        struct {
		ToDevice *struct {
			Enabled *bool   `json:"enabled"`
			Since   *string `json:"since"`
			Limit   *int    `json:"limit"`
		} `json:"to_device"`
		E2EE *struct {
			Enabled *bool `json:"enabled"`
		} `json:"e2ee"`
	} `json:"extensions"`
}

type slidingToDevice struct {
	NextBatch string        `json:"next_batch"`
	Events    []inbox.Event `json:"events"`
}

type slidingE2EE struct {
	DeviceLists   *deviceListsBody `json:"device_lists,omitempty"`
	OneTimeKeys   *map[string]int  `json:"device_one_time_keys_count,omitempty"`
	FallbackTypes *[]string        `json:"device_unused_fallback_key_types,omitempty"`
}

type slidingExtensions struct {
	ToDevice *slidingToDevice `json:"to_device,omitempty"`
	E2EE     *slidingE2EE     `json:"e2ee,omitempty"`
}

type slidingSyncBody struct {
	Pos        string            `json:"pos"`
	Lists      struct{}          `json:"lists"`
	Rooms      struct{}          `json:"rooms"`
	Extensions slidingExtensions `json:"extensions"`
}

// readSlidingSync reads a sliding-sync body into an ExtensionsRequest for
// dev (without Lists and Timeout, which the caller sets).
func readSlidingSync(w http.ResponseWriter, r *http.Request, dev inbox.Recipient) (slidingSyncRequest, devicesync.ExtensionsRequest, error) {
	var b slidingSyncRequest
	if err := readObject(w, r, maxSlidingSyncBytes, &b); err != nil {
		return b, devicesync.ExtensionsRequest{}, err
	}
	req := devicesync.ExtensionsRequest{Device: dev}
	if td := b.Extensions.ToDevice; td != nil && td.Enabled != nil && *td.Enabled {
		ext := &devicesync.ToDeviceExtension{}
		if td.Since != nil {
			ext.Since = *td.Since
		}
		if td.Limit != nil {
			if *td.Limit < 1 {
				return b, req, matrix.Errorf(matrix.InvalidParam, "extensions.to_device.limit must be a positive integer.")
			}
			ext.Limit = min(*td.Limit, devicesync.MaxToDeviceLimit)
		}
		req.ToDevice = ext
	}
	if e := b.Extensions.E2EE; e != nil && e.Enabled != nil && *e.Enabled {
		req.E2EE = true
	}
	return b, req, nil
}

// slidingExtensionsBody renders what Extensions found.
func slidingExtensionsBody(res devicesync.ExtensionsResult) slidingExtensions {
	var out slidingExtensions
	if td := res.ToDevice; td != nil {
		out.ToDevice = &slidingToDevice{NextBatch: td.NextBatch, Events: td.Events}
	}
	if e := res.E2EE; e != nil {
		out.E2EE = &slidingE2EE{}
		if e.DeviceLists != nil {
			out.E2EE.DeviceLists = &deviceListsBody{Changed: e.DeviceLists.Changed, Left: e.DeviceLists.Left}
		}
		if e.OneTimeKeys != nil {
			out.E2EE.OneTimeKeys = &e.OneTimeKeys
		}
		if e.FallbackTypes != nil {
			out.E2EE.FallbackTypes = &e.FallbackTypes
		}
	}
	return out
}

// slidingSync serves POST …/org.matrix.simplified_msc3575/sync for
// extension-only connections. The pos is stateless (devicesync.FormatPos):
// any replica continues any connection. Its token is read from the
// database first (requireDevice), not taken from memory as /sync's: an
// e2ee-only connection reads no inbox whose round trip could guard it, and
// serving the request again as another device would mean keeping its body.
func (a *api) slidingSync(w http.ResponseWriter, r *http.Request) {
	d := deviceFrom(r)
	dev := inbox.Recipient{UserID: d.UserID, NID: d.NID}
	q := r.URL.Query()
	timeout, err := parseTimeout(q.Get("timeout"))
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	b, req, err := readSlidingSync(w, r, dev)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if len(b.Lists) > 0 || len(b.RoomSubscriptions) > 0 {
		writeError(w, r, a.log, matrix.Errorf(matrix.InvalidParam,
			"todeviced serves only extension-only sliding-sync connections (to_device, e2ee): lists and room_subscriptions must be empty; the homeserver serves room lists."))
		return
	}
	now := time.Now()
	epoch := a.devsync.Epoch()
	if s := q.Get("pos"); s != "" {
		p, err := devicesync.ParsePos(epoch, dev, b.ConnID, s, now)
		if err != nil {
			writeError(w, r, a.log, err)
			return
		}
		req.Lists = devicesync.ListsAt(p.Lists)
		// A new connection is answered at once, as Synapse does; a
		// continuing one waits for something new.
		req.Timeout = timeout
	}
	answer := func(w http.ResponseWriter, r *http.Request, res devicesync.ExtensionsResult, err error) {
		if err != nil {
			if errors.Is(err, devicesync.ErrDeviceGone) {
				err = matrix.Errorf(matrix.UnknownToken, "The device was deleted.")
			}
			writeError(w, r, a.log, err)
			return
		}
		writeJSON(w, http.StatusOK, slidingSyncBody{
			Pos:        devicesync.FormatPos(epoch, dev, b.ConnID, devicesync.Pos{Lists: res.ListsHead, Issued: now.Unix()}),
			Extensions: slidingExtensionsBody(res),
		})
	}
	// A waiting HTTP/1.1 connection is parked, as a /sync's is (park.go;
	// the body has been read): the wait holds no goroutine.
	if req.Timeout > 0 && a.cfg.Parking.park(w, r, func(ps *parkedSync) {
		finish := func(res devicesync.ExtensionsResult, err error) {
			defer ps.recoverWorker()
			if errors.Is(err, errClientGone) {
				ps.abandon()
				return
			}
			ps.respond(func(w http.ResponseWriter, r *http.Request) { answer(w, r, res, err) })
		}
		wait, err := a.devsync.ParkExtensions(ps.ctx(), req, finish)
		if err != nil {
			finish(devicesync.ExtensionsResult{}, err)
			return
		}
		ps.setWait(wait)
	}) {
		return
	}
	res, err := a.devsync.Extensions(r.Context(), req)
	answer(w, r, res, err)
}

type internalExtensionsBody struct {
	Extensions           slidingExtensions `json:"extensions"`
	DeviceListsNextBatch string            `json:"device_lists_next_batch"`
}

// internalSyncExtensions serves a homeserver's own sliding sync: the
// to_device and e2ee extensions of one device in one call, with long-poll.
// The body is the client's sliding-sync request (only its extensions are
// read); the homeserver keeps the device-list position in its own
// connection state and passes it back as device_lists_since.
func (a *api) internalSyncExtensions(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	d, timeout, err := a.internalSyncDevice(r)
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	_, req, err := readSlidingSync(w, r, inbox.Recipient{UserID: d.UserID, NID: d.NID})
	if err != nil {
		writeError(w, r, a.log, err)
		return
	}
	if s := q.Get("device_lists_since"); s != "" {
		if req.Lists, err = devicesync.ParseLists(a.devsync.Epoch(), s); err != nil {
			writeError(w, r, a.log, err)
			return
		}
	}
	req.Timeout = timeout
	res, err := a.devsync.Extensions(r.Context(), req)
	if err != nil {
		if errors.Is(err, devicesync.ErrDeviceGone) {
			err = matrix.Errorf(matrix.NotFound, "The device was deleted.")
		}
		writeError(w, r, a.log, err)
		return
	}
	writeJSON(w, http.StatusOK, internalExtensionsBody{
		Extensions:           slidingExtensionsBody(res),
		DeviceListsNextBatch: devicesync.FormatLists(a.devsync.Epoch(), res.ListsHead),
	})
}
