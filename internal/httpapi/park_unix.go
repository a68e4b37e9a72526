//go:build unix

package httpapi

import (
	"errors"
	"net"
	"syscall"
)

// peerClosed peeks at c without blocking or consuming anything: true when
// the client has closed or reset it. Bytes waiting (a pipelined request)
// or nothing to read both mean it is still there.
func peerClosed(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	closed := false
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, rerr := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case rerr == nil:
			closed = n == 0 // end of stream
		case errors.Is(rerr, syscall.EAGAIN), errors.Is(rerr, syscall.EINTR):
		default:
			closed = true // reset, or worse
		}
		return true // never wait for readiness
	})
	return closed || err != nil
}
