package devicelists

import (
	"github.com/todeviced/todeviced/internal/mxerr"
	"github.com/todeviced/todeviced/internal/mxid"
	"github.com/todeviced/todeviced/internal/mxjson"
)

// isLocal says whether a user id names this server. Server names are DNS
// names, which ignore ASCII case, so "@bob:EXAMPLE.org" names this server
// too — but it is not the user "@bob:example.org": accepting it would make a
// second user of the same person, and treating it as remote would send it
// over federation to ourselves (after a DNS lookup). It is refused, naming
// the canonical spelling, at every entry point that sorts local from remote.
func (r *Service) isLocal(userID string, uid mxid.UserID) (bool, error) {
	if uid.Server == r.serverName {
		return true, nil
	}
	if mxid.SameServer(uid.Server, r.serverName) {
		return false, mxerr.New(mxerr.InvalidParam, "User id %q names this server as %q: use the canonical server name %q.",
			mxjson.Quote(userID), mxjson.Quote(uid.Server), r.serverName)
	}
	return false, nil
}

// requireLocal parses a user id that must be local.
func (r *Service) requireLocal(userID string) (mxid.UserID, error) {
	uid, err := mxid.ParseUserID(userID)
	if err != nil {
		return mxid.UserID{}, mxerr.New(mxerr.InvalidParam, "Invalid user id %q: %v.", mxjson.Quote(userID), err)
	}
	local, err := r.isLocal(userID, uid)
	if err != nil {
		return mxid.UserID{}, err
	}
	if !local {
		return mxid.UserID{}, mxerr.New(mxerr.InvalidParam, "User %q is not local to %q.", mxjson.Quote(userID), r.serverName)
	}
	return uid, nil
}
