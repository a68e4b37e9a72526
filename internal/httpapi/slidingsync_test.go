package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicesync"
	"github.com/todeviced/todeviced/internal/httpapi"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/server"
	"github.com/todeviced/todeviced/internal/servertest"
)

// ssResponse is the part of a sliding-sync answer todeviced fills.
type ssResponse struct {
	Pos        string `json:"pos"`
	Extensions struct {
		ToDevice *struct {
			NextBatch string             `json:"next_batch"`
			Events    []servertest.Event `json:"events"`
		} `json:"to_device"`
		E2EE *struct {
			DeviceLists *struct {
				Changed []string `json:"changed"`
				Left    []string `json:"left"`
			} `json:"device_lists"`
		} `json:"e2ee"`
	} `json:"extensions"`
}

// ssBody is an extension-only request: to_device with since (when
// toDevice), e2ee (when e2ee).
func ssBody(toDevice bool, since string, limit int, e2ee bool) map[string]any {
	ext := map[string]any{}
	if toDevice {
		td := map[string]any{"enabled": true, "limit": limit}
		if since != "" {
			td["since"] = since
		}
		ext["to_device"] = td
	}
	if e2ee {
		ext["e2ee"] = map[string]any{"enabled": true}
	}
	// What clients send besides: empty lists, other extensions.
	ext["account_data"] = map[string]any{"enabled": true}
	ext["typing"] = map[string]any{"enabled": true}
	return map[string]any{"lists": map[string]any{}, "extensions": ext}
}

func rawSS(ctx context.Context, t testing.TB, in *servertest.Instance, token, pos string, timeout time.Duration, body any) servertest.Response {
	t.Helper()
	q := url.Values{}
	if pos != "" {
		q.Set("pos", pos)
	}
	q.Set("timeout", fmt.Sprint(timeout.Milliseconds()))
	return in.DoContext(ctx, t, http.MethodPost, httpapi.SlidingSyncPath+"?"+q.Encode(), token, body)
}

func ss(t *testing.T, in *servertest.Instance, token, pos string, timeout time.Duration, body any) ssResponse {
	t.Helper()
	r := rawSS(context.Background(), t, in, token, pos, timeout, body)
	require.Equal(t, http.StatusOK, r.Status, "sliding sync: %s", r.Body)
	var s ssResponse
	require.NoError(t, json.Unmarshal(r.Body, &s))
	require.NotEmpty(t, s.Pos)
	return s
}

func sendN(t *testing.T, in *servertest.Instance, from, to int, txn string) {
	t.Helper()
	for i := from; i < to; i++ {
		in.Send(t, "tok-alice", "m.test", fmt.Sprintf("%s%d", txn, i), map[string]map[string]any{bob: {"B1": map[string]any{"n": i}}})
	}
}

func TestSlidingSyncToDevicePagesAndAcknowledges(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		sendN(t, in, 0, 250, "p")

		const long = 10 * time.Minute // a request that waited would hang the test
		s1 := ss(t, in, "tok-bob", "", long, ssBody(true, "", 100, false))
		require.Equal(t, seq(0, 100), ns(s1.Extensions.ToDevice.Events))
		require.Nil(t, s1.Extensions.E2EE, "e2ee not asked for")
		s2 := ss(t, in, "tok-bob", s1.Pos, long, ssBody(true, s1.Extensions.ToDevice.NextBatch, 500, false))
		require.Equal(t, seq(100, 200), ns(s2.Extensions.ToDevice.Events), "a limit over 100 is 100")
		s3 := ss(t, in, "tok-bob", s2.Pos, long, ssBody(true, s2.Extensions.ToDevice.NextBatch, 30, false))
		require.Equal(t, seq(200, 230), ns(s3.Extensions.ToDevice.Events))

		// An old since is the same batch again: nothing was lost with a lost answer.
		again := ss(t, in, "tok-bob", s2.Pos, long, ssBody(true, s2.Extensions.ToDevice.NextBatch, 30, false))
		require.Equal(t, seq(200, 230), ns(again.Extensions.ToDevice.Events))

		s4 := ss(t, in, "tok-bob", s3.Pos, long, ssBody(true, s3.Extensions.ToDevice.NextBatch, 100, false))
		require.Equal(t, seq(230, 250), ns(s4.Extensions.ToDevice.Events))
		s5 := ss(t, in, "tok-bob", s4.Pos, 0, ssBody(true, s4.Extensions.ToDevice.NextBatch, 100, false))
		require.Empty(t, s5.Extensions.ToDevice.Events, "the since acknowledged everything")

		// The acknowledgement is the inbox's: a new connection (no pos, no
		// since) and the classic /sync both find it empty.
		require.Empty(t, ss(t, in, "tok-bob", "", 0, ssBody(true, "", 100, false)).Extensions.ToDevice.Events)
		require.Empty(t, in.Sync(t, "tok-bob", "", 0).ToDevice.Events)

		// With the extension off nothing is read or acknowledged.
		sendN(t, in, 250, 251, "q")
		off := ss(t, in, "tok-bob", s5.Pos, 0, ssBody(false, "", 0, true))
		require.Nil(t, off.Extensions.ToDevice)
		require.Equal(t, []int{250}, ns(in.Sync(t, "tok-bob", "", 0).ToDevice.Events))
	})
}

