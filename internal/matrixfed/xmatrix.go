package matrixfed

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/todeviced/todeviced/internal/matrix"
)

// ErrMalformedAuth is wrapped by VerifyRequest when the X-Matrix header (or
// the JSON body it signs) cannot be parsed at all. Answer it with 400
// (M_UNAUTHORIZED, or M_BAD_JSON/M_NOT_JSON when the body is at fault).
var ErrMalformedAuth = errors.New("malformed X-Matrix authorization")

// ErrUnauthorized is wrapped by VerifyRequest when the request is well-formed
// but not authenticated: no X-Matrix header, the wrong destination, an
// unknown or unfetchable key, or a bad signature. Answer it with 401
// M_UNAUTHORIZED.
var ErrUnauthorized = errors.New("request not authorized")

// xMatrixScheme is the HTTP authorization scheme of Matrix federation.
const xMatrixScheme = "X-Matrix"

// XMatrixAuth holds the parameters of one X-Matrix Authorization header.
type XMatrixAuth struct {
	// Origin is the server name of the sending server.
	Origin string
	// Destination is the server name of the receiving server, or "" when
	// the header has none (older servers omit it).
	Destination string
	// KeyID is the sender's key ID, algorithm included ("ed25519:abc").
	KeyID string
	// Signature is the signature as sent: base64 text.
	Signature string
}

// String formats the header value the way the spec asks senders to, for the
// widest compatibility: one space after the scheme, lower-case names, quoted
// values. Values never need backslashes in practice (server names, key IDs
// and base64 contain no quotes), but are escaped correctly if they do.
func (a XMatrixAuth) String() string {
	var b strings.Builder
	b.WriteString(xMatrixScheme)
	b.WriteString(" ")
	writeParam := func(name, value string, first bool) {
		if !first {
			b.WriteByte(',')
		}
		b.WriteString(name)
		b.WriteString(`="`)
		for _, c := range value {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(c)
		}
		b.WriteByte('"')
	}
	writeParam("origin", a.Origin, true)
	if a.Destination != "" {
		writeParam("destination", a.Destination, false)
	}
	writeParam("key", a.KeyID, false)
	writeParam("sig", a.Signature, false)
	return b.String()
}

// ParseXMatrix parses an Authorization header value with the X-Matrix scheme.
// It is as tolerant as the spec asks (RFC 7235 auth-params): the scheme and
// parameter names are case-insensitive, parameters come in any order, values
// may be quoted (with backslash escapes) or bare (bare values may contain
// colons, for older servers), and spaces may surround commas and "=". Unknown
// parameters are ignored. origin, key and sig are required; destination is
// optional. A repeated parameter is an error, since it makes the header
// ambiguous.
func ParseXMatrix(header string) (XMatrixAuth, error) {
	s := strings.TrimLeft(header, " \t")
	scheme, rest, _ := strings.Cut(s, " ")
	if tab := strings.IndexByte(scheme, '\t'); tab >= 0 {
		scheme, rest = s[:tab], s[tab+1:]
	}
	if !strings.EqualFold(scheme, xMatrixScheme) {
		return XMatrixAuth{}, fmt.Errorf("parsing X-Matrix header: scheme is %q, not %s", scheme, xMatrixScheme)
	}

	params := make(map[string]string)
	p := &authParamParser{s: rest}
	for {
		p.skipSpaceAndCommas()
		if p.done() {
			break
		}
		name, value, err := p.param()
		if err != nil {
			return XMatrixAuth{}, fmt.Errorf("parsing X-Matrix header: %w", err)
		}
		name = strings.ToLower(name)
		if _, dup := params[name]; dup {
			return XMatrixAuth{}, fmt.Errorf("parsing X-Matrix header: parameter %q repeated", name)
		}
		params[name] = value
		p.skipSpace()
		if !p.done() && p.peek() != ',' {
			return XMatrixAuth{}, fmt.Errorf("parsing X-Matrix header: expected ',' after parameter %q", name)
		}
	}
	auth := XMatrixAuth{
		Origin:      params["origin"],
		Destination: params["destination"],
		KeyID:       params["key"],
		Signature:   params["sig"],
	}
	for _, req := range []struct{ name, value string }{{"origin", auth.Origin}, {"key", auth.KeyID}, {"sig", auth.Signature}} {
		if req.value == "" {
			return XMatrixAuth{}, fmt.Errorf("parsing X-Matrix header: missing %s", req.name)
		}
	}
	if _, ok := params["destination"]; ok && auth.Destination == "" {
		return XMatrixAuth{}, errors.New("parsing X-Matrix header: empty destination")
	}
	return auth, nil
}

