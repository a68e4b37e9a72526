// Package federation carries todeviced's EDUs between servers: the
// per-destination sender of the outboxes' EDUs, the inbound /send
// transaction handler, the outbox feed and the housekeeping of what they
// keep (Store, written once on a backend's statements: Database, Queries).
//
// docs/FEDERATION.md describes the whole for operators and homeservers.
//
// # Sender
//
// Sender drains EDU sources (EDUSource, in federation's own types; the
// wiring adapts the inbox's to-device outbox and the device lists' to it) to
// their destinations: a goroutine per destination with work,
// started by wake-ups (wakeup.Hub.Observe hears every OutboxKey) and a
// periodic sweep. Store holds what it needs to be correct across replicas
// and restarts: a lease per destination judged by the database clock, with
// every write of the holder fenced by (holder, generation) in the same
// database transaction; the transaction stored before its first attempt
// (at most MaxEDUsPerTxn EDUs, sources filled by quota) and resent
// unchanged until 2xx, then deleted with exactly the outbox rows it covers;
// the destination's backoff (Backoff: exponential, full jitter, persisted).
// RejectAfter identical refusals (countsAsRejection) or an age past the
// message TTL drop a transaction; drops are logged and counted (Metrics).
// Transaction ids start with TxnIDPrefix.
//
// # Receiver
//
// Receiver processes inbound transactions (HandleTransaction, after the
// HTTP layer authenticated the request with VerifyRequest) and EDUs a
// homeserver hands over (HandleEDUs): replays are answered from a record,
// PDUs each get an error (PDUEventIDs names them), m.direct_to_device EDUs
// of wrong senders or for other servers' users are dropped and counted, the
// rest are stored through a ToDeviceInbox (the inbox), deduplicated by
// (origin, message_id) in the database transaction that stores them.
// Device-list EDUs go to a DeviceListHandler (devicelists.Federation).
//
// # Feed and housekeeping
//
// Feed hands the outboxes (Outbox: the to-device one and the device
// lists') to a homeserver that sends
// federation traffic itself, mixed by the sender's quotas (pull, then
// acknowledge exactly the rows pulled). Housekeeper expires EDUs of every
// outbox past the TTL, prunes the inbound transaction record and refreshes
// the outbox gauges.
//
// The protocol primitives all this is built on (canonical JSON, signing
// keys, X-Matrix, discovery, key fetching, the signed client, backoff) are
// package matrixfed, which knows no domain package.
package federation
