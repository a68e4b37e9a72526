package inbox

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// Server names are DNS names, which ignore ASCII case: recipients on
// "B.TEST" and "b.test" are one destination, sent to once.
func TestRemoteDestinationsIgnoreCase(t *testing.T) {
	a, err := BuildAccept("a.test", TxnKey{UserID: "@alice:a.test", DeviceID: "A", EventType: "m.test", TxnID: "t"}, Messages{
		"@x:B.TEST": {"D1": json.RawMessage(`{}`)},
		"@y:b.test": {"D2": json.RawMessage(`{}`)},
		"@z:B.Test": {"D3": json.RawMessage(`{}`)},
	})
	require.NoError(t, err)
	require.NotEmpty(t, a.Remote)
	for _, e := range a.Remote {
		require.Equal(t, "b.test", e.Destination)
	}
	require.Len(t, a.Remote, 1, "one EDU carries all three")
}
