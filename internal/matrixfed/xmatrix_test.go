package matrixfed

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// staticKeys is a KeyResolver backed by a map "server|keyID" → key.
type staticKeys map[string]ed25519.PublicKey

func (s staticKeys) PublicKey(ctx context.Context, serverName, keyID string, at time.Time) (ed25519.PublicKey, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k, ok := s[serverName+"|"+keyID]
	if !ok {
		return nil, fmt.Errorf("%w: %s of %s", ErrKeyNotFound, keyID, serverName)
	}
	return k, nil
}

const (
	testOrigin = "origin.example"
	testDest   = "dest.example"
)

// signedInbound builds an outbound request, signs it, and returns it as the
// receiving server would see it.
func signedInbound(t *testing.T, key SigningKey, method, target string, body []byte) *http.Request {
	t.Helper()
	out, err := http.NewRequest(method, "https://"+testDest+target, bytes.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, SignRequest(out, testOrigin, testDest, key, body))
	in := httptest.NewRequest(method, out.URL.RequestURI(), bytes.NewReader(body))
	in.Header = out.Header.Clone()
	return in
}

func TestSignRequestHeaderAndPayload(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	body := []byte(`{"edus":[{"edu_type":"m.direct_to_device","content":{"b":2,"a":"<&>"}}],"origin":"origin.example"}`)
	req, err := http.NewRequest(http.MethodPut, "https://dest.example/_matrix/federation/v1/send/txn%2F1?b=2&a=%20", bytes.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, SignRequest(req, testOrigin, testDest, key, body))

	h := req.Header.Get("Authorization")
	prefix := `X-Matrix origin="origin.example",destination="dest.example",key="ed25519:k1",sig="`
	require.True(t, strings.HasPrefix(h, prefix), h)
	require.True(t, strings.HasSuffix(h, `"`))
	sig, err := DecodeBase64(strings.TrimSuffix(strings.TrimPrefix(h, prefix), `"`))
	require.NoError(t, err)

	// The signed object, written out by hand: keys sorted, the URI exactly
	// as sent (escaped path, query in the given order), content canonical.
	want := `{"content":{"edus":[{"content":{"a":"<&>","b":2},"edu_type":"m.direct_to_device"}],"origin":"origin.example"},` +
		`"destination":"dest.example","method":"PUT","origin":"origin.example",` +
		`"uri":"/_matrix/federation/v1/send/txn%2F1?b=2&a=%20"}`
	require.True(t, ed25519.Verify(key.Public(), []byte(want), sig), "signature must cover %s", want)
}

func TestSignRequestWithoutBody(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	req, err := http.NewRequest(http.MethodGet, "https://dest.example/_matrix/key/v2/server", nil)
	require.NoError(t, err)
	require.NoError(t, SignRequest(req, testOrigin, testDest, key, nil))
	auth, err := ParseXMatrix(req.Header.Get("Authorization"))
	require.NoError(t, err)
	sig, err := DecodeBase64(auth.Signature)
	require.NoError(t, err)
	want := `{"destination":"dest.example","method":"GET","origin":"origin.example","uri":"/_matrix/key/v2/server"}`
	require.True(t, ed25519.Verify(key.Public(), []byte(want), sig))
}

func TestSignRequestRejectsBadBody(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	req, err := http.NewRequest(http.MethodPut, "https://dest.example/x", nil)
	require.NoError(t, err)
	require.Error(t, SignRequest(req, testOrigin, testDest, key, []byte(`{"a":`)))
	require.Error(t, SignRequest(req, testOrigin, testDest, key, []byte(`{"a":1.5}`)))
	require.Error(t, SignRequest(req, testOrigin, testDest, SigningKey{ServerKeyID: "ed25519:x"}, nil))
	require.Empty(t, req.Header.Get("Authorization"))
}

