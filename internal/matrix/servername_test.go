package matrix

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestValidateServerName(t *testing.T) {
	// The examples of valid names from the spec appendix "Server Name".
	for _, ok := range []string{"matrix.org", "matrix.org:8888", "1.2.3.4", "1.2.3.4:1234", "[1234:5678::abcd]", "[1234:5678::abcd]:5678", "localhost", "a-b.c"} {
		require.NoError(t, ValidateServerName(ok), ok)
	}
	n, err := ParseServerName("1.2.3")
	require.NoError(t, err)
	require.False(t, n.IsIP(), "1.2.3 is a DNS name, not an IPv4 literal")
}

func TestServerNameRefusals(t *testing.T) {
	for _, bad := range []string{"", "a.test:", "a.test:0", "a.test:65536", "a.test:123456", "a_b.test", "[::1", "[::1]x", "[fe80::1%eth0]", "a.test:8a", string(make([]byte, MaxServerNameLength+1))} {
		require.Error(t, ValidateServerName(bad), "%q", bad)
	}
}