func TestSlidingSyncSinceFromTheFutureDeletesNothing(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		sendN(t, in, 0, 3, "f")
		s1 := ss(t, in, "tok-bob", "", 0, ssBody(true, "", 100, false))
		require.Equal(t, seq(0, 3), ns(s1.Extensions.ToDevice.Events))

		// The same device and epoch, a position never issued.
		tok := s1.Extensions.ToDevice.NextBatch
		parts := strings.Split(tok, "_")
		parts[3] = "999999999999"
		future := strings.Join(parts, "_")
		r := ss(t, in, "tok-bob", s1.Pos, 10*time.Minute, ssBody(true, future, 100, false))
		require.Equal(t, seq(0, 3), ns(r.Extensions.ToDevice.Events), "nothing deleted; answered from the oldest pending message")
		require.NotEqual(t, future, r.Extensions.ToDevice.NextBatch, "a next_batch this server issued")

		// The classic /sync keeps its rule: 400 and nothing deleted.
		cr := in.RawSync(context.Background(), t, "tok-bob", future, 0)
		require.Equal(t, http.StatusBadRequest, cr.Status)
		require.Equal(t, "M_INVALID_PARAM", cr.Errcode(t))

		// The issued next_batch acknowledges normally.
		done := ss(t, in, "tok-bob", r.Pos, 0, ssBody(true, r.Extensions.ToDevice.NextBatch, 100, false))
		require.Empty(t, done.Extensions.ToDevice.Events)
	})
}

func TestSlidingSyncAndClassicSyncShareOneInbox(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		var got []int
		sendN(t, in, 0, 150, "s")

		c1 := in.Sync(t, "tok-bob", "", 0) // classic: 0-99
		got = append(got, ns(c1.ToDevice.Events)...)
		sendN(t, in, 150, 160, "s")
		// Switch to the extension with the classic next_batch as since.
		e1 := ss(t, in, "tok-bob", "", 0, ssBody(true, c1.NextBatch, 100, false))
		got = append(got, ns(e1.Extensions.ToDevice.Events)...)
		sendN(t, in, 160, 170, "s")
		// Back to classic with the extension's next_batch as since.
		c2 := in.Sync(t, "tok-bob", e1.Extensions.ToDevice.NextBatch, 0)
		got = append(got, ns(c2.ToDevice.Events)...)
		sendN(t, in, 170, 175, "s")
		// And to the extension again, on the connection it had.
		e2 := ss(t, in, "tok-bob", e1.Pos, 0, ssBody(true, c2.NextBatch, 100, false))
		got = append(got, ns(e2.Extensions.ToDevice.Events)...)
		c3 := in.Sync(t, "tok-bob", e2.Extensions.ToDevice.NextBatch, 0)
		require.Empty(t, c3.ToDevice.Events)
		require.Equal(t, seq(0, 175), got, "every message once, in order, across the switches")
	})
}

// shareEncryptedRoom puts alice and bob in an encrypted room, so bob's
// device changes are in alice's device_lists.
func shareEncryptedRoom(t *testing.T, in *servertest.Instance) {
	t.Helper()
	const room = "/_todeviced/internal/v1/rooms/%21r%3Alocalhost"
	require.Equal(t, 200, in.Do(t, "PUT", room+"/encryption", servertest.Secret, map[string]any{}).Status)
	r := in.Do(t, "PUT", room+"/members", servertest.Secret, map[string]any{"members": map[string]any{
		alice: map[string]any{"membership": "join", "stream_ordering": 1},
		bob:   map[string]any{"membership": "join", "stream_ordering": 2},
	}})
	require.Equal(t, 200, r.Status, "%s", r.Body)
}

