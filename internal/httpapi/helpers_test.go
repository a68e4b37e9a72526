package httpapi_test

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"
)

// mustField returns the raw JSON at a path of object keys.
func mustField(t *testing.T, body []byte, path ...string) json.RawMessage {
	t.Helper()
	raw := json.RawMessage(body)
	for _, k := range path {
		var m map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &m))
		v, ok := m[k]
		require.True(t, ok, "missing %q in %s", k, raw)
		raw = v
	}
	return raw
}
