package main

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestBadFlagsExitTwo(t *testing.T) {
	t.Setenv("TODEVICED_INTERNAL_SECRET", "")
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--internal-secret", "s", "extra"},
		{}, // no internal secret
		{"--internal-secret", "s", "--users", "1", "--devices-per-user", "1", "--fanout", "2"},
		{"--internal-secret", "s", "--baseline"},
	} {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithCancel(context.Background())
		code := run(ctx, cancel, args, &out, &errOut)
		cancel()
		assert.Equal(t, 2, code, "%v: %s", args, errOut.String())
		assert.Empty(t, out.String())
	}
}

func TestHelpExitsZero(t *testing.T) {
	var out, errOut bytes.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	assert.Equal(t, 0, run(ctx, cancel, []string{"--help"}, &out, &errOut))
	assert.Contains(t, errOut.String(), "-drain-timeout")
}
