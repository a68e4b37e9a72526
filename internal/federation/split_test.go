package federation

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
)

// delivered lists, in order, the n of every EDU of the transactions the
// destination took (ok reports whether it took one).
func delivered(t *testing.T, attempts []attempt, ok func(body string) bool) []int {
	var out []int
	for _, a := range attempts {
		if !ok(a.body) {
			continue
		}
		var txn struct {
			EDUs []struct {
				Content struct{ N int } `json:"content"`
			} `json:"edus"`
		}
		require.NoError(t, json.Unmarshal([]byte(a.body), &txn))
		for _, e := range txn.EDUs {
			out = append(out, e.Content.N)
		}
	}
	return out
}

// poisonClient fails every transaction that carries an EDU with n == poison
// with code, and takes every other one.
func poisonClient(poison, code int) func(string) error {
	marker := fmt.Sprintf(`{"n":%d}`, poison)
	return func(body string) error {
		if strings.Contains(body, marker) {
			return status(code)
		}
		return nil
	}
}

func TestSenderIsolatesAPoisonEDU(t *testing.T) {
	for _, tc := range []struct {
		code   int
		reason string
	}{
		{http.StatusInternalServerError, DropPoison},
		{http.StatusBadRequest, DropRejected},
	} {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, nil, nil)
				h.client.byBody = poisonClient(17, tc.code)
				defer h.stop()
				for n := range 40 {
					h.src.add("b.test", n)
				}
				h.queue("b.test", 40)
				time.Sleep(time.Hour)
				synctest.Wait()

				want := slices.DeleteFunc(seqInts(0, 41), func(n int) bool { return n == 17 })
				got := delivered(t, h.client.list(), func(b string) bool { return poisonClient(17, tc.code)(b) == nil })
				require.Equal(t, want, got, "everything but the poison EDU arrives, once, in order")
				require.Zero(t, h.src.queued("b.test"))
				require.Equal(t, 1.0, testutil.ToFloat64(h.m.EDUsDropped.WithLabelValues(tc.reason)))
				// Each EDU was only ever sent with its own bytes.
				for _, a := range h.client.list() {
					require.NotContains(t, a.body, `"n":17},{`, "the poison EDU is alone by the end")
				}
			})
		})
	}
}

func TestSenderDropsNothingWhileTheDestinationFailsEverything(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		down := true
		h := newHarness(t, nil, nil)
		h.client.byBody = func(string) error {
			mu.Lock()
			defer mu.Unlock()
			if down {
				return status(http.StatusInternalServerError)
			}
			return nil
		}
		defer h.stop()
		for n := range 12 {
			h.src.add("b.test", n)
		}
		h.queue("b.test", 12)
		time.Sleep(6 * time.Hour)
		synctest.Wait()
		require.Equal(t, 13, h.src.queued("b.test"), "nothing is dropped for a destination that fails everything")
		mu.Lock()
		down = false
		mu.Unlock()
		time.Sleep(2 * time.Hour)
		synctest.Wait()
		require.Zero(t, h.src.queued("b.test"))
		got := delivered(t, h.client.list(), func(string) bool { return true })
		require.ElementsMatch(t, seqInts(0, 13), got[len(got)-13:], "every EDU arrives once the destination is back")
		require.Zero(t, testutil.ToFloat64(h.m.EDUsDropped.WithLabelValues(DropPoison)))
	})
}

func seqInts(from, to int) []int {
	var out []int
	for i := from; i < to; i++ {
		out = append(out, i)
	}
	return out
}