// authParamParser scans the comma-separated auth-param list of an
// Authorization header.
type authParamParser struct {
	s   string
	pos int
}

func (p *authParamParser) done() bool { return p.pos >= len(p.s) }
func (p *authParamParser) peek() byte { return p.s[p.pos] }

func (p *authParamParser) skipSpace() {
	for !p.done() && (p.peek() == ' ' || p.peek() == '\t') {
		p.pos++
	}
}

func (p *authParamParser) skipSpaceAndCommas() {
	for !p.done() && (p.peek() == ' ' || p.peek() == '\t' || p.peek() == ',') {
		p.pos++
	}
}

// param reads name OWS "=" OWS value.
func (p *authParamParser) param() (name, value string, err error) {
	start := p.pos
	for !p.done() && isTokenChar(p.peek()) {
		p.pos++
	}
	name = p.s[start:p.pos]
	if name == "" {
		return "", "", fmt.Errorf("unexpected %q where a parameter name should be", p.peek())
	}
	p.skipSpace()
	if p.done() || p.peek() != '=' {
		return "", "", fmt.Errorf("parameter %q has no value", name)
	}
	p.pos++
	p.skipSpace()
	if p.done() {
		return "", "", fmt.Errorf("parameter %q has no value", name)
	}
	if p.peek() == '"' {
		value, err = p.quoted()
		if err != nil {
			return "", "", fmt.Errorf("parameter %q: %w", name, err)
		}
		return name, value, nil
	}
	start = p.pos
	// Bare values should be tokens, but older servers send colons (and
	// base64 brings '/', '+' and '='), so accept anything up to the next
	// separator.
	for !p.done() && p.peek() != ',' && p.peek() != ' ' && p.peek() != '\t' && p.peek() != '"' {
		p.pos++
	}
	value = p.s[start:p.pos]
	if value == "" {
		return "", "", fmt.Errorf("parameter %q has no value", name)
	}
	return name, value, nil
}

// quoted reads a quoted-string, undoing backslash escapes.
func (p *authParamParser) quoted() (string, error) {
	p.pos++ // opening quote
	var b strings.Builder
	for !p.done() {
		c := p.peek()
		p.pos++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.done() {
				return "", errors.New("unterminated escape in quoted value")
			}
			b.WriteByte(p.peek())
			p.pos++
		default:
			b.WriteByte(c)
		}
	}
	return "", errors.New("unterminated quoted value")
}

// isTokenChar reports whether c is an RFC 7230 tchar.
func isTokenChar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// SignRequest adds an X-Matrix Authorization header to req, signed by origin
// with key, for a request to destination. body is the JSON request body as it
// will be sent, or nil for a request without one. The signed URI is
// req.URL.RequestURI(): the escaped path and query exactly as net/http writes
// them on the wire, so set the URL before signing and do not change it after.
// Any existing Authorization header is replaced.
func SignRequest(req *http.Request, origin, destination string, key SigningKey, body []byte) error {
	uri := req.URL.RequestURI()
	payload, err := requestSigningPayload(req.Method, uri, origin, destination, body)
	if err != nil {
		return fmt.Errorf("signing %s %s for %s: %w", req.Method, uri, destination, err)
	}
	if len(key.Private) != ed25519.PrivateKeySize {
		return fmt.Errorf("signing %s %s for %s: signing key is not an ed25519 private key", req.Method, uri, destination)
	}
	auth := XMatrixAuth{
		Origin:      origin,
		Destination: destination,
		KeyID:       key.ServerKeyID,
		Signature:   EncodeBase64(ed25519.Sign(key.Private, payload)),
	}
	req.Header.Set("Authorization", auth.String())
	return nil
}