func TestVerifyRequestRoundTrip(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	keys := staticKeys{testOrigin + "|ed25519:k1": key.Public()}
	body := []byte(`{"edus":[],"origin":"origin.example","origin_server_ts":1}`)
	ctx := context.Background()

	t.Run("PUT with body", func(t *testing.T) {
		r := signedInbound(t, key, http.MethodPut, "/_matrix/federation/v1/send/abc?x=%2F", body)
		origin, err := VerifyRequest(ctx, r, body, testDest, keys)
		require.NoError(t, err)
		require.Equal(t, testOrigin, origin)
	})
	t.Run("GET without body", func(t *testing.T) {
		r := signedInbound(t, key, http.MethodGet, "/_matrix/federation/v1/version", nil)
		origin, err := VerifyRequest(ctx, r, nil, testDest, keys)
		require.NoError(t, err)
		require.Equal(t, testOrigin, origin)
	})
	t.Run("body re-encoded differently still verifies", func(t *testing.T) {
		r := signedInbound(t, key, http.MethodPut, "/_matrix/federation/v1/send/abc", body)
		spaced := []byte(`{ "origin_server_ts": 1, "origin": "origin.example", "edus": [ ] }`)
		_, err := VerifyRequest(ctx, r, spaced, testDest, keys)
		require.NoError(t, err)
	})
	t.Run("request built in code without RequestURI", func(t *testing.T) {
		r := signedInbound(t, key, http.MethodPut, "/_matrix/federation/v1/send/abc", body)
		r.RequestURI = ""
		_, err := VerifyRequest(ctx, r, body, testDest, keys)
		require.NoError(t, err)
	})
}

func TestVerifyRequestTampering(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	keys := staticKeys{testOrigin + "|ed25519:k1": key.Public()}
	body := []byte(`{"edus":[],"origin":"origin.example"}`)
	ctx := context.Background()
	fresh := func() *http.Request {
		return signedInbound(t, key, http.MethodPut, "/_matrix/federation/v1/send/abc?x=1", body)
	}

	cases := map[string]func(r *http.Request) (*http.Request, []byte){
		"body": func(r *http.Request) (*http.Request, []byte) {
			return r, []byte(`{"edus":[{}],"origin":"origin.example"}`)
		},
		"body dropped": func(r *http.Request) (*http.Request, []byte) { return r, nil },
		"path": func(r *http.Request) (*http.Request, []byte) {
			r.RequestURI = "/_matrix/federation/v1/send/abd?x=1"
			return r, body
		},
		"query": func(r *http.Request) (*http.Request, []byte) {
			r.RequestURI = "/_matrix/federation/v1/send/abc?x=2"
			return r, body
		},
		"query removed": func(r *http.Request) (*http.Request, []byte) {
			r.RequestURI = "/_matrix/federation/v1/send/abc"
			return r, body
		},
		"method": func(r *http.Request) (*http.Request, []byte) {
			r.Method = http.MethodPost
			return r, body
		},
		"origin swapped": func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), testOrigin, "evil.example", 1))
			return r, body
		},
		"wrong destination": func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), testDest, "other.example", 1))
			return r, body
		},
		"unknown key": func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "ed25519:k1", "ed25519:k2", 1))
			return r, body
		},
		"unsupported algorithm": func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "ed25519:k1", "rsa:k1", 1))
			return r, body
		},
		"signature not base64": func(r *http.Request) (*http.Request, []byte) {
			a, _ := ParseXMatrix(r.Header.Get("Authorization"))
			a.Signature = "!!!!"
			r.Header.Set("Authorization", a.String())
			return r, body
		},
		"signature truncated": func(r *http.Request) (*http.Request, []byte) {
			a, _ := ParseXMatrix(r.Header.Get("Authorization"))
			a.Signature = a.Signature[:20]
			r.Header.Set("Authorization", a.String())
			return r, body
		},
		"no authorization header": func(r *http.Request) (*http.Request, []byte) {
			r.Header.Del("Authorization")
			return r, body
		},
		"only another scheme": func(r *http.Request) (*http.Request, []byte) {
			r.Header.Set("Authorization", "Bearer abc")
			return r, body
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			r, b := mutate(fresh())
			origin, err := VerifyRequest(ctx, r, b, testDest, keys)
			require.Error(t, err)
			require.Empty(t, origin)
			require.True(t, errors.Is(err, ErrUnauthorized), "want ErrUnauthorized, got %v", err)
			require.False(t, errors.Is(err, ErrMalformedAuth), "got %v", err)
		})
	}
}

