// Package mxid parses Matrix identifiers: user ids and server names, following
// the grammar of the specification's appendix.
package mxid

import (
	"errors"
	"fmt"
	"net/netip"
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

// ValidateServerName checks `host[:port]` where host is an IPv4 literal, an
// IPv6 literal in brackets, or a DNS name.
func ValidateServerName(s string) error {
	if s == "" {
		return errors.New("empty server name")
	}
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return fmt.Errorf("server name %q: unterminated IPv6 literal", s)
		}
		addr, err := netip.ParseAddr(s[1:end])
		if err != nil || !addr.Is6() {
			return fmt.Errorf("server name %q: bad IPv6 literal", s)
		}
		host, port = "", s[end+1:]
		if port != "" {
			if port[0] != ':' {
				return fmt.Errorf("server name %q: junk after IPv6 literal", s)
			}
			port = port[1:]
			if port == "" {
				return fmt.Errorf("server name %q: empty port", s)
			}
		}
	} else if i := strings.LastIndexByte(s, ':'); i >= 0 {
		host, port = s[:i], s[i+1:]
		if port == "" {
			return fmt.Errorf("server name %q: empty port", s)
		}
	}
	if port != "" {
		if len(port) > 5 {
			return fmt.Errorf("server name %q: bad port", s)
		}
		for i := 0; i < len(port); i++ {
			if port[i] < '0' || port[i] > '9' {
				return fmt.Errorf("server name %q: bad port", s)
			}
		}
	}
	if host == "" { // IPv6 literal, already checked
		return nil
	}
	if len(host) > 255 {
		return fmt.Errorf("server name %q: host too long", s)
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '.':
		default:
			return fmt.Errorf("server name %q: forbidden character %q", s, c)
		}
	}
	return nil
}