func TestSlidingSyncE2EEDeviceLists(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		shareEncryptedRoom(t, in)

		first := ss(t, in, "tok-alice", "", 0, ssBody(false, "", 0, true))
		require.NotNil(t, first.Extensions.E2EE)
		require.Nil(t, first.Extensions.E2EE.DeviceLists, "a new connection has no device-list delta")
		require.Nil(t, first.Extensions.ToDevice)
		e2ee := rawSS(context.Background(), t, in, "tok-alice", "", 0, ssBody(false, "", 0, true)).Body
		require.JSONEq(t, `{"signed_curve25519":0}`, string(mustField(t, e2ee, "extensions", "e2ee", "device_one_time_keys_count")))
		require.JSONEq(t, `[]`, string(mustField(t, e2ee, "extensions", "e2ee", "device_unused_fallback_key_types")))

		in.PutDevice(t, bob, "B2", "tok-bob2")
		next := ss(t, in, "tok-alice", first.Pos, 0, ssBody(false, "", 0, true))
		require.Equal(t, []string{bob}, next.Extensions.E2EE.DeviceLists.Changed)
		require.Empty(t, next.Extensions.E2EE.DeviceLists.Left)
		quiet := ss(t, in, "tok-alice", next.Pos, 0, ssBody(false, "", 0, true))
		require.Empty(t, quiet.Extensions.E2EE.DeviceLists.Changed, "the pos moved past the change")

		// Another connection of the same device keeps its own position.
		other := map[string]any{"conn_id": "encryption", "extensions": map[string]any{"e2ee": map[string]any{"enabled": true}}}
		o1 := ss(t, in, "tok-alice", "", 0, other)
		r := rawSS(context.Background(), t, in, "tok-alice", o1.Pos, 0, ssBody(false, "", 0, true))
		require.Equal(t, 400, r.Status, "a pos of connection \"encryption\" used without conn_id")
		require.Equal(t, "M_UNKNOWN_POS", r.Errcode(t))
		in.PutDevice(t, bob, "B3", "tok-bob3")
		o2 := ss(t, in, "tok-alice", o1.Pos, 0, other)
		require.Equal(t, []string{bob}, o2.Extensions.E2EE.DeviceLists.Changed)
	})
}

func TestSlidingSyncUnknownAndExpiredPos(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		first := ss(t, in, "tok-bob", "", 0, ssBody(true, "", 100, true))
		parts := strings.Split(first.Pos, "_")
		require.Len(t, parts, 4)
		epoch := parts[0]
		nid := func() int64 {
			// The device's NID is inside its to-device token.
			var n int64
			_, err := fmt.Sscan(strings.Split(first.Extensions.ToDevice.NextBatch, "_")[1], &n)
			require.NoError(t, err)
			return n
		}()
		dev := inbox.Recipient{UserID: bob, NID: nid}
		now := time.Now()
		for name, pos := range map[string]string{
			"garbage":         "nonsense",
			"altered":         parts[0] + "_" + parts[1] + "_" + parts[2] + "_0000000000000000",
			"another epoch":   devicesync.FormatPos("zz"+epoch, dev, "", devicesync.Pos{Issued: now.Unix()}),
			"another device":  devicesync.FormatPos(epoch, inbox.Recipient{UserID: alice, NID: nid}, "", devicesync.Pos{Issued: now.Unix()}),
			"expired":         devicesync.FormatPos(epoch, dev, "", devicesync.Pos{Issued: now.Add(-devicesync.PosMaxAge - time.Minute).Unix()}),
			"from the future": devicesync.FormatPos(epoch, dev, "", devicesync.Pos{Issued: now.Add(time.Hour).Unix()}),
			"lists ahead":     devicesync.FormatPos(epoch, dev, "", devicesync.Pos{Lists: 1 << 40, Issued: now.Unix()}),
		} {
			r := rawSS(context.Background(), t, in, "tok-bob", pos, 0, ssBody(true, "", 100, true))
			require.Equal(t, 400, r.Status, "%s: %s", name, r.Body)
			require.Equal(t, "M_UNKNOWN_POS", r.Errcode(t), name)
		}
		// A pos just inside its age is good.
		old := devicesync.FormatPos(epoch, dev, "", devicesync.Pos{Issued: now.Add(-devicesync.PosMaxAge + time.Hour).Unix()})
		ss(t, in, "tok-bob", old, 0, ssBody(true, "", 100, true))
		// Starting over (no pos) always works.
		ss(t, in, "tok-bob", "", 0, ssBody(true, "", 100, true))
	})
}

