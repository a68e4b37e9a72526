package matrix

import (
	"errors"
	"fmt"
	"strings"
)

// MaxUserIDLength is the spec's limit on a user id, in bytes.
const MaxUserIDLength = 255

// UserID is a parsed `@localpart:server_name`.
type UserID struct {
	Localpart string
	Server    string
}

func (u UserID) String() string { return "@" + u.Localpart + ":" + u.Server }

// ParseUserID parses a user id. The localpart is checked against the
// historical grammar (any printable ASCII but ':'), because ids created before
// the stricter grammar still exist on the network and must stay reachable.
func ParseUserID(s string) (UserID, error) {
	if len(s) > MaxUserIDLength {
		return UserID{}, fmt.Errorf("user id longer than %d bytes", MaxUserIDLength)
	}
	if !strings.HasPrefix(s, "@") {
		return UserID{}, errors.New("user id does not start with '@'")
	}
	local, server, ok := strings.Cut(s[1:], ":")
	if !ok {
		return UserID{}, errors.New("user id has no ':server_name'")
	}
	if local == "" {
		return UserID{}, errors.New("user id has an empty localpart")
	}
	for i := 0; i < len(local); i++ {
		if c := local[i]; c < 0x21 || c > 0x7e {
			return UserID{}, fmt.Errorf("user id localpart has a forbidden character %q", c)
		}
	}
	if err := ValidateServerName(server); err != nil {
		return UserID{}, err
	}
	return UserID{Localpart: local, Server: server}, nil
}
