package devicelists

import (
	"github.com/todeviced/todeviced/internal/matrix"
)

// isLocal says whether a user id names this server. Server names are DNS
// names, which ignore ASCII case, so "@bob:EXAMPLE.org" names this server
// too — but it is not the user "@bob:example.org": accepting it would make a
// second user of the same person, and treating it as remote would send it
// over federation to ourselves (after a DNS lookup). It is refused, naming
// the canonical spelling, at every entry point that sorts local from remote.
func (r *Service) isLocal(userID string, uid matrix.UserID) (bool, error) {
	if uid.Server == r.serverName {
		return true, nil
	}
	if matrix.SameServer(uid.Server, r.serverName) {
		return false, matrix.Errorf(matrix.InvalidParam, "User id %q names this server as %q: use the canonical server name %q.",
			matrix.Quote(userID), matrix.Quote(uid.Server), r.serverName)
	}
	return false, nil
}

// requireLocal parses a user id that must be local.
func (r *Service) requireLocal(userID string) (matrix.UserID, error) {
	uid, local, err := r.parseLocality(userID)
	if err == nil && !local {
		err = matrix.Errorf(matrix.InvalidParam, "User %q is not local to %q.", matrix.Quote(userID), r.serverName)
	}
	return uid, err
}

// parseLocality parses a user id and says whether it is local (refusing
// this server's name written in another case, see isLocal).
func (r *Service) parseLocality(userID string) (matrix.UserID, bool, error) {
	uid, err := matrix.ParseUserID(userID)
	if err != nil {
		return matrix.UserID{}, false, matrix.Errorf(matrix.InvalidParam, "Invalid user id %q: %v.", matrix.Quote(userID), err)
	}
	local, err := r.isLocal(userID, uid)
	if err != nil {
		return matrix.UserID{}, false, err
	}
	return uid, local, nil
}