func TestSlidingSyncRefusesWhatItDoesNotServe(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, bob, "B1", "tok-bob")
		for name, c := range map[string]struct {
			body    any
			errcode string
		}{
			"lists":              {map[string]any{"lists": map[string]any{"all": map[string]any{"ranges": [][]int{{0, 10}}}}}, "M_INVALID_PARAM"},
			"room subscriptions": {map[string]any{"room_subscriptions": map[string]any{"!r:localhost": map[string]any{}}}, "M_INVALID_PARAM"},
			"limit 0":            {map[string]any{"extensions": map[string]any{"to_device": map[string]any{"enabled": true, "limit": 0}}}, "M_INVALID_PARAM"},
			"since malformed":    {map[string]any{"extensions": map[string]any{"to_device": map[string]any{"enabled": true, "since": "x"}}}, "M_INVALID_PARAM"},
			"not json":           {"{", "M_NOT_JSON"},
			"lists not object":   {`{"lists":[]}`, "M_BAD_JSON"},
		} {
			r := rawSS(context.Background(), t, in, "tok-bob", "", 0, c.body)
			require.Equal(t, 400, r.Status, "%s: %s", name, r.Body)
			require.Equal(t, c.errcode, r.Errcode(t), name)
		}
		require.Equal(t, 401, rawSS(context.Background(), t, in, "", "", 0, ssBody(true, "", 1, true)).Status)
		// Empty lists, other extensions and an empty body are fine.
		for _, body := range []any{nil, `{}`, map[string]any{"lists": map[string]any{}, "room_subscriptions": map[string]any{}, "extensions": map[string]any{"receipts": map[string]any{"enabled": true}}}} {
			r := rawSS(context.Background(), t, in, "tok-bob", "", 0, body)
			require.Equal(t, 200, r.Status, "%v: %s", body, r.Body)
			require.JSONEq(t, `{}`, string(mustField(t, r.Body, "extensions")))
		}
	})
}

func TestSlidingSyncLongPollWakes(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		url := b.NewURL(t)
		a := servertest.Start(t, servertest.Config(url), server.Options{})
		waiter := a // the long-poll's instance: another replica where the backend allows
		if b.MultiInstance {
			waiter = servertest.Start(t, servertest.Config(url), server.Options{})
		}
		a.PutDevice(t, alice, "A1", "tok-alice")
		a.PutDevice(t, bob, "B1", "tok-bob")
		shareEncryptedRoom(t, a)
		body := func(since string) any { return ssBody(true, since, 100, true) }
		s := ss(t, waiter, "tok-bob", "", 0, body(""))

		// A to-device message wakes it.
		got := make(chan ssResponse, 1)
		go func() { got <- ss(t, waiter, "tok-bob", s.Pos, 10*time.Minute, body(s.Extensions.ToDevice.NextBatch)) }()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return waiter.Hub().Len() == 1 })
		a.Send(t, "tok-alice", "m.test", "w1", map[string]map[string]any{bob: {"B1": map[string]any{"n": 1}}})
		r := <-got
		require.Equal(t, []int{1}, ns(r.Extensions.ToDevice.Events))
		require.Empty(t, r.Extensions.E2EE.DeviceLists.Changed)

		// A device-list change wakes it, the to_device extension on or off.
		for _, td := range []bool{true, false} {
			go func() {
				got <- ss(t, waiter, "tok-bob", r.Pos, 10*time.Minute, ssBody(td, r.Extensions.ToDevice.NextBatch, 100, true))
			}()
			servertest.WaitFor(t, "the long-poll to wait", func() bool { return waiter.Hub().Len() == 1 })
			a.PutDevice(t, alice, fmt.Sprint("A-", td), fmt.Sprint("tok-alice-", td))
			r2 := <-got
			require.Equal(t, []string{alice}, r2.Extensions.E2EE.DeviceLists.Changed, "to_device %v", td)
			if td {
				require.Empty(t, r2.Extensions.ToDevice.Events)
				r = r2
			} else {
				require.Nil(t, r2.Extensions.ToDevice)
				r.Pos = r2.Pos
			}
		}

		// With the to_device extension off, a to-device message does not
		// end the wait (it is not this connection's to report): the
		// long-poll runs to its timeout.
		const wait = 1500 * time.Millisecond
		began := time.Now()
		go func() { got <- ss(t, waiter, "tok-bob", r.Pos, wait, ssBody(false, "", 0, true)) }()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return waiter.Hub().Len() == 1 })
		a.Send(t, "tok-alice", "m.test", "w2", map[string]map[string]any{bob: {"B1": map[string]any{"n": 2}}})
		quiet := <-got
		require.GreaterOrEqual(t, time.Since(began), wait-50*time.Millisecond, "an e2ee-only long-poll ended early")
		require.Nil(t, quiet.Extensions.ToDevice)
		require.Empty(t, quiet.Extensions.E2EE.DeviceLists.Changed)
	})
}

