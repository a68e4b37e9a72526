package matrix

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Code is a Matrix errcode.
type Code string

// The errcodes todeviced answers with.
const (
	Forbidden     Code = "M_FORBIDDEN"
	UnknownToken  Code = "M_UNKNOWN_TOKEN"
	MissingToken  Code = "M_MISSING_TOKEN"
	NotJSON       Code = "M_NOT_JSON"
	BadJSON       Code = "M_BAD_JSON"
	MissingParam  Code = "M_MISSING_PARAM"
	InvalidParam  Code = "M_INVALID_PARAM"
	TooLarge      Code = "M_TOO_LARGE"
	LimitExceeded Code = "M_LIMIT_EXCEEDED"
	Unrecognized  Code = "M_UNRECOGNIZED"
	NotFound      Code = "M_NOT_FOUND"
	Unauthorized  Code = "M_UNAUTHORIZED"
	Unknown       Code = "M_UNKNOWN"
	Unavailable   Code = "M_UNAVAILABLE"
	// InvalidSignature: a signature did not verify (keys/signatures/upload).
	InvalidSignature Code = "M_INVALID_SIGNATURE"
)

// Error is a Matrix error a request deserves.
type Error struct {
	Status     int
	Code       Code
	Message    string
	RetryAfter time.Duration // for M_LIMIT_EXCEEDED
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// MaxMessage bounds an error message in bytes. Messages quote client input
// through Quote (a short prefix); this is the backstop for a caller
// that forgot, so a hostile megabyte is never echoed back.
const MaxMessage = 512

// New returns an error with the status the spec gives code. Quote client
// input with Quote.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Status: statusOf(code), Code: code, Message: bounded(fmt.Sprintf(format, args...))}
}

// WithStatus returns an error with an explicit status, for codes whose status
// depends on context (M_UNRECOGNIZED is 404 or 405).
func ErrorfStatus(status int, code Code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: bounded(fmt.Sprintf(format, args...))}
}

// bounded cuts a message to MaxMessage bytes at a rune boundary.
func bounded(s string) string { return Cut(s, MaxMessage) }

// As reports whether err is (or wraps) a Matrix error and returns it.
func AsError(err error) (*Error, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

func statusOf(code Code) int {
	switch code {
	case Forbidden:
		return http.StatusForbidden
	case UnknownToken, MissingToken, Unauthorized:
		return http.StatusUnauthorized
	case TooLarge:
		return http.StatusRequestEntityTooLarge
	case LimitExceeded:
		return http.StatusTooManyRequests
	case Unrecognized, NotFound:
		return http.StatusNotFound
	case Unknown:
		return http.StatusInternalServerError
	case Unavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusBadRequest
	}
}
