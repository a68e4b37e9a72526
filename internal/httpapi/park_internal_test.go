package httpapi

import (
	"bufio"
	"net"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/wakeup"
)

// A panic in a parked request's work, on a worker under no middleware,
// is answered 500 on its connection instead of ending the process.
func TestParkedWorkerPanicAnswers500(t *testing.T) {
	p := NewParking(nil, wakeup.NewHub(), ParkingConfig{})
	server, client := net.Pipe()
	defer client.Close()
	ps := &parkedSync{p: p, conn: server, header: http.Header{},
		rec: &statusRecorder{m: NewMetrics(nil), log: p.log}, req: p.standIn("/sync", http.MethodGet)}
	p.parked[ps] = struct{}{}
	go func() {
		defer ps.recoverWorker()
		panic("boom")
	}()
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode)
	require.Equal(t, 0, p.Len())
}
