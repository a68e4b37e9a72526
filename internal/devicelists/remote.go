package devicelists

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Federation paths of the device-list queries.
const (
	UserDevicesPath = "/_matrix/federation/v1/user/devices/"
	UserKeysPath    = "/_matrix/federation/v1/user/keys/query"
)

// Defaults of FederationConfig.
const (
	// DefaultResyncPoll is how often the resync worker looks for due
	// resyncs on its own. Gaps found on this replica kick it at once; the
	// poll covers resyncs that other replicas scheduled, and backoffs that
	// ended.
	DefaultResyncPoll = 10 * time.Second
	// DefaultResyncConcurrency bounds the resyncs running at once.
	DefaultResyncConcurrency = 8
	// DefaultResyncTimeout bounds one GET /user/devices.
	DefaultResyncTimeout = 30 * time.Second
	// resyncLease is how long a claimed resync is not handed out again: a
	// replica that dies mid-resync delays it by at most this much.
	resyncLease = 2 * time.Minute
	// sweepBatch bounds one step of the sweep of remote caches.
	sweepBatch = 1000
)

// FederationConfig configures the federation half of device lists.
type FederationConfig struct {
	// Remote asks other servers (the wiring fills it with the signed
	// federation client).
	Remote Remote
	// RetryDelay spaces the retries of a resync that failed (while the
	// user's server is down): the wait after the given number of failures
	// in a row. Nil waits DefaultResyncPoll.
	RetryDelay func(failures int) time.Duration
	// PollInterval (DefaultResyncPoll).
	PollInterval time.Duration
	// Concurrency (DefaultResyncConcurrency).
	Concurrency int
	// Timeout of one resync request (DefaultResyncTimeout).
	Timeout time.Duration
}

// Federation is the federation half of device lists: it takes other
// servers' device-list EDUs (federation's DeviceListHandler), keeps the
// cache of remote users' device lists fresh (the resync worker), and
// answers key queries for remote users from that cache or their server (a
// RemoteKeys).
type Federation struct {
	svc  *Service
	cfg  FederationConfig
	log  *slog.Logger
	m    *Metrics
	kick chan struct{}
}

// EnableFederation turns on the federation half: remote users' keys are
// queried through it, and membership changes kick its resync worker (run
// it with RunResync).
func (r *Service) EnableFederation(cfg FederationConfig) *Federation {
	if cfg.RetryDelay == nil {
		cfg.RetryDelay = func(int) time.Duration { return DefaultResyncPoll }
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = DefaultResyncPoll
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultResyncConcurrency
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultResyncTimeout
	}
	f := &Federation{svc: r, cfg: cfg, log: r.log, m: r.m, kick: make(chan struct{}, 1)}
	r.remote = f
	r.fed = f
	return f
}

// Kick makes the resync worker look for due resyncs now.
func (f *Federation) Kick() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// ---------------------------------------------------------------------------
// Inbound EDUs.
// ---------------------------------------------------------------------------

type deviceListUpdateJSON struct {
	UserID      string          `json:"user_id"`
	DeviceID    string          `json:"device_id"`
	StreamID    *int64          `json:"stream_id"`
	PrevID      []int64         `json:"prev_id"`
	Deleted     bool            `json:"deleted"`
	DisplayName string          `json:"device_display_name"`
	Keys        json.RawMessage `json:"keys"`
}

type signingKeyUpdateJSON struct {
	UserID         string          `json:"user_id"`
	MasterKey      json.RawMessage `json:"master_key"`
	SelfSigningKey json.RawMessage `json:"self_signing_key"`
}

// HandleDeviceListEDU takes an m.device_list_update or m.signing_key_update
// from the authenticated origin (federation's DeviceListHandler). EDUs about
// users of another server, or malformed ones, are dropped and counted; an
// error means storing failed and the origin should retry.
func (f *Federation) HandleDeviceListEDU(ctx context.Context, origin, eduType string, content json.RawMessage) error {
	var out RemoteOutcome
	var err error
	switch eduType {
	case matrix.EDUDeviceListUpdate:
		out, err = f.deviceListUpdate(ctx, origin, content)
	case matrix.EDUSigningKeyUpdate:
		out, err = f.signingKeyUpdate(ctx, origin, content)
	default:
		return nil
	}
	if err != nil {
		return err
	}
	f.m.received.WithLabelValues(string(out)).Inc()
	switch out {
	case RemoteApplied:
		f.m.changes.WithLabelValues(ChangeRemote).Inc()
	case RemoteResync:
		f.Kick()
	}
	return nil
}

