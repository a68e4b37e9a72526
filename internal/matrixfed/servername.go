package matrixfed

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// maxServerNameLength bounds server names. The grammar allows a 255-character
// DNS name plus a port; anything longer is garbage we should not put into
// DNS queries or URLs.
const maxServerNameLength = 255 + 1 + 5

// serverName is a parsed Matrix server name (spec appendix "Server Name"):
// hostname [":" port].
type serverName struct {
	// host is a DNS name or an IP literal; IPv6 literals are kept without
	// their brackets.
	host string
	// port is the explicit port, or "" when the name has none.
	port string
	// ip is the parsed address when host is an IP literal.
	ip netip.Addr
}

// isIP reports whether the host part is an IP literal.
func (s serverName) isIP() bool { return s.ip.IsValid() }

// hostPort joins host and port (or defaultPort if the name has none),
// bracketing IPv6 literals.
func (s serverName) hostPort(defaultPort string) string {
	port := s.port
	if port == "" {
		port = defaultPort
	}
	return net.JoinHostPort(s.host, port)
}

// ValidateServerName checks that name follows the Matrix server name grammar:
// a DNS name, dotted-quad IPv4 literal or bracketed IPv6 literal, optionally
// followed by ":port". Names received from other servers (for example the
// X-Matrix origin) must pass this before they are used for DNS or URLs.
func ValidateServerName(name string) error {
	_, err := parseServerName(name)
	return err
}

func parseServerName(name string) (serverName, error) {
	if name == "" {
		return serverName{}, errors.New("server name is empty")
	}
	if len(name) > maxServerNameLength {
		return serverName{}, fmt.Errorf("server name is longer than %d characters", maxServerNameLength)
	}
	var s serverName
	rest := name
	if strings.HasPrefix(rest, "[") {
		end := strings.IndexByte(rest, ']')
		if end < 0 {
			return serverName{}, fmt.Errorf("server name %q: unterminated IPv6 literal", name)
		}
		literal := rest[1:end]
		for _, c := range literal {
			if !(isDigit(c) || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F' || c == ':' || c == '.') {
				return serverName{}, fmt.Errorf("server name %q: invalid IPv6 literal", name)
			}
		}
		ip, err := netip.ParseAddr(literal)
		if err != nil || !ip.Is6() {
			return serverName{}, fmt.Errorf("server name %q: invalid IPv6 literal", name)
		}
		s.host, s.ip = literal, ip
		rest = rest[end+1:]
		if rest != "" {
			if !strings.HasPrefix(rest, ":") {
				return serverName{}, fmt.Errorf("server name %q: unexpected text after IPv6 literal", name)
			}
			s.port = rest[1:]
			if err := validatePort(s.port); err != nil {
				return serverName{}, fmt.Errorf("server name %q: %w", name, err)
			}
		}
		return s, nil
	}

	host, port, hasPort := strings.Cut(rest, ":")
	if hasPort {
		if err := validatePort(port); err != nil {
			return serverName{}, fmt.Errorf("server name %q: %w", name, err)
		}
		s.port = port
	}
	if host == "" {
		return serverName{}, fmt.Errorf("server name %q: empty hostname", name)
	}
	for _, c := range host {
		if !(isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '.') {
			return serverName{}, fmt.Errorf("server name %q: invalid character %q in hostname", name, c)
		}
	}
	s.host = host
	if ip, err := netip.ParseAddr(host); err == nil && ip.Is4() {
		s.ip = ip
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
