package matrixfed

import (
	"crypto/ed25519"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadOrCreateSigningKeyCreates(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "signing.key")

	key, created, err := LoadOrCreateSigningKey(path)
	require.NoError(t, err)
	require.True(t, created)
	require.Regexp(t, `^ed25519:a_[A-Z2-7]{8}$`, key.ServerKeyID)
	require.Len(t, key.Private, ed25519.PrivateKeySize)

	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, fs.FileMode(0o600), info.Mode().Perm())

	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Regexp(t, regexp.MustCompile(`^ed25519 a_[A-Z2-7]{8} [A-Za-z0-9+/]{43}\n$`), string(data))

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "no temporary file may be left behind")

	again, created, err := LoadOrCreateSigningKey(path)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, key.ServerKeyID, again.ServerKeyID)
	require.Equal(t, key.Private, again.Private)
}

func TestLoadOrCreateSigningKeyDistinctKeys(t *testing.T) {
	a, _, err := LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "a.key"))
	require.NoError(t, err)
	b, _, err := LoadOrCreateSigningKey(filepath.Join(t.TempDir(), "b.key"))
	require.NoError(t, err)
	require.NotEqual(t, a.Private, b.Private)
	require.NotEqual(t, a.ServerKeyID, b.ServerKeyID)
}

func TestLoadOrCreateSigningKeyConcurrentCreatorsAgree(t *testing.T) {
	path := filepath.Join(t.TempDir(), "signing.key")
	const n = 8
	keys := make([]SigningKey, n)
	createdCount := 0
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k, created, err := LoadOrCreateSigningKey(path)
			require.NoError(t, err)
			keys[i] = k
			if created {
				mu.Lock()
				createdCount++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	require.Equal(t, 1, createdCount, "exactly one caller creates the file")
	for _, k := range keys[1:] {
		require.Equal(t, keys[0].ServerKeyID, k.ServerKeyID)
		require.Equal(t, keys[0].Private, k.Private)
	}
}

func TestLoadSynapseFormat(t *testing.T) {
	want := specKey(t)
	path := filepath.Join(t.TempDir(), "homeserver.signing.key")
	content := "\ned25519 1 " + specSeed + "\ned25519 other AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n"
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))

	key, created, err := LoadOrCreateSigningKey(path)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, "ed25519:1", key.ServerKeyID)
	require.Equal(t, want, key.Private)
	require.Equal(t, want.Public(), key.Public())

	// Padded base64 and no trailing newline work too.
	padded := "ed25519 a_Bcd9 " + EncodeBase64(want.Seed()) + "="
	key, err = ParseSigningKey([]byte(padded))
	require.NoError(t, err)
	require.Equal(t, "ed25519:a_Bcd9", key.ServerKeyID)
	require.Equal(t, want, key.Private)
}

func TestLoadDendriteFormat(t *testing.T) {
	want := specKey(t)
	block := pem.EncodeToMemory(&pem.Block{
		Type:    "MATRIX PRIVATE KEY",
		Headers: map[string]string{"Key-ID": "ed25519:dendrite1"},
		Bytes:   want.Seed(),
	})
	path := filepath.Join(t.TempDir(), "matrix_key.pem")
	require.NoError(t, os.WriteFile(path, block, 0o600))

	key, created, err := LoadOrCreateSigningKey(path)
	require.NoError(t, err)
	require.False(t, created)
	require.Equal(t, "ed25519:dendrite1", key.ServerKeyID)
	require.Equal(t, want, key.Private)
}

func TestFormatSigningKeyRoundTrip(t *testing.T) {
	key, err := NewSigningKey("ed25519:1", specKey(t).Seed())
	require.NoError(t, err)
	require.Equal(t, "ed25519 1 "+EncodeBase64(key.Private.Seed())+"\n", string(FormatSigningKey(key)))
	back, err := ParseSigningKey(FormatSigningKey(key))
	require.NoError(t, err)
	require.Equal(t, key, back)
}

func TestLoadSigningKeyMalformed(t *testing.T) {
	seed := EncodeBase64(make([]byte, 32))
	pemWith := func(typ string, headers map[string]string, body []byte) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: typ, Headers: headers, Bytes: body}))
	}
	cases := map[string]struct{ content, wantMsg string }{
		"empty":             {"", "contains no key"},
		"blank lines only":  {"\n\n  \n", "contains no key"},
		"two fields":        {"ed25519 " + seed, "got 2 fields"},
		"four fields":       {"ed25519 a b " + seed, "got 4 fields"},
		"bad base64":        {"ed25519 a !!!!", "decoding seed"},
		"short seed":        {"ed25519 a " + EncodeBase64(make([]byte, 31)), "seed has 31 bytes"},
		"other algorithm":   {"curve25519 a " + seed, "not of the form ed25519:<version>"},
		"bad version":       {"ed25519 a-b " + seed, "version must be non-empty"},
		"error on 2nd line": {"\nfoo", "line 2"},
		"pem wrong type":    {pemWith("PRIVATE KEY", map[string]string{"Key-ID": "ed25519:a"}, make([]byte, 32)), `want "MATRIX PRIVATE KEY"`},
		"pem no key id":     {pemWith("MATRIX PRIVATE KEY", nil, make([]byte, 32)), "no Key-ID header"},
		"pem bad key id":    {pemWith("MATRIX PRIVATE KEY", map[string]string{"Key-ID": "rsa:a"}, make([]byte, 32)), "not of the form"},
		"pem short seed":    {pemWith("MATRIX PRIVATE KEY", map[string]string{"Key-ID": "ed25519:a"}, make([]byte, 64)), "seed has 64 bytes"},
		"pem truncated":     {"-----BEGIN MATRIX PRIVATE KEY-----\nAAAA\n", "malformed PEM"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bad.key")
			require.NoError(t, os.WriteFile(path, []byte(tc.content), 0o600))
			_, created, err := LoadOrCreateSigningKey(path)
			require.Error(t, err)
			require.False(t, created)
			require.Contains(t, err.Error(), path, "the error must name the file")
			require.Contains(t, err.Error(), tc.wantMsg)
			// A malformed file is reported, never replaced.
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, tc.content, string(data))
		})
	}
}

func TestLoadOrCreateSigningKeyUnwritableDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing-dir", "signing.key")
	_, created, err := LoadOrCreateSigningKey(path)
	require.Error(t, err)
	require.False(t, created)
	require.Contains(t, err.Error(), path)
}

func TestWriteNewFileNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "k")
	require.NoError(t, os.WriteFile(path, []byte("original"), 0o644))
	err := writeNewFile(path, []byte("new"))
	require.True(t, errors.Is(err, fs.ErrExist), "got %v", err)
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, "original", string(data))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, entries, 1, "the temporary file is removed")
}

func TestNewSigningKeyValidation(t *testing.T) {
	_, err := NewSigningKey("ed25519:", make([]byte, 32))
	require.Error(t, err)
	_, err = NewSigningKey("ed25519", make([]byte, 32))
	require.Error(t, err)
	_, err = NewSigningKey("ed25519:a b", make([]byte, 32))
	require.Error(t, err)
	k, err := NewSigningKey("ed25519:A_z9", make([]byte, 32))
	require.NoError(t, err)
	require.Equal(t, "ed25519:A_z9", k.ServerKeyID)
}
