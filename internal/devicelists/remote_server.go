package devicelists

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// Remote is what device lists need of other servers: the queries of the
// server-server API they make. The wiring fills it with the signed
// federation client; devicelists knows nothing of signing or discovery.
//
// An error that carries a remote server's answer is a *StatusError (a
// non-2xx status) or wraps ErrBadResponse (a 2xx body that could not be
// read); any other error means the server did not answer (name
// resolution, connection, TLS, timeout), and a resync worker round stops
// asking that server.
type Remote interface {
	// UserDevices fetches a user's whole device list from their server:
	// the body of GET /_matrix/federation/v1/user/devices/{userID}.
	UserDevices(ctx context.Context, server, userID string) (json.RawMessage, error)
	// QueryKeys asks a server for the keys of its users' devices (all of a
	// user's devices for an empty list): the body of POST
	// /_matrix/federation/v1/user/keys/query.
	QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error)
	// ClaimKeys claims one-time keys of a server's users' devices (user id
	// -> device id -> algorithm): the body of POST
	// /_matrix/federation/v1/user/keys/claim.
	ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error)
}

// ErrBadResponse is wrapped when a server answered 2xx but the body could
// not be read.
var ErrBadResponse = errors.New("bad response body")

// StatusError is a remote server's non-2xx answer.
type StatusError struct {
	// Status is the HTTP status code.
	Status int
	// Err is the error as the client reported it.
	Err error
}

func (e *StatusError) Error() string {
	if e.Err != nil {
		return e.Err.Error()
	}
	return fmt.Sprintf("HTTP %d", e.Status)
}

func (e *StatusError) Unwrap() error { return e.Err }