func TestVerifyRequestWithoutDestinationParameter(t *testing.T) {
	// Older servers omit destination from the header but sign it.
	key := testKey(t, "ed25519:k1", 7)
	keys := staticKeys{testOrigin + "|ed25519:k1": key.Public()}
	r := signedInbound(t, key, http.MethodGet, "/_matrix/federation/v1/version", nil)
	a, err := ParseXMatrix(r.Header.Get("Authorization"))
	require.NoError(t, err)
	a.Destination = ""
	r.Header.Set("Authorization", a.String())
	require.NotContains(t, r.Header.Get("Authorization"), "destination")
	origin, err := VerifyRequest(context.Background(), r, nil, testDest, keys)
	require.NoError(t, err)
	require.Equal(t, testOrigin, origin)

	// It must still have been signed for us.
	_, err = VerifyRequest(context.Background(), r, nil, "someone-else.example", keys)
	require.ErrorIs(t, err, ErrUnauthorized)
}

func TestVerifyRequestHeaderVariants(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	keys := staticKeys{testOrigin + "|ed25519:k1": key.Public()}
	r := signedInbound(t, key, http.MethodGet, "/_matrix/federation/v1/version", nil)
	a, err := ParseXMatrix(r.Header.Get("Authorization"))
	require.NoError(t, err)
	sig := a.Signature

	variants := []string{
		`x-matrix origin="origin.example",destination="dest.example",key="ed25519:k1",sig="` + sig + `"`,
		`X-MATRIX ORIGIN="origin.example",Destination="dest.example",KEY="ed25519:k1",Sig="` + sig + `"`,
		`X-Matrix sig="` + sig + `",key="ed25519:k1",destination="dest.example",origin="origin.example"`,
		`X-Matrix origin=origin.example,destination=dest.example,key=ed25519:k1,sig=` + sig,
		`X-Matrix   origin = "origin.example" , destination= dest.example ,key ="ed25519:k1",  sig="` + sig + `"  `,
		"X-Matrix\torigin=\"origin.example\",\tkey=\"ed25519:k1\",sig=\"" + sig + "\"",
		`X-Matrix origin="orig\in.example",key="ed25519\:k1",sig="` + sig + `",destination="dest.example"`,
		`X-Matrix origin="origin.example",key="ed25519:k1",sig="` + sig + `",future="ignored",,`,
	}
	for _, v := range variants {
		t.Run(v, func(t *testing.T) {
			r.Header.Set("Authorization", v)
			origin, err := VerifyRequest(context.Background(), r, nil, testDest, keys)
			require.NoError(t, err)
			require.Equal(t, testOrigin, origin)
		})
	}
}

func TestVerifyRequestMultipleHeaders(t *testing.T) {
	k1 := testKey(t, "ed25519:k1", 7)
	k2 := testKey(t, "ed25519:k2", 8)
	keys := staticKeys{testOrigin + "|ed25519:k1": k1.Public(), testOrigin + "|ed25519:k2": k2.Public()}
	ctx := context.Background()
	header := func(k SigningKey) string {
		r := signedInbound(t, k, http.MethodGet, "/_matrix/federation/v1/version", nil)
		return r.Header.Get("Authorization")
	}
	build := func(values ...string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/_matrix/federation/v1/version", nil)
		for _, v := range values {
			r.Header.Add("Authorization", v)
		}
		return r
	}

	t.Run("two valid keys", func(t *testing.T) {
		origin, err := VerifyRequest(ctx, build(header(k1), header(k2)), nil, testDest, keys)
		require.NoError(t, err)
		require.Equal(t, testOrigin, origin)
	})
	t.Run("other schemes are ignored", func(t *testing.T) {
		_, err := VerifyRequest(ctx, build("Bearer xyz", header(k1)), nil, testDest, keys)
		require.NoError(t, err)
	})
	t.Run("one bad signature fails the request", func(t *testing.T) {
		bad, err := ParseXMatrix(header(k2))
		require.NoError(t, err)
		bad.Signature = EncodeBase64(make([]byte, ed25519.SignatureSize))
		_, err = VerifyRequest(ctx, build(header(k1), bad.String()), nil, testDest, keys)
		require.ErrorIs(t, err, ErrUnauthorized)
	})
	t.Run("different origins", func(t *testing.T) {
		other, err := ParseXMatrix(header(k2))
		require.NoError(t, err)
		other.Origin = "other.example"
		_, err = VerifyRequest(ctx, build(header(k1), other.String()), nil, testDest, keys)
		require.ErrorIs(t, err, ErrUnauthorized)
		require.ErrorContains(t, err, "different origins")
	})
	t.Run("one malformed header", func(t *testing.T) {
		_, err := VerifyRequest(ctx, build(header(k1), `X-Matrix origin="x"`), nil, testDest, keys)
		require.ErrorIs(t, err, ErrMalformedAuth)
	})
}