func TestSlidingSyncPosIsGoodOnEveryReplica(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		r1, r2 := twoReplicas(t, b)
		r1.PutDevice(t, alice, "A1", "tok-alice")
		r1.PutDevice(t, bob, "B1", "tok-bob")
		shareEncryptedRoom(t, r1)
		sendN(t, r1, 0, 120, "r")

		// Each request of one connection to another replica: nothing is
		// kept between requests, so nothing is lost or repeated.
		var got []int
		s := ss(t, r1, "tok-bob", "", 0, ssBody(true, "", 100, true))
		got = append(got, ns(s.Extensions.ToDevice.Events)...)
		r1.PutDevice(t, alice, "A2", "tok-alice2")
		s = ss(t, r2, "tok-bob", s.Pos, 0, ssBody(true, s.Extensions.ToDevice.NextBatch, 100, true))
		got = append(got, ns(s.Extensions.ToDevice.Events)...)
		require.Equal(t, []string{alice}, s.Extensions.E2EE.DeviceLists.Changed)
		s = ss(t, r1, "tok-bob", s.Pos, 0, ssBody(true, s.Extensions.ToDevice.NextBatch, 100, true))
		require.Empty(t, s.Extensions.ToDevice.Events)
		require.Empty(t, s.Extensions.E2EE.DeviceLists.Changed)
		require.Equal(t, seq(0, 120), got)
	})
}

func TestInternalSyncExtensions(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		shareEncryptedRoom(t, in)
		sendN(t, in, 0, 3, "i")
		type answer struct {
			ssResponse
			DeviceListsNextBatch string `json:"device_lists_next_batch"`
		}
		call := func(q string, body any) (servertest.Response, answer) {
			r := in.Do(t, "POST", "/_todeviced/internal/v1/sync/extensions?user_id=%40bob%3Alocalhost&device_id=B1"+q, servertest.Secret, body)
			var a answer
			if r.Status == 200 {
				require.NoError(t, json.Unmarshal(r.Body, &a))
			}
			return r, a
		}
		// The client's body, passed through as the homeserver got it.
		r, a1 := call("", ssBody(true, "", 2, true))
		require.Equal(t, 200, r.Status, "%s", r.Body)
		require.Equal(t, []int{0, 1}, ns(a1.Extensions.ToDevice.Events))
		require.Nil(t, a1.Extensions.E2EE.DeviceLists, "no device_lists_since: no delta")
		require.NotEmpty(t, a1.DeviceListsNextBatch)

		// Long-poll: a device-list change ends it.
		done := make(chan answer, 1)
		go func() {
			_, a := call("&timeout=600000&device_lists_since="+url.QueryEscape(a1.DeviceListsNextBatch), ssBody(false, "", 0, true))
			done <- a
		}()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
		in.PutDevice(t, alice, "A2", "tok-alice2")
		a2 := <-done
		require.Equal(t, []string{alice}, a2.Extensions.E2EE.DeviceLists.Changed)
		require.Nil(t, a2.Extensions.ToDevice)

		// The to-device since acknowledges, as the client's would.
		r, a3 := call("&device_lists_since="+url.QueryEscape(a2.DeviceListsNextBatch), ssBody(true, a1.Extensions.ToDevice.NextBatch, 100, true))
		require.Equal(t, 200, r.Status, "%s", r.Body)
		require.Equal(t, []int{2}, ns(a3.Extensions.ToDevice.Events))
		require.Empty(t, a3.Extensions.E2EE.DeviceLists.Changed)

		for q, code := range map[string]string{
			"&device_lists_since=zz": "M_INVALID_PARAM",
			"&device_lists_since=" + strings.Split(a1.DeviceListsNextBatch, "_")[0] + "_99999999": "M_UNKNOWN_POS",
			"&timeout=-1": "M_INVALID_PARAM",
		} {
			r, _ = call(q, ssBody(true, "", 100, true))
			require.Equal(t, 400, r.Status, q)
			require.Equal(t, code, r.Errcode(t), q)
		}
		r = in.Do(t, "POST", "/_todeviced/internal/v1/sync/extensions?user_id=%40bob%3Alocalhost&device_id=NOPE", servertest.Secret, `{}`)
		require.Equal(t, 404, r.Status)
		r = in.Do(t, "POST", "/_todeviced/internal/v1/sync/extensions?user_id=%40bob%3Alocalhost&device_id=B1", "tok-bob", `{}`)
		require.Equal(t, 401, r.Status, "a client token is not the internal secret")
	})
}

