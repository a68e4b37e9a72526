package matrix

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// MaxServerNameLength bounds server names. The grammar allows a 255-character
// DNS name plus a port; anything longer is garbage we should not put into
// DNS queries or URLs.
const MaxServerNameLength = 255 + 1 + 5

// ServerName is a parsed Matrix server name (spec appendix "Server Name"):
// hostname [":" port].
type ServerName struct {
	// Host is a DNS name or an IP literal; IPv6 literals are kept without
	// their brackets.
	Host string
	// Port is the explicit port, or "" when the name has none.
	Port string
	// IP is the parsed address when Host is an IP literal.
	IP netip.Addr
}

// IsIP reports whether the host part is an IP literal.
func (s ServerName) IsIP() bool { return s.IP.IsValid() }

// HostPort joins host and port (or defaultPort if the name has none),
// bracketing IPv6 literals.
func (s ServerName) HostPort(defaultPort string) string {
	port := s.Port
	if port == "" {
		port = defaultPort
	}
	return net.JoinHostPort(s.Host, port)
}

// ValidateServerName checks that name follows the Matrix server name grammar:
// a DNS name, dotted-quad IPv4 literal or bracketed IPv6 literal, optionally
// followed by ":port" (1 to 65535). It is the one server-name check of every
// entry point: user ids, the X-Matrix origin, configuration, discovery.
// Names received from other servers must pass it before they are used for
// DNS or URLs.
func ValidateServerName(name string) error {
	_, err := ParseServerName(name)
	return err
}

// ParseServerName parses a server name (see ValidateServerName).
func ParseServerName(name string) (ServerName, error) {
	if name == "" {
		return ServerName{}, errors.New("server name is empty")
	}
	if len(name) > MaxServerNameLength {
		return ServerName{}, fmt.Errorf("server name is longer than %d characters", MaxServerNameLength)
	}
	var s ServerName
	rest := name
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return ServerName{}, fmt.Errorf("server name %q: unterminated IPv6 literal", name)
		}
		literal := rest[1:end]
		for _, c := range literal {
			if !(isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return ServerName{}, fmt.Errorf("server name %q: invalid IPv6 literal", name)
			}
		}
		ip, err := netip.ParseAddr(literal)
		if err != nil || !ip.Is6() {
			return ServerName{}, fmt.Errorf("server name %q: invalid IPv6 literal", name)
		}
		s.Host, s.IP = literal, ip
		rest = rest[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return ServerName{}, fmt.Errorf("server name %q: unexpected text after IPv6 literal", name)
			}
			s.Port = rest[1:]
			if err := validatePort(s.Port); err != nil {
				return ServerName{}, fmt.Errorf("server name %q: %w", name, err)
			}
		}
		return s, nil
	}

	host, port, hasPort := strings.Cut(rest, ":")
	if hasPort {
		if err := validatePort(port); err != nil {
			return ServerName{}, fmt.Errorf("server name %q: %w", name, err)
		}
		s.Port = port
	}
	if host == "" {
		return ServerName{}, fmt.Errorf("server name %q: empty hostname", name)
	}
	for _, c := range host {
		if !(isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.') {
			return ServerName{}, fmt.Errorf("server name %q: invalid character %q in hostname", name, c)
		}
	}
	s.Host = host
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		s.IP = ip
	}
	return s, nil
}

// validatePort checks the grammar's 1*5DIGIT port, which must also fit TCP.
func validatePort(port string) error {
	if port == "" || len(port) > 5 {
		return fmt.Errorf("invalid port %q", port)
	}
	for _, c := range port {
		if !isDigit(c) {
			return fmt.Errorf("invalid port %q", port)
		}
	}
	n, _ := strconv.Atoi(port)
	if n < 1 || n > 65535 {
		return fmt.Errorf("port %q out of range", port)
	}
	return nil
}

func isDigit(c rune) bool { return c >= '0' && c <= '9' }