func TestVerifyRequestMalformed(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	keys := staticKeys{testOrigin + "|ed25519:k1": key.Public()}
	ctx := context.Background()

	for _, h := range []string{
		`X-Matrix`,
		`X-Matrix key="ed25519:k1",sig="abc"`,
		`X-Matrix origin="origin.example",sig="abc"`,
		`X-Matrix origin="origin.example",key="ed25519:k1"`,
		`X-Matrix origin="origin.example",key="ed25519:k1",sig="abc`,
		`X-Matrix origin="origin.example",origin="evil.example",key="ed25519:k1",sig="abc"`,
		`X-Matrix origin="origin.example" key="ed25519:k1" sig="abc"`,
		`X-Matrix origin="bad/name",key="ed25519:k1",sig="abc"`,
		`X-Matrix origin="origin.example",key="ed25519:k1",sig=`,
		`X-Matrix origin="origin.example",destination="",key="ed25519:k1",sig="abc"`,
		`X-Matrix =x,origin="origin.example",key="ed25519:k1",sig="abc"`,
	} {
		t.Run(h, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/x", nil)
			r.Header.Set("Authorization", h)
			_, err := VerifyRequest(ctx, r, nil, testDest, keys)
			require.True(t, errors.Is(err, ErrMalformedAuth), "want ErrMalformedAuth, got %v", err)
			require.False(t, errors.Is(err, ErrUnauthorized))
		})
	}

	t.Run("body not JSON", func(t *testing.T) {
		r := signedInbound(t, key, http.MethodPut, "/x", []byte(`{}`))
		_, err := VerifyRequest(ctx, r, []byte(`{not json`), testDest, keys)
		require.ErrorIs(t, err, ErrMalformedAuth)
	})
	t.Run("body with float", func(t *testing.T) {
		r := signedInbound(t, key, http.MethodPut, "/x", []byte(`{}`))
		_, err := VerifyRequest(ctx, r, []byte(`{"a":0.5}`), testDest, keys)
		require.ErrorIs(t, err, ErrMalformedAuth)
	})
}

func TestVerifyRequestContextEnded(t *testing.T) {
	key := testKey(t, "ed25519:k1", 7)
	keys := staticKeys{testOrigin + "|ed25519:k1": key.Public()}
	r := signedInbound(t, key, http.MethodGet, "/x", nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := VerifyRequest(ctx, r, nil, testDest, keys)
	require.ErrorIs(t, err, context.Canceled)
	require.False(t, errors.Is(err, ErrUnauthorized), "a local timeout is not the sender's fault")
	require.False(t, errors.Is(err, ErrMalformedAuth))
}

func TestParseXMatrix(t *testing.T) {
	got, err := ParseXMatrix(`X-Matrix origin="a.example:8448",destination=b.example,key="ed25519:x",sig="s\"ig\\"`)
	require.NoError(t, err)
	require.Equal(t, XMatrixAuth{Origin: "a.example:8448", Destination: "b.example", KeyID: "ed25519:x", Signature: `s"ig\`}, got)

	// String quotes and escapes so the value survives a round trip.
	back, err := ParseXMatrix(got.String())
	require.NoError(t, err)
	require.Equal(t, got, back)

	got, err = ParseXMatrix(`X-Matrix origin=a.example:8448,key=ed25519:x,sig=abc+/def==`)
	require.NoError(t, err)
	require.Equal(t, XMatrixAuth{Origin: "a.example:8448", KeyID: "ed25519:x", Signature: "abc+/def=="}, got)
	require.Equal(t, `X-Matrix origin="a.example:8448",key="ed25519:x",sig="abc+/def=="`, got.String())

	for _, bad := range []string{
		``,
		`Bearer origin="a",key="b",sig="c"`,
		`X-Matrixorigin="a",key="b",sig="c"`,
		`X-Matrix origin="a",key="b",sig="c" trailing`,
		`X-Matrix origin="a",key="b",sig="c\`,
		`X-Matrix origin="a"x,key="b",sig="c"`,
		`X-Matrix origin,key="b",sig="c"`,
		`X-Matrix origin=,key="b",sig="c"`,
		`X-Matrix origin="a",KEY="b",key="b",sig="c"`,
		`X-Matrix origin="",key="b",sig="c"`,
	} {
		_, err := ParseXMatrix(bad)
		require.Error(t, err, bad)
	}
}
