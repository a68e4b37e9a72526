package inbox

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails a run whose tests leave goroutines behind.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