// requestSigningPayload is the canonical JSON the X-Matrix signature covers:
// {"content","destination","method","origin","uri"} (keys in canonical
// order), with content (the body) only when there is a body. It is written
// into one buffer, the body canonicalized in place: the only copy of a
// request body that signing or verifying makes (objects whose keys arrive
// out of order are sorted through a scratch buffer the size of that object).
func requestSigningPayload(method, uri, origin, destination string, body []byte) ([]byte, error) {
	out := make([]byte, 0, len(body)+len(method)+len(uri)+len(origin)+len(destination)+64)
	out = append(out, '{')
	if len(body) > 0 {
		out = append(out, `"content":`...)
		var err error
		if out, err = matrix.AppendCanonicalJSON(out, body); err != nil {
			return nil, fmt.Errorf("request body: %w", err)
		}
		out = append(out, ',')
	}
	// Header values and the request target may carry bytes that are not
	// UTF-8; encoding/json, which signers use, writes U+FFFD for them.
	for i, f := range [...]struct{ name, value string }{
		{"destination", destination}, {"method", method}, {"origin", origin}, {"uri", uri},
	} {
		if i > 0 {
			out = append(out, ',')
		}
		out = matrix.AppendCanonicalString(out, []byte(f.name))
		out = append(out, ':')
		out = matrix.AppendCanonicalString(out, []byte(strings.ToValidUTF8(f.value, "\uFFFD")))
	}
	return append(out, '}'), nil
}

// RequestAuth is the X-Matrix authorization of an inbound request whose
// headers were checked and whose origin's keys were found, before its body is
// read: the expensive and unbounded part (a large body) is taken on only for
// a request that can still be authentic. Verify then checks the signatures.
type RequestAuth struct {
	// Origin is the server the request claims to come from; it is proven
	// only once Verify succeeds.
	Origin  string
	ourName string
	sigs    []checkedSig
}

type checkedSig struct {
	keyID string
	pub   ed25519.PublicKey
	sig   []byte
}