// A sliding-sync long-poll has a body, unlike the classic /sync: the body
// deadline (--request-body-timeout) ends with the body and never cuts the
// wait that follows.
func TestSlidingSyncLongPollOutlivesTheBodyDeadline(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		cfg := servertest.Config(b.NewURL(t))
		cfg.RequestBodyTimeout = 100 * time.Millisecond
		in := servertest.Start(t, cfg, server.Options{})
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		s := ss(t, in, "tok-bob", "", 0, ssBody(true, "", 100, true))
		got := make(chan ssResponse, 1)
		go func() {
			got <- ss(t, in, "tok-bob", s.Pos, 10*time.Minute, ssBody(true, s.Extensions.ToDevice.NextBatch, 100, true))
		}()
		servertest.WaitFor(t, "the long-poll to wait", func() bool { return in.Hub().Len() == 1 })
		time.Sleep(500 * time.Millisecond) // five body deadlines
		in.Send(t, "tok-alice", "m.test", "late", map[string]map[string]any{bob: {"B1": map[string]any{"n": 9}}})
		require.Equal(t, []int{9}, ns((<-got).Extensions.ToDevice.Events))
	})
}

// A waiting sliding-sync request over HTTP/1.1 is parked like a /sync: the
// wait holds no goroutine, and the message that wakes it is answered on
// the parked connection with a pos and a next_batch that work.
func TestSlidingSyncWaitParks(t *testing.T) {
	servertest.EachBackend(t, func(t *testing.T, b servertest.Backend) {
		in := start(t, b)
		in.PutDevice(t, alice, "A1", "tok-alice")
		in.PutDevice(t, bob, "B1", "tok-bob")
		first := ss(t, in, "tok-bob", "", 0, ssBody(true, "", 100, true))

		got := make(chan servertest.Response, 1)
		go func() {
			got <- rawSS(context.Background(), t, in, "tok-bob", first.Pos, time.Minute, ssBody(true, first.Extensions.ToDevice.NextBatch, 100, true))
		}()
		servertest.WaitFor(t, "the sliding sync to park", func() bool {
			return in.Server.Parking().Len() == 1 && in.Server.Hub().Len() == 1
		})
		sendN(t, in, 0, 1, "w")
		r := <-got
		require.Equal(t, http.StatusOK, r.Status, "%s", r.Body)
		var s ssResponse
		require.NoError(t, json.Unmarshal(r.Body, &s))
		require.Equal(t, []int{0}, ns(s.Extensions.ToDevice.Events))
		require.NotNil(t, s.Extensions.E2EE)
		next := ss(t, in, "tok-bob", s.Pos, 0, ssBody(true, s.Extensions.ToDevice.NextBatch, 100, true))
		require.Empty(t, next.Extensions.ToDevice.Events, "the parked answer's next_batch acknowledged it")
	})
}
