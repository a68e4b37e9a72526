// Package matrixfed is the Matrix server-server protocol toolkit: signing
// keys and key files, canonical JSON and signatures, X-Matrix request
// authentication, server names and discovery, remote key fetching, the
// signed HTTP client and the retry backoff. It knows nothing of what
// todeviced sends (package federation does) and imports no domain package.
// It holds no storage and no global state: everything is a value or an object
// the caller constructs, every blocking call takes a context.Context, and
// clocks and network lookups are injectable for tests.
//
// # Keys
//
// LoadOrCreateSigningKey reads the server's ed25519 signing key from a file in
// Synapse's format ("ed25519 <version> <base64 seed>") or Dendrite's PEM
// format, so todeviced can sign with the key file of the homeserver it runs
// beside; when the file is missing it creates one in Synapse's format (mode
// 0600, atomically, never overwriting). The result is a SigningKey
// {ServerKeyID: "ed25519:…", Private}.
//
// ServerKeyResponse builds the self-signed body to serve at
// GET /_matrix/key/v2/server (KeyServerPath).
//
// # Canonical JSON and signatures
//
// CanonicalJSON re-encodes JSON in the spec's canonical form. It accepts only
// integers in ±(2^53−1): a number such as 1e10 or -0 whose value is such an
// integer is normalised (as the spec's examples require), while fractions and
// out-of-range numbers are rejected with ErrNotCanonicalizable, as are
// invalid UTF-8, unpaired surrogate escapes and duplicate keys. Note what
// that means for the /send handler: a transaction whose to-device content
// contains a non-integer number cannot be verified and is refused.
//
// SignJSON and VerifyJSON implement the spec's "Signing JSON" (signatures and
// unsigned excluded from the signed bytes). EncodeBase64 and DecodeBase64 are
// the unpadded-base64 helpers; decoding also accepts padding and the
// URL-safe alphabet.
//
// # Sending
//
// Build one Resolver and one Client per process:
//
//	res, err := matrixfed.NewResolver(matrixfed.ResolverOptions{Logger: log})
//	client, err := matrixfed.NewClient(matrixfed.ClientOptions{
//		ServerName: "example.org", Key: key, Resolver: res,
//	})
//	var resp struct{ PDUs map[string]any `json:"pdus"` }
//	err = client.Do(ctx, "remote.example", http.MethodPut,
//		"/_matrix/federation/v1/send/"+url.PathEscape(txnID), nil, txn, &resp)
//
// Client.Do resolves the destination (Resolver follows the spec's server name
// resolution: IP literals, explicit ports, .well-known delegation, SRV
// _matrix-fed._tcp then _matrix._tcp, then port 8448; ResolverOptions.Overrides
// maps names to fixed base URLs for tests and private deployments), signs the
// request with X-Matrix (SignRequest), connects with the right Host header and
// TLS server name, and decodes the JSON answer. Certificates are verified
// unless ClientOptions.InsecureSkipVerify is set. Redirects are not followed.
//
// For the sender's retry logic, classify errors from Do like this:
//
//   - errors.As(err, &httpErr), httpErr an *HTTPError: the server answered
//     non-2xx. Status, Errcode and RetryAfter (from Retry-After or
//     retry_after_ms) tell 429 apart from other 4xx and from 5xx.
//   - errors.Is(err, ErrBadResponse): the server answered 2xx but the body
//     was not the expected JSON or too large. The request was delivered.
//   - errors.Is(err, context.Canceled / context.DeadlineExceeded): we gave up.
//   - anything else: no answer (DNS, connection, TLS); retry with backoff.
//
// # Receiving
//
// The /send handler reads the body (bounded), then calls
//
//	origin, err := matrixfed.VerifyRequest(ctx, r, body, ourName, fetcher)
//
// where fetcher is a *KeyFetcher (a KeyResolver) created once with
// NewKeyFetcher(client, KeyFetcherOptions{Logger: log}). Map the error:
//
//   - errors.Is(err, ErrMalformedAuth): 400 M_UNAUTHORIZED (or M_BAD_JSON /
//     M_NOT_JSON, since an unparseable body also lands here).
//   - errors.Is(err, ErrUnauthorized): 401 M_UNAUTHORIZED. Covers a missing
//     header, a destination other than ourName, keys that cannot be fetched
//     and bad signatures.
//   - otherwise the context ended: the client went away or we timed out.
//
// Every X-Matrix Authorization header on the request must verify and all must
// name the same origin (the spec is silent on several headers; this follows
// the draft MSC4029). The returned origin is authenticated; the handler still
// has to check that the transaction's "origin" field and the senders of its
// EDUs belong to it.
//
// KeyFetcher fetches GET /_matrix/key/v2/server directly from the origin
// (through the Client, so the same discovery applies), checks that the answer
// names that server and is signed by a key it lists, and caches each key until
// the lesser of valid_until_ts and seven days after the fetch. Old keys
// (old_verify_keys) verify only what was signed before their expired_ts, so
// they never authenticate a request. Concurrent lookups of one server share
// one fetch, and each server is fetched at most once per RefetchInterval
// (a minute by default) whether the last fetch failed or the key was simply
// not there: a flood of requests with bogus keys or unreachable origins costs
// the remote at most one request a minute. The handler should still
// rate-limit requests per origin, since each new origin name costs a
// discovery and a key fetch.
//
// ValidateServerName checks the server name grammar; VerifyRequest and the
// Resolver apply it to every name they receive.
package matrixfed
