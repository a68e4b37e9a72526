package federation

import "net/http"

// RejectAfter is how many times in a row a transaction may be refused
// with the same 4xx (see countsAsRejection) before it is dropped: the
// destination will not take these EDUs, and retrying them forever would
// hold up everything queued behind them.
const RejectAfter = 5

// countsAsRejection reports whether a status refuses a transaction in the
// way that counts towards dropping it: a 4xx other than 429 (rate limited:
// wait and retry), 401 (the receiver often cannot fetch our key for a
// moment, and dropping messages for that would lose them) and 408 (a
// timeout, not a verdict).
func countsAsRejection(status int) bool {
	if status < 400 || status > 499 {
		return false
	}
	switch status {
	case http.StatusTooManyRequests, http.StatusUnauthorized, http.StatusRequestTimeout:
		return false
	}
	return true
}
