package matrixfed

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// pemBlockType is the PEM type Dendrite uses for its signing key file.
const pemBlockType = "MATRIX PRIVATE KEY"

// SigningKey is a server's ed25519 signing key together with its key ID.
type SigningKey struct {
	// ServerKeyID is the full key ID, algorithm included: "ed25519:abc".
	ServerKeyID string
	// Private is the ed25519 private key (seed and public half).
	Private ed25519.PrivateKey
}

// Public returns the public half of the key.
func (k SigningKey) Public() ed25519.PublicKey {
	return k.Private.Public().(ed25519.PublicKey)
}

// NewSigningKey builds a SigningKey from a key ID ("ed25519:abc") and a
// 32-byte ed25519 seed, validating both.
func NewSigningKey(keyID string, seed []byte) (SigningKey, error) {
	if err := validateKeyID(keyID); err != nil {
		return SigningKey{}, err
	}
	if len(seed) != ed25519.SeedSize {
		return SigningKey{}, fmt.Errorf("ed25519 seed has %d bytes, want %d", len(seed), ed25519.SeedSize)
	}
	return SigningKey{ServerKeyID: keyID, Private: ed25519.NewKeyFromSeed(seed)}, nil
}

// validateKeyID checks an "ed25519:<version>" key ID. The spec restricts the
// version to [a-zA-Z0-9_]; keeping to that matters because the ID is written
// unquoted into a whitespace-separated file and into JSON and HTTP headers.
func validateKeyID(keyID string) error {
	alg, version, ok := strings.Cut(keyID, ":")
	if !ok || alg != algorithmEd25519 {
		return fmt.Errorf("key ID %q is not of the form ed25519:<version>", keyID)
	}
	if !validKeyVersion(version) {
		return fmt.Errorf("key ID %q: version must be non-empty and use only [a-zA-Z0-9_]", keyID)
	}
	return nil
}

func validKeyVersion(v string) bool {
	if v == "" {
		return false
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// LoadOrCreateSigningKey reads the server signing key at path, or creates a
// new one there if the file does not exist; created reports which happened.
//
// Two formats are read, so that todeviced can sign with the key file of the
// homeserver it runs beside:
//
//   - Synapse's: lines of "ed25519 <version> <unpadded base64 seed>"; the
//     first key is used, as Synapse does.
//   - Dendrite's: a PEM block "MATRIX PRIVATE KEY" with a "Key-ID:
//     ed25519:<version>" header and the 32-byte seed as body.
//
// A new key is written in Synapse's format with a random version, mode 0600.
// The file appears atomically and an existing file is never replaced: if
// another process creates the file first, its key is loaded instead.
func LoadOrCreateSigningKey(path string) (key SigningKey, created bool, err error) {
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := ParseSigningKey(data)
		if err != nil {
			return SigningKey{}, false, fmt.Errorf("reading signing key file %s: %w", path, err)
		}
		return key, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return SigningKey{}, false, fmt.Errorf("reading signing key file %s: %w", path, err)
	}

	key, err = GenerateSigningKey()
	if err != nil {
		return SigningKey{}, false, fmt.Errorf("creating signing key file %s: %w", path, err)
	}
	switch err := writeNewFile(path, FormatSigningKey(key)); {
	case err == nil:
		return key, true, nil
	case errors.Is(err, fs.ErrExist):
		// Lost a race with another process creating the same file: theirs
		// is the key that counts now.
		return loadExisting(path)
	default:
		return SigningKey{}, false, fmt.Errorf("creating signing key file %s: %w", path, err)
	}
}

func loadExisting(path string) (SigningKey, bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return SigningKey{}, false, fmt.Errorf("reading signing key file %s: %w", path, err)
	}
	key, err := ParseSigningKey(data)
	if err != nil {
		return SigningKey{}, false, fmt.Errorf("reading signing key file %s: %w", path, err)
	}
	return key, false, nil
}

// GenerateSigningKey makes a new random ed25519 key with a random version,
// in the style of Synapse's generated IDs ("a_" plus random characters).
func GenerateSigningKey() (SigningKey, error) {
	seed := make([]byte, ed25519.SeedSize)
	if _, err := rand.Read(seed); err != nil {
		return SigningKey{}, fmt.Errorf("generating signing key: %w", err)
	}
	// rand.Text is base32 ([A-Z2-7]), inside the allowed version alphabet.
	version := "a_" + rand.Text()[:8]
	return NewSigningKey(algorithmEd25519+":"+version, seed)
}

// FormatSigningKey encodes key in Synapse's signing key file format.
func FormatSigningKey(key SigningKey) []byte {
	_, version, _ := strings.Cut(key.ServerKeyID, ":")
	return []byte(fmt.Sprintf("%s %s %s\n", algorithmEd25519, version, EncodeBase64(key.Private.Seed())))
}

// ParseSigningKey decodes a signing key file in Synapse's or Dendrite's
// format (see LoadOrCreateSigningKey).
func ParseSigningKey(data []byte) (SigningKey, error) {
	trimmed := bytes.TrimSpace(data)
	if bytes.HasPrefix(trimmed, []byte("-----BEGIN")) {
		return parsePEMSigningKey(trimmed)
	}
	// Parse the untrimmed text so that line numbers in errors are right.
	return parseSynapseSigningKey(data)
}

func parsePEMSigningKey(data []byte) (SigningKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return SigningKey{}, errors.New("malformed PEM block")
	}
	if block.Type != pemBlockType {
		return SigningKey{}, fmt.Errorf("PEM block is %q, want %q", block.Type, pemBlockType)
	}
	keyID := block.Headers["Key-ID"]
	if keyID == "" {
		return SigningKey{}, errors.New("PEM block has no Key-ID header")
	}
	key, err := NewSigningKey(keyID, block.Bytes)
	if err != nil {
		return SigningKey{}, fmt.Errorf("PEM key: %w", err)
	}
	return key, nil
}

func parseSynapseSigningKey(data []byte) (SigningKey, error) {
	for i, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue // tolerate blank lines
		}
		if len(fields) != 3 {
			return SigningKey{}, fmt.Errorf("line %d: want \"ed25519 <version> <base64 seed>\", got %d fields", i+1, len(fields))
		}
		seed, err := DecodeBase64(fields[2])
		if err != nil {
			return SigningKey{}, fmt.Errorf("line %d: decoding seed: %w", i+1, err)
		}
		key, err := NewSigningKey(fields[0]+":"+fields[1], seed)
		if err != nil {
			return SigningKey{}, fmt.Errorf("line %d: %w", i+1, err)
		}
		// Synapse signs with the first key in the file; any further lines
		// are other keys it also holds, so stop here.
		return key, nil
	}
	return SigningKey{}, errors.New("file contains no key")
}

// writeNewFile creates path with the given content and mode 0600, atomically
// and without replacing an existing file. The content goes to a temporary
// file in the same directory first, so a crash never leaves a truncated key
// behind; it is then hard-linked into place, because link (unlike rename)
// fails instead of overwriting when the target exists.
func writeNewFile(path string, content []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmpName := tmp.Name()
	defer func() {
		// The temporary name is only a staging area: drop it whether or
		// not the link succeeded.
		if rmErr := os.Remove(tmpName); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) && err == nil {
			err = rmErr
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(content); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmpName, path); err != nil {
		var linkErr *os.LinkError
		if errors.As(err, &linkErr) && errors.Is(linkErr.Err, fs.ErrExist) {
			return fs.ErrExist
		}
		return err
	}
	// Make the new directory entry durable too.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
