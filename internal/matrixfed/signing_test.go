package matrixfed

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/matrix"
)

// The spec appendix "Cryptographic Test Vectors" signs with this seed, as
// server "domain" with key "ed25519:1".
const (
	specSeed       = "YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1"
	specServerName = "domain"
	specKeyID      = "ed25519:1"
)

func specKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	seed, err := DecodeBase64(specSeed)
	require.NoError(t, err)
	require.Len(t, seed, ed25519.SeedSize)
	return ed25519.NewKeyFromSeed(seed)
}

func TestSignJSONSpecVectors(t *testing.T) {
	key := specKey(t)
	cases := []struct{ name, in, want string }{
		{
			"empty object", `{}`,
			`{"signatures":{"domain":{"ed25519:1":"K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}}`,
		},
		{
			"data values", "{\n    \"one\": 1,\n    \"two\": \"Two\"\n}",
			`{"one":1,"signatures":{"domain":{"ed25519:1":"KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"}},"two":"Two"}`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SignJSON(specServerName, specKeyID, key, []byte(tc.in))
			require.NoError(t, err)
			require.Equal(t, tc.want, string(got))
			require.NoError(t, VerifyJSON(specServerName, specKeyID, key.Public().(ed25519.PublicKey), got))
		})
	}
}

// TestSignJSONSpecEventVector checks the signature part of the spec's
// minimal event vector: the expected output already contains the content
// hash, so signing that object (without our signature) must reproduce the
// spec's signature exactly, and "unsigned" must not be covered.
func TestSignJSONSpecEventVector(t *testing.T) {
	key := specKey(t)
	in := `{
    "auth_events": [],
    "content": {},
    "depth": 3,
    "hashes": {"sha256": "5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},
    "origin": "domain",
    "origin_server_ts": 1000000,
    "prev_events": [],
    "room_id": "!x:domain",
    "sender": "@a:domain",
    "signatures": {},
    "type": "X",
    "unsigned": {"age_ts": 1000000}
}`
	got, err := SignJSON(specServerName, specKeyID, key, []byte(in))
	require.NoError(t, err)
	want := `{"auth_events":[],"content":{},"depth":3,"hashes":{"sha256":"5jM4wQpv6lnBo7CLIghJuHdW+s2CMBJPUOGOC89ncos"},"origin":"domain","origin_server_ts":1000000,"prev_events":[],"room_id":"!x:domain","sender":"@a:domain","signatures":{"domain":{"ed25519:1":"KxwGjPSDEtvnFgU00fwFz+l6d2pJM6XBIaMEn81SXPTRl16AqLAYqfIReFGZlHi5KLjAWbOoMszkwsQma+lYAg"}},"type":"X","unsigned":{"age_ts":1000000}}`
	require.Equal(t, want, string(got))
}

func TestSignJSONKeepsOtherSignaturesAndUnsigned(t *testing.T) {
	key := specKey(t)
	in := `{"unsigned":{"age":5},"a":1,"signatures":{"other.example":{"ed25519:x":"c2ln"},"domain":{"ed25519:old":"b2xk"}}}`
	got, err := SignJSON(specServerName, specKeyID, key, []byte(in))
	require.NoError(t, err)
	// Same payload as {"a":1} alone, so compare against signing that.
	bare, err := SignJSON(specServerName, specKeyID, key, []byte(`{"a":1}`))
	require.NoError(t, err)
	sig := extractSig(t, bare)
	want := `{"a":1,"signatures":{"domain":{"ed25519:1":"` + sig + `","ed25519:old":"b2xk"},"other.example":{"ed25519:x":"c2ln"}},"unsigned":{"age":5}}`
	require.Equal(t, want, string(got))

	// Re-signing with the same key replaces rather than duplicates.
	again, err := SignJSON(specServerName, specKeyID, key, got)
	require.NoError(t, err)
	require.Equal(t, string(got), string(again))
}

func extractSig(t *testing.T, signed []byte) string {
	t.Helper()
	obj, err := parseSignableObject(signed)
	require.NoError(t, err)
	sigs, err := parseSignatures(obj["signatures"])
	require.NoError(t, err)
	raw := sigs[specServerName][specKeyID]
	require.NotNil(t, raw)
	return string(raw[1 : len(raw)-1])
}