// AuthorizeHeaders checks the X-Matrix headers of an inbound request
// addressed to ourName and looks up the keys they name; see VerifyRequest for
// the rules. It reads no body. Errors wrap ErrMalformedAuth (answer 400) or
// ErrUnauthorized (answer 401); an error wrapping neither means the context
// ended first.
func AuthorizeHeaders(ctx context.Context, r *http.Request, ourName string, keys KeyResolver) (*RequestAuth, error) {
	var auths []XMatrixAuth
	for _, h := range r.Header.Values("Authorization") {
		scheme, _, _ := strings.Cut(strings.TrimLeft(h, " \t"), " ")
		scheme, _, _ = strings.Cut(scheme, "\t")
		if !strings.EqualFold(scheme, xMatrixScheme) {
			continue
		}
		auth, err := ParseXMatrix(h)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformedAuth, err)
		}
		auths = append(auths, auth)
	}
	if len(auths) == 0 {
		return nil, fmt.Errorf("%w: no X-Matrix Authorization header", ErrUnauthorized)
	}

	origin := auths[0].Origin
	if err := matrix.ValidateServerName(origin); err != nil {
		return nil, fmt.Errorf("%w: origin: %w", ErrMalformedAuth, err)
	}
	if origin == ourName {
		// We would fetch our own key over the network to check it: a
		// request naming us as its origin is not one we sent.
		return nil, fmt.Errorf("%w: request claims to come from this server (%s)", ErrUnauthorized, ourName)
	}
	for _, a := range auths[1:] {
		if a.Origin != origin {
			return nil, fmt.Errorf("%w: X-Matrix headers name different origins %q and %q", ErrUnauthorized, origin, a.Origin)
		}
	}
	ra := &RequestAuth{Origin: origin, ourName: ourName}
	for _, a := range auths {
		if a.Destination != "" && a.Destination != ourName {
			return nil, fmt.Errorf("%w: request from %s is addressed to %q, not to us (%s)", ErrUnauthorized, origin, a.Destination, ourName)
		}
		alg, _, _ := strings.Cut(a.KeyID, ":")
		if alg != algorithmEd25519 {
			return nil, fmt.Errorf("%w: request from %s signed with unsupported key %q", ErrUnauthorized, origin, a.KeyID)
		}
		sig, err := DecodeBase64(a.Signature)
		if err != nil || len(sig) != ed25519.SignatureSize {
			return nil, fmt.Errorf("%w: request from %s: signature for key %s is not a base64 ed25519 signature", ErrUnauthorized, origin, a.KeyID)
		}
		ra.sigs = append(ra.sigs, checkedSig{keyID: a.KeyID, sig: sig})
	}
	for i := range ra.sigs {
		s := &ra.sigs[i]
		pub, err := keys.PublicKey(ctx, origin, s.keyID, time.Time{})
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil {
				return nil, fmt.Errorf("fetching key %s of %s: %w", s.keyID, origin, ctxErr)
			}
			return nil, fmt.Errorf("%w: fetching key %s of %s: %w", ErrUnauthorized, s.keyID, origin, err)
		}
		s.pub = pub
	}
	return ra, nil
}

// Verify checks the signatures over the request and its complete body (nil
// for none). The error wraps ErrMalformedAuth (the body is not JSON that can
// be signed) or ErrUnauthorized.
func (ra *RequestAuth) Verify(r *http.Request, body []byte) error {
	// The signed object is rebuilt from what we received. Older senders
	// omit destination from the header but still sign it, as us.
	payload, err := requestSigningPayload(r.Method, requestURI(r), ra.Origin, ra.ourName, body)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformedAuth, err)
	}
	for _, s := range ra.sigs {
		if !ed25519.Verify(s.pub, payload, s.sig) {
			return fmt.Errorf("%w: bad signature from %s with key %s on %s %s", ErrUnauthorized, ra.Origin, s.keyID, r.Method, requestURI(r))
		}
	}
	return nil
}

// VerifyRequest authenticates an inbound federation request addressed to
// ourName and returns the server name of its origin. body is the complete
// request body (the caller reads it, bounded, before calling). It is
// AuthorizeHeaders followed by Verify; a handler that reads a large body
// calls them apart, reading the body in between.
//
// Every Authorization header with the X-Matrix scheme is checked (headers of
// other schemes are ignored). At least one is required, all must name the
// same origin (a valid server name other than ours), and each must carry a
// valid signature by a key the origin currently publishes: the spec does not
// say what to do with several headers, and the draft clarification (MSC4029)
// asks that every key offered be valid, which is also the safe reading. Keys
// are looked up through keys with a zero time, meaning "valid now".
//
// The error wraps ErrMalformedAuth (answer 400) or ErrUnauthorized (answer
// 401); an error wrapping neither means the context ended first.
func VerifyRequest(ctx context.Context, r *http.Request, body []byte, ourName string, keys KeyResolver) (origin string, err error) {
	ra, err := AuthorizeHeaders(ctx, r, ourName, keys)
	if err != nil {
		return "", err
	}
	if err := ra.Verify(r, body); err != nil {
		return "", err
	}
	return ra.Origin, nil
}

// requestURI is the request target as the client sent it, which is what it
// signed. Go keeps the raw target in RequestURI; for requests built in code
// (RequestURI empty) or in absolute form, fall back to the parsed URL.
func requestURI(r *http.Request) string {
	if strings.HasPrefix(r.RequestURI, "/") {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}
