package httpapi

import (
	"bufio"
	"net"
	"net/http"
	"testing"
	"time"

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

// A connection handed back again and again stays one backConn around its
// socket, and reads, in order, what the client pipelined behind the
// latest parked request, then whatever an earlier hand-back had not yet
// given out, then the socket.
func TestHandedBackConnectionsDoNotNest(t *testing.T) {
	server, client := net.Pipe()
	defer client.Close()
	defer server.Close()

	require.Same(t, server, handedBack(server, nil, 0), "nothing to add: the socket itself")

	first := handedBack(server, []byte("abcdef"), 0).(*backConn)
	require.Same(t, server, first.Conn)
	buf := make([]byte, 2)
	n, err := first.Read(buf)
	require.NoError(t, err)
	require.Equal(t, "ab", string(buf[:n]))
	require.False(t, sweepable(first), "bytes wait in front of the socket")

	second := handedBack(first, []byte("XY"), time.Minute).(*backConn)
	require.Same(t, server, second.Conn, "unwrapped, not nested")
	require.Same(t, server, socket(second))
	go func() { _, _ = client.Write([]byte("!")) }()
	var got []byte
	for len(got) < len("XYcdef!") {
		b := make([]byte, 16)
		n, err := second.Read(b)
		require.NoError(t, err)
		got = append(got, b[:n]...)
	}
	require.Equal(t, "XYcdef!", string(got))

	third := handedBack(server, nil, time.Minute).(*backConn)
	require.True(t, sweepable(third))
	require.True(t, sweepable(server))
}
