// Package federation speaks the Matrix server-server protocol for todeviced:
// the signing key, canonical JSON and signatures, X-Matrix request
// authentication, remote key fetching, server discovery, the per-destination
// sender of EDUs and the inbound /send transaction handler.
package federation