// sendingDeviceFields are the content fields by which to-device messages
// name the device that sent them: a key or secret request names the
// requesting device, key verification and withheld-key notices the device
// they come from.
var sendingDeviceFields = map[string]string{
	"m.room_key_request":         "requesting_device_id",
	"m.secret.request":           "requesting_device_id",
	"m.key.verification.request": "from_device",
	"m.key.verification.ready":   "from_device",
	"m.key.verification.start":   "from_device",
	"m.room_key.withheld":        "from_device",
}

// maxSendingDevices bounds the devices of one EDU looked up in the cache.
const maxSendingDevices = 4

// SendingDevices looks at the to-device messages a remote sender sent
// (federation's DeviceListHandler): when one names a sending device that the
// cached list of the sender lacks, that list is stale (an update was lost,
// or has not arrived yet), so it is resynced now, as Synapse does, instead
// of at the user's next update. The messages are delivered either way; a
// failure here is logged, not returned.
func (f *Federation) SendingDevices(ctx context.Context, sender, eventType string, messages map[string]map[string]json.RawMessage) {
	field, ok := sendingDeviceFields[eventType]
	if !ok {
		return
	}
	var devices []string
messages:
	for _, byDevice := range messages {
		for _, content := range byDevice {
			var c map[string]json.RawMessage
			var d string
			if json.Unmarshal(content, &c) != nil || json.Unmarshal(c[field], &d) != nil ||
				d == "" || len(d) > MaxDeviceIDBytes || slices.Contains(devices, d) {
				continue
			}
			if devices = append(devices, d); len(devices) == maxSendingDevices {
				break messages
			}
		}
	}
	for _, d := range devices {
		stale, err := f.svc.store.ResyncIfUnknownDevice(ctx, sender, d)
		if err != nil {
			f.log.WarnContext(ctx, "checking a remote sending device failed", "user_id", sender, "err", err)
			return
		}
		if stale {
			f.log.InfoContext(ctx, "resyncing a remote device list: a to-device message names a device not in it",
				"user_id", sender, "device_id", d, "type", eventType)
			f.Kick()
			return
		}
	}
}

// remoteUser parses a user id of the origin's; anything else is rejected.
func (f *Federation) remoteUser(ctx context.Context, origin, eduType, userID string) bool {
	uid, err := matrix.ParseUserID(userID)
	switch {
	case err != nil:
		f.log.InfoContext(ctx, "rejected device-list EDU", "origin", origin, "edu_type", eduType, "reason", "malformed user id")
	case uid.Server != origin:
		f.log.InfoContext(ctx, "rejected device-list EDU", "origin", origin, "edu_type", eduType, "reason", "user of another server", "user_id", userID)
	default:
		return true
	}
	return false
}