func TestSignJSONRejects(t *testing.T) {
	key := specKey(t)
	for name, in := range map[string]string{
		"array":                `[]`,
		"string":               `"x"`,
		"null":                 `null`,
		"float":                `{"a":1.5}`,
		"duplicate":            `{"a":1,"a":2}`,
		"signatures not obj":   `{"signatures":"x"}`,
		"signatures entry str": `{"signatures":{"a":"x"}}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := SignJSON(specServerName, specKeyID, key, []byte(in))
			require.Error(t, err)
		})
	}
	_, err := SignJSON(specServerName, specKeyID, key[:10], []byte(`{}`))
	require.ErrorContains(t, err, "private key has 10 bytes")
}

func TestVerifyJSON(t *testing.T) {
	key := specKey(t)
	pub := key.Public().(ed25519.PublicKey)
	signed, err := SignJSON(specServerName, specKeyID, key, []byte(`{"a":"b","unsigned":{"x":1}}`))
	require.NoError(t, err)
	sig := extractSig(t, signed)
	sigBytes, err := DecodeBase64(sig)
	require.NoError(t, err)

	t.Run("valid", func(t *testing.T) {
		require.NoError(t, VerifyJSON(specServerName, specKeyID, pub, signed))
	})
	t.Run("reordered and spaced input still verifies", func(t *testing.T) {
		in := `{ "unsigned" : {"x": 1}, "signatures": {"domain": {"ed25519:1": "` + sig + `"}}, "a": "b" }`
		require.NoError(t, VerifyJSON(specServerName, specKeyID, pub, []byte(in)))
	})
	t.Run("unsigned may change", func(t *testing.T) {
		in := `{"a":"b","signatures":{"domain":{"ed25519:1":"` + sig + `"}},"unsigned":{"x":2}}`
		require.NoError(t, VerifyJSON(specServerName, specKeyID, pub, []byte(in)))
	})
	t.Run("padded base64 accepted", func(t *testing.T) {
		padded := base64.StdEncoding.EncodeToString(sigBytes)
		require.NotEqual(t, sig, padded)
		in := `{"a":"b","signatures":{"domain":{"ed25519:1":"` + padded + `"}}}`
		require.NoError(t, VerifyJSON(specServerName, specKeyID, pub, []byte(in)))
	})
	t.Run("URL-safe base64 accepted", func(t *testing.T) {
		urlSafe := base64.RawURLEncoding.EncodeToString(sigBytes)
		in := `{"a":"b","signatures":{"domain":{"ed25519:1":"` + urlSafe + `"}}}`
		require.NoError(t, VerifyJSON(specServerName, specKeyID, pub, []byte(in)))
	})
	t.Run("tampered content", func(t *testing.T) {
		in := `{"a":"c","signatures":{"domain":{"ed25519:1":"` + sig + `"}}}`
		err := VerifyJSON(specServerName, specKeyID, pub, []byte(in))
		require.True(t, errors.Is(err, ErrInvalidSignature), "got %v", err)
	})
	t.Run("added member", func(t *testing.T) {
		in := `{"a":"b","z":null,"signatures":{"domain":{"ed25519:1":"` + sig + `"}}}`
		err := VerifyJSON(specServerName, specKeyID, pub, []byte(in))
		require.True(t, errors.Is(err, ErrInvalidSignature), "got %v", err)
	})
	t.Run("wrong key", func(t *testing.T) {
		other := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
		err := VerifyJSON(specServerName, specKeyID, other, signed)
		require.True(t, errors.Is(err, ErrInvalidSignature), "got %v", err)
	})
	t.Run("missing server", func(t *testing.T) {
		err := VerifyJSON("other", specKeyID, pub, signed)
		require.True(t, errors.Is(err, ErrMissingSignature), "got %v", err)
	})
	t.Run("missing key id", func(t *testing.T) {
		err := VerifyJSON(specServerName, "ed25519:2", pub, signed)
		require.True(t, errors.Is(err, ErrMissingSignature), "got %v", err)
	})
	t.Run("no signatures", func(t *testing.T) {
		err := VerifyJSON(specServerName, specKeyID, pub, []byte(`{"a":"b"}`))
		require.True(t, errors.Is(err, ErrMissingSignature), "got %v", err)
	})
	t.Run("bad base64", func(t *testing.T) {
		in := `{"a":"b","signatures":{"domain":{"ed25519:1":"!!!"}}}`
		err := VerifyJSON(specServerName, specKeyID, pub, []byte(in))
		require.True(t, errors.Is(err, ErrInvalidSignature), "got %v", err)
	})
	t.Run("signature not a string", func(t *testing.T) {
		in := `{"a":"b","signatures":{"domain":{"ed25519:1":5}}}`
		err := VerifyJSON(specServerName, specKeyID, pub, []byte(in))
		require.True(t, errors.Is(err, ErrInvalidSignature), "got %v", err)
	})
	t.Run("duplicate key cannot smuggle content", func(t *testing.T) {
		in := `{"a":"evil","a":"b","signatures":{"domain":{"ed25519:1":"` + sig + `"}}}`
		err := VerifyJSON(specServerName, specKeyID, pub, []byte(in))
		require.ErrorIs(t, err, matrix.ErrNotCanonicalizable)
	})
	t.Run("short public key", func(t *testing.T) {
		require.Error(t, VerifyJSON(specServerName, specKeyID, pub[:5], signed))
	})
}

func TestBase64(t *testing.T) {
	// The spec appendix "Unpadded Base64" examples.
	for in, want := range map[string]string{
		"": "", "f": "Zg", "fo": "Zm8", "foo": "Zm9v", "foob": "Zm9vYg", "fooba": "Zm9vYmE", "foobar": "Zm9vYmFy",
	} {
		require.Equal(t, want, EncodeBase64([]byte(in)))
		got, err := DecodeBase64(want)
		require.NoError(t, err)
		require.Equal(t, in, string(got))
		padded := base64.StdEncoding.EncodeToString([]byte(in))
		got, err = DecodeBase64(padded)
		require.NoError(t, err)
		require.Equal(t, in, string(got))
	}
	got, err := DecodeBase64("-_8")
	require.NoError(t, err)
	require.Equal(t, []byte{0xfb, 0xff}, got)
	_, err = DecodeBase64("a")
	require.Error(t, err)
	_, err = DecodeBase64("a+-b")
	require.Error(t, err, "mixing alphabets is rejected")
}
