package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/matrixfed"
)

// deviceListRemote is devicelists.Remote over the signed federation client:
// it sends the two device-list queries and turns the client's errors into
// devicelists' (a non-2xx answer into a *devicelists.StatusError, an
// unreadable body into devicelists.ErrBadResponse).
type deviceListRemote struct{ client matrixfed.Requester }

var _ devicelists.Remote = deviceListRemote{}

func (r deviceListRemote) UserDevices(ctx context.Context, server, userID string) (json.RawMessage, error) {
	return r.do(ctx, server, http.MethodGet, devicelists.UserDevicesPath+url.PathEscape(userID), nil)
}

func (r deviceListRemote) QueryKeys(ctx context.Context, server string, deviceKeys map[string][]string) (json.RawMessage, error) {
	return r.do(ctx, server, http.MethodPost, devicelists.UserKeysPath, map[string]any{"device_keys": deviceKeys})
}

func (r deviceListRemote) ClaimKeys(ctx context.Context, server string, oneTimeKeys map[string]map[string]string) (json.RawMessage, error) {
	return r.do(ctx, server, http.MethodPost, devicelists.UserKeysClaimPath, map[string]any{"one_time_keys": oneTimeKeys})
}

func (r deviceListRemote) do(ctx context.Context, server, method, path string, body any) (json.RawMessage, error) {
	var out json.RawMessage
	err := r.client.Do(ctx, server, method, path, nil, body, &out)
	var he *matrixfed.HTTPError
	switch {
	case err == nil:
		return out, nil
	case errors.As(err, &he):
		return nil, &devicelists.StatusError{Status: he.Status, Err: err}
	case errors.Is(err, matrixfed.ErrBadResponse):
		return nil, fmt.Errorf("%w: %w", devicelists.ErrBadResponse, err)
	}
	return nil, err
}
