package matrixfed

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails a run whose tests leave goroutines behind (tarpit peers,
// key servers and clients must all be gone when the tests end).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