func (f *Federation) deviceListUpdate(ctx context.Context, origin string, content json.RawMessage) (RemoteOutcome, error) {
	var c deviceListUpdateJSON
	if err := json.Unmarshal(content, &c); err != nil || c.StreamID == nil || matrix.ValidateDeviceID(c.DeviceID) != nil {
		f.log.InfoContext(ctx, "rejected device-list EDU", "origin", origin, "edu_type", matrix.EDUDeviceListUpdate, "reason", "malformed")
		return RemoteRejected, nil
	}
	if !f.remoteUser(ctx, origin, matrix.EDUDeviceListUpdate, c.UserID) {
		return RemoteRejected, nil
	}
	u := RemoteUpdate{UserID: c.UserID, DeviceID: c.DeviceID, StreamID: *c.StreamID, PrevIDs: c.PrevID, Deleted: c.Deleted}
	if !c.Deleted {
		if len(c.DisplayName) <= MaxDisplayNameBytes && matrix.ValidateText(c.DisplayName) == nil {
			u.DisplayName = c.DisplayName
		}
		if len(c.Keys) > 0 && string(c.Keys) != "null" {
			k, err := checkKeyObject("keys", c.Keys, c.UserID, c.DeviceID)
			if err != nil {
				f.log.InfoContext(ctx, "rejected device-list EDU", "origin", origin, "edu_type", matrix.EDUDeviceListUpdate, "reason", err.Error())
				return RemoteRejected, nil
			}
			u.Keys = k
		}
	}
	out, err := f.svc.store.ApplyRemoteUpdate(ctx, u)
	if err != nil {
		return "", fmt.Errorf("applying device-list update of %s: %w", c.UserID, err)
	}
	if out == RemoteResync {
		f.log.DebugContext(ctx, "device-list update needs a resync", "user_id", c.UserID, "stream_id", u.StreamID, "prev_id", u.PrevIDs)
	}
	return out, nil
}

