package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// NewTransport returns the one transport every request of a run shares.
// Each syncer holds a connection for its long-poll and each sender one for
// its send, so the idle pool must keep that many per host or connections
// would be torn down and re-dialled all the time.
func NewTransport(conns int, h2c bool) *http.Transport {
	t := &http.Transport{
		// A load generator talks to the server it was given, never a proxy.
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		MaxIdleConns:        0, // no global cap: MaxIdleConnsPerHost bounds it
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		// todeviced does not compress; asking would only cost CPU.
		DisableCompression: true,
		ForceAttemptHTTP2:  false,
	}
	if h2c {
		// HTTP/2 without TLS, as a reverse proxy speaking h2c upstream
		// would: requests share connections.
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}

// client talks to one todeviced.
type client struct {
	http   *http.Client
	base   string // URL without trailing slash
	secret string
}

// HTTPError is a non-2xx answer.
type HTTPError struct {
	Status  int
	Errcode string
	Message string
	// RetryAfter is the server's retry_after_ms, for M_LIMIT_EXCEEDED.
	RetryAfter time.Duration
}

func (e *HTTPError) Error() string {
	if e.Errcode == "" {
		return fmt.Sprintf("HTTP %d", e.Status)
	}
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Errcode, e.Message)
}

// retryable says whether repeating the request can help: server errors,
// rate limits and anything that never got an answer. Other 4xx mean the
// request itself is wrong.
func retryable(err error) bool {
	var he *HTTPError
	if errors.As(err, &he) {
		return he.Status >= 500 || he.Status == http.StatusTooManyRequests || he.Status == http.StatusRequestTimeout
	}
	return true
}

// ErrorKind names an error for the "errors by kind" table: the HTTP status
// and errcode, or the transport failure.
func ErrorKind(err error) string {
	var he *HTTPError
	switch {
	case errors.As(err, &he):
		if he.Errcode != "" {
			return strconv.Itoa(he.Status) + " " + he.Errcode
		}
		return "HTTP " + strconv.Itoa(he.Status)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed"
	case errors.Is(err, errDecode):
		return "bad response body"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}

var errDecode = errors.New("decoding response")

// do sends a request and reads the whole answer into buf (reset first).
// A non-2xx answer becomes an *HTTPError.
func (c *client) do(req *http.Request, buf *bytes.Buffer) error {
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	buf.Reset()
	if _, err := buf.ReadFrom(resp.Body); err != nil {
		return fmt.Errorf("reading response: %w", err)
	}
	if resp.StatusCode/100 == 2 {
		return nil
	}
	he := &HTTPError{Status: resp.StatusCode}
	var body struct {
		Errcode      string `json:"errcode"`
		Error        string `json:"error"`
		RetryAfterMS int64  `json:"retry_after_ms"`
	}
	if json.Unmarshal(buf.Bytes(), &body) == nil {
		he.Errcode, he.Message = body.Errcode, body.Error
		he.RetryAfter = time.Duration(body.RetryAfterMS) * time.Millisecond
	}
	return he
}

// putDevice creates a device with the given access token (internal API).
func (c *client) putDevice(ctx context.Context, userID, deviceID, token string) error {
	body, err := json.Marshal(map[string]string{"access_token": token})
	if err != nil {
		return err
	}
	return c.internal(ctx, http.MethodPut, userID, deviceID, body)
}

// deleteDevice deletes a device (internal API); its inbox is purged by the
// server in the background.
func (c *client) deleteDevice(ctx context.Context, userID, deviceID string) error {
	return c.internal(ctx, http.MethodDelete, userID, deviceID, nil)
}

func (c *client) internal(ctx context.Context, method, userID, deviceID string, body []byte) error {
	u := c.base + "/_todeviced/internal/v1/users/" + url.PathEscape(userID) + "/devices/" + url.PathEscape(deviceID)
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.secret)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	var buf bytes.Buffer
	return c.do(req, &buf)
}

// sendURL is the sendToDevice URL of one transaction.
func (c *client) sendURL(txnID string) string {
	return c.base + "/_matrix/client/v3/sendToDevice/" + EventType + "/" + url.PathEscape(txnID)
}

// send makes one attempt of a sendToDevice. authz is "Bearer TOKEN",
// prebuilt so the hot path does not concatenate it per request.
func (c *client) send(ctx context.Context, authz, sendURL string, body []byte, buf *bytes.Buffer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, sendURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header["Authorization"] = []string{authz}
	req.Header["Content-Type"] = []string{"application/json"}
	return c.do(req, buf)
}

// syncResponse is the part of a client /sync answer the load generator
// reads. It is reused across requests of one syncer: json.Unmarshal reuses
// the events slice's backing array.
type syncResponse struct {
	NextBatch string `json:"next_batch"`
	ToDevice  struct {
		Events []syncEvent `json:"events"`
	} `json:"to_device"`
}

type syncEvent struct {
	Sender  string          `json:"sender"`
	Type    string          `json:"type"`
	Content json.RawMessage `json:"content"`
}

// sync makes one /sync request and decodes the answer into out.
func (c *client) sync(ctx context.Context, authz, since string, timeout time.Duration, buf *bytes.Buffer, out *syncResponse) error {
	var u strings.Builder
	u.Grow(len(c.base) + 64 + len(since))
	u.WriteString(c.base)
	u.WriteString("/_matrix/client/v3/sync?timeout=")
	u.WriteString(strconv.FormatInt(timeout.Milliseconds(), 10))
	if since != "" {
		u.WriteString("&since=")
		u.WriteString(url.QueryEscape(since))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header["Authorization"] = []string{authz}
	if err := c.do(req, buf); err != nil {
		return err
	}
	out.NextBatch = ""
	out.ToDevice.Events = out.ToDevice.Events[:0]
	if err := json.Unmarshal(buf.Bytes(), out); err != nil {
		return fmt.Errorf("%w: %v", errDecode, err)
	}
	if out.NextBatch == "" {
		return fmt.Errorf("%w: no next_batch", errDecode)
	}
	return nil
}