func (f *Federation) signingKeyUpdate(ctx context.Context, origin string, content json.RawMessage) (RemoteOutcome, error) {
	var c signingKeyUpdateJSON
	if err := json.Unmarshal(content, &c); err != nil {
		f.log.InfoContext(ctx, "rejected device-list EDU", "origin", origin, "edu_type", matrix.EDUSigningKeyUpdate, "reason", "malformed")
		return RemoteRejected, nil
	}
	if !f.remoteUser(ctx, origin, matrix.EDUSigningKeyUpdate, c.UserID) {
		return RemoteRejected, nil
	}
	keys := map[string]json.RawMessage{}
	for typ, raw := range map[string]json.RawMessage{MasterKey: c.MasterKey, SelfSigningKey: c.SelfSigningKey} {
		if len(raw) == 0 || string(raw) == "null" {
			continue
		}
		k, err := checkKeyObject(typ+" key", raw, c.UserID, "")
		if err != nil {
			f.log.InfoContext(ctx, "rejected device-list EDU", "origin", origin, "edu_type", matrix.EDUSigningKeyUpdate, "reason", err.Error())
			return RemoteRejected, nil
		}
		keys[typ] = k
	}
	if len(keys) == 0 {
		return RemoteRejected, nil
	}
	out, err := f.svc.store.ApplyRemoteSigningKeys(ctx, c.UserID, keys)
	if err != nil {
		return "", fmt.Errorf("applying cross-signing keys of %s: %w", c.UserID, err)
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Resync.
// ---------------------------------------------------------------------------

// userDevicesJSON is the answer of GET /user/devices/{userId}.
type userDevicesJSON struct {
	UserID         string           `json:"user_id"`
	StreamID       *int64           `json:"stream_id"`
	Devices        []userDeviceJSON `json:"devices"`
	MasterKey      json.RawMessage  `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage  `json:"self_signing_key,omitempty"`
}

type userDeviceJSON struct {
	DeviceID    string          `json:"device_id"`
	Keys        json.RawMessage `json:"keys"`
	DisplayName string          `json:"device_display_name,omitempty"`
}

// RunResync resyncs stale remote users until ctx ends: at once when kicked
// (a gap, a new remote user), and every PollInterval.
func (f *Federation) RunResync(ctx context.Context) {
	t := time.NewTicker(f.cfg.PollInterval)
	defer t.Stop()
	for {
		f.ResyncDue(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-f.kick:
		}
	}
}

// ResyncDue resyncs every stale user whose retry time has come, a bounded
// number at once. A server that does not answer is not asked again in the
// same round: its other users wait for their backoff.
func (f *Federation) ResyncDue(ctx context.Context) {
	for ctx.Err() == nil {
		jobs, err := f.svc.store.ClaimResyncs(ctx, 4*f.cfg.Concurrency, resyncLease)
		if err != nil {
			if ctx.Err() == nil {
				f.log.ErrorContext(ctx, "claiming device-list resyncs failed", "err", err)
			}
			return
		}
		if len(jobs) == 0 {
			return
		}
		var mu sync.Mutex
		down := map[string]error{}
		sem := make(chan struct{}, f.cfg.Concurrency)
		var wg sync.WaitGroup
		for _, j := range jobs {
			server := serverOf(j.UserID)
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				mu.Lock()
				prior := down[server]
				mu.Unlock()
				err := prior
				if err == nil {
					err = f.resync(ctx, j)
					if err != nil && !answered(err) {
						mu.Lock()
						down[server] = err
						mu.Unlock()
					}
				}
				if err != nil {
					f.failed(ctx, j, err)
				}
			})
		}
		wg.Wait()
	}
}

// answered reports whether a request's error came with an answer (the
// server is up, it just did not like the request).
func answered(err error) bool {
	var se *StatusError
	return errors.As(err, &se) || errors.Is(err, ErrBadResponse)
}

func serverOf(userID string) string {
	uid, _ := matrix.ParseUserID(userID)
	return uid.Server
}

func (f *Federation) failed(ctx context.Context, j ResyncJob, err error) {
	if ctx.Err() != nil {
		return // stopping: the claim lapses and another round retries
	}
	f.m.resyncs.WithLabelValues(ResyncFailed).Inc()
	wait := f.cfg.RetryDelay(j.Failures + 1)
	f.log.WarnContext(ctx, "device-list resync failed", "user_id", j.UserID, "failures", j.Failures+1,
		"retry_in", wait.String(), "err", err)
	if err := f.svc.store.FailResync(ctx, j.UserID, j.Failures+1, wait); err != nil && ctx.Err() == nil {
		f.log.ErrorContext(ctx, "recording failed device-list resync failed", "user_id", j.UserID, "err", err)
	}
}

// resync fetches a user's whole device list from their server and replaces
// the cache with it.
func (f *Federation) resync(ctx context.Context, j ResyncJob) error {
	server := serverOf(j.UserID)
	rctx, cancel := context.WithTimeout(ctx, f.cfg.Timeout)
	body, err := f.cfg.Remote.UserDevices(rctx, server, j.UserID)
	cancel()
	if err != nil {
		return err
	}
	var resp userDevicesJSON
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	l, err := snapshot(j.UserID, resp)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	res, err := f.svc.store.CompleteResync(ctx, l)
	if err != nil {
		return fmt.Errorf("storing the device list of %s: %w", j.UserID, err)
	}
	f.m.resyncs.WithLabelValues(ResyncOK).Inc()
	if res.Changed {
		f.m.changes.WithLabelValues(ChangeRemote).Inc()
	}
	if res.StillStale {
		// An update newer than the snapshot came in meanwhile: fetch again,
		// after a pause so that a busy user cannot keep us fetching.
		wait := f.cfg.RetryDelay(1)
		if err := f.svc.store.FailResync(ctx, j.UserID, 0, wait); err != nil {
			return fmt.Errorf("rescheduling the resync of %s: %w", j.UserID, err)
		}
	}
	f.log.DebugContext(ctx, "device list resynced", "user_id", j.UserID, "stream_id", l.StreamID,
		"devices", len(l.Devices), "changed", res.Changed)
	return nil
}

// snapshot checks a /user/devices answer: it must be about the user, and
// every device and key must name the user (and its device). Devices whose
// keys do not are left out rather than trusted.
func snapshot(userID string, resp userDevicesJSON) (RemoteDeviceList, error) {
	if resp.UserID != userID {
		return RemoteDeviceList{}, fmt.Errorf("answer about %q, not %q", resp.UserID, userID)
	}
	if resp.StreamID == nil {
		return RemoteDeviceList{}, errors.New("answer without stream_id")
	}
	l := RemoteDeviceList{UserID: userID, StreamID: *resp.StreamID}
	seen := map[string]bool{}
	for _, d := range resp.Devices {
		if matrix.ValidateDeviceID(d.DeviceID) != nil || seen[d.DeviceID] {
			continue
		}
		seen[d.DeviceID] = true
		dk := DeviceKeys{UserID: userID, DeviceID: d.DeviceID}
		if len(d.DisplayName) <= MaxDisplayNameBytes && matrix.ValidateText(d.DisplayName) == nil {
			dk.DisplayName = d.DisplayName
		}
		if len(d.Keys) > 0 && string(d.Keys) != "null" {
			k, err := checkKeyObject("keys", d.Keys, userID, d.DeviceID)
			if err != nil {
				continue
			}
			dk.Keys = k
		}
		l.Devices = append(l.Devices, dk)
	}
	slices.SortFunc(l.Devices, func(a, b DeviceKeys) int { return cmp.Compare(a.DeviceID, b.DeviceID) })
	for _, k := range []struct {
		raw json.RawMessage
		dst *json.RawMessage
		typ string
	}{{resp.MasterKey, &l.MasterKey, MasterKey}, {resp.SelfSigningKey, &l.SelfSigningKey, SelfSigningKey}} {
		if len(k.raw) == 0 || string(k.raw) == "null" {
			continue
		}
		c, err := checkKeyObject(k.typ+" key", k.raw, userID, "")
		if err != nil {
			return RemoteDeviceList{}, err
		}
		*k.dst = c
	}
	return l, nil
}

// SweepRemote drops the caches of remote users no local user shares an
// encrypted room with any more, in bounded steps over every tracked user.
// Membership changes drop them at once; the sweep is the safety net.
func (f *Federation) SweepRemote(ctx context.Context) error {
	after, total := "", 0
	for {
		next, n, err := f.svc.store.SweepRemoteUsers(ctx, after, sweepBatch)
		if err != nil {
			return err
		}
		total += n
		if next == "" {
			break
		}
		after = next
	}
	if total > 0 {
		f.log.InfoContext(ctx, "dropped remote device lists no longer shared", "users", total)
	}
	return nil
}

// RefreshGauges updates the gauge of cached remote users.
func (f *Federation) RefreshGauges(ctx context.Context) error {
	n, err := f.svc.store.RemoteUserCount(ctx)
	if err != nil {
		return err
	}
	f.m.remoteUsers.Set(float64(n))
	return nil
}

// ---------------------------------------------------------------------------
// Remote key queries.
// ---------------------------------------------------------------------------

// QueryKeys answers a key query for users of server (RemoteKeys): users
// whose cache is fresh from the cache, the others with one POST
// /user/keys/query to their server. On an error the result still holds
// what the cache had.
func (f *Federation) QueryKeys(ctx context.Context, server string, query map[string][]string) (RemoteKeysResult, error) {
	res := RemoteKeysResult{
		DeviceKeys: map[string]map[string]json.RawMessage{}, MasterKeys: map[string]json.RawMessage{},
		SelfSigningKeys: map[string]json.RawMessage{},
	}
	users := make([]string, 0, len(query))
	for u := range query {
		users = append(users, u)
	}
	slices.Sort(users)
	cached, err := f.svc.store.RemoteDeviceLists(ctx, users)
	if err != nil {
		return res, fmt.Errorf("reading cached device lists: %w", err)
	}
	missing := map[string][]string{}
	for _, u := range users {
		l, ok := cached[u]
		if !ok {
			missing[u] = query[u]
			continue
		}
		devs := map[string]json.RawMessage{}
		for _, d := range l.Devices {
			if d.Keys == nil || (len(query[u]) > 0 && !slices.Contains(query[u], d.DeviceID)) {
				continue
			}
			k, err := withDisplayName(d.Keys, d.DisplayName)
			if err != nil {
				return res, err
			}
			devs[d.DeviceID] = k
		}
		res.DeviceKeys[u] = devs
		if l.MasterKey != nil {
			res.MasterKeys[u] = l.MasterKey
		}
		if l.SelfSigningKey != nil {
			res.SelfSigningKeys[u] = l.SelfSigningKey
		}
	}
	if len(missing) == 0 {
		return res, nil
	}
	body, err := f.cfg.Remote.QueryKeys(ctx, server, missing)
	if err != nil {
		return res, err
	}
	var resp RemoteKeysResult
	if err := json.Unmarshal(body, &resp); err != nil {
		return res, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	for u, devs := range resp.DeviceKeys {
		if _, asked := missing[u]; !asked {
			continue
		}
		out := map[string]json.RawMessage{}
		for d, k := range devs {
			if c, err := checkKeyObject("keys", k, u, d); err == nil {
				out[d] = c
			}
		}
		res.DeviceKeys[u] = out
	}
	for u, k := range resp.MasterKeys {
		if _, asked := missing[u]; asked {
			if c, err := checkKeyObject("master key", k, u, ""); err == nil {
				res.MasterKeys[u] = c
			}
		}
	}
	for u, k := range resp.SelfSigningKeys {
		if _, asked := missing[u]; asked {
			if c, err := checkKeyObject("self-signing key", k, u, ""); err == nil {
				res.SelfSigningKeys[u] = c
			}
		}
	}
	return res, nil
}

// ---------------------------------------------------------------------------
// Serving other servers.
// ---------------------------------------------------------------------------

// UserDevices is the answer of GET /_matrix/federation/v1/user/devices.
type UserDevices struct {
	UserID         string           `json:"user_id"`
	StreamID       int64            `json:"stream_id"`
	Devices        []userDeviceJSON `json:"devices"`
	MasterKey      json.RawMessage  `json:"master_key,omitempty"`
	SelfSigningKey json.RawMessage  `json:"self_signing_key,omitempty"`
}

// UserDevices answers GET /user/devices/{userId} for a local user: the
// devices with keys (display names only with SetFederationDeviceNames), the
// master and self-signing keys, and as stream_id the user's last
// m.device_list_update (which the next one names as prev_id).
func (r *Service) UserDevices(ctx context.Context, userID string) (UserDevices, error) {
	if _, err := r.requireLocal(userID); err != nil {
		return UserDevices{}, err
	}
	l, err := r.store.UserDeviceList(ctx, userID)
	if err != nil {
		return UserDevices{}, err
	}
	sigs, err := r.store.Signatures(ctx, []string{userID})
	if err != nil {
		return UserDevices{}, err
	}
	out := UserDevices{UserID: userID, StreamID: l.StreamID, Devices: make([]userDeviceJSON, 0, len(l.Devices)),
		MasterKey: l.MasterKey, SelfSigningKey: l.SelfSigningKey}
	if l.MasterKey != nil {
		out.MasterKey = mergeMasterSignatures(l.MasterKey, userID, sigs, "")
	}
	for _, d := range l.Devices {
		dev := userDeviceJSON{DeviceID: d.DeviceID, Keys: mergeDeviceSignatures(d.Keys, userID, d.DeviceID, sigs, "")}
		if r.federationNames {
			dev.DisplayName = d.DisplayName
		}
		out.Devices = append(out.Devices, dev)
	}
	return out, nil
}

// QueryLocalKeys answers POST /user/keys/query: the device keys and public
// cross-signing keys of the local users asked for (never a user-signing
// key; users of other servers are not answered for; display names only
// with SetFederationDeviceNames).
func (r *Service) QueryLocalKeys(ctx context.Context, query map[string][]string) (RemoteKeysResult, error) {
	local := map[string][]string{}
	for u, devs := range query {
		if uid, err := matrix.ParseUserID(u); err == nil && uid.Server == r.serverName {
			// A device id no store could hold names no device: left out
			// rather than sent to the database.
			local[u] = slices.DeleteFunc(devs, func(d string) bool { return matrix.ValidateDeviceID(d) != nil })
		}
	}
	var res KeysResult
	res.DeviceKeys, res.MasterKeys = map[string]map[string]json.RawMessage{}, map[string]json.RawMessage{}
	res.SelfSigningKeys, res.UserSigningKeys = map[string]json.RawMessage{}, map[string]json.RawMessage{}
	if err := r.localKeys(ctx, "", local, r.federationNames, &res); err != nil {
		return RemoteKeysResult{}, err
	}
	return RemoteKeysResult{DeviceKeys: res.DeviceKeys, MasterKeys: res.MasterKeys, SelfSigningKeys: res.SelfSigningKeys}, nil
}
