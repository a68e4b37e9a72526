package federation

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/todeviced/todeviced/internal/matrix"
)

// Inbound limits.
const (
	// MaxPDUsPerTxn is the spec's limit of PDUs in one transaction.
	MaxPDUsPerTxn = 50
	// MaxTxnBytes bounds a /send body: 100 EDUs of 64 KiB and 50 PDUs of
	// 64 KiB fit with room to spare.
	MaxTxnBytes = 16 << 20
)

// DeviceListHandler takes the m.device_list_update and m.signing_key_update
// EDUs of other servers. The device-lists component provides it; until then
// they are counted and ignored. An error means the EDU could not be stored:
// the transaction is answered with an error so the origin retries it.
type DeviceListHandler interface {
	HandleDeviceListEDU(ctx context.Context, origin, eduType string, content json.RawMessage) error
	// SendingDevices is shown the messages of each well-formed inbound
	// to-device EDU before they are stored, so that a sending device
	// missing from the cache of the sender's list makes it resync.
	SendingDevices(ctx context.Context, sender, eventType string, messages map[string]map[string]json.RawMessage)
}

// InboundToDevice is one checked m.direct_to_device EDU from another server:
// every recipient is a user of ours and every content a compact JSON object.
type InboundToDevice struct {
	// Origin is the authenticated server the EDU came from; with MessageID
	// it is the deduplication key.
	Origin    string
	MessageID string
	Sender    string
	EventType string
	// Messages are the contents by user and device id ("*": every device).
	Messages map[string]map[string]json.RawMessage
}

// ToDeviceInbox stores the to-device messages other servers send: the
// inbox, adapted in the wiring (internal/server).
type ToDeviceInbox interface {
	// AcceptRemote stores the EDUs in one database transaction, in order,
	// each unless its (origin, message id) was seen before: duplicate[i]
	// says batch[i] was. An error means nothing was stored.
	AcceptRemote(ctx context.Context, batch []InboundToDevice) (duplicate []bool, err error)
}

// ReceiverConfig configures a Receiver.
type ReceiverConfig struct {
	// ServerName is ours: EDUs may only address its users.
	ServerName string
	Store      Store
	Inbox      ToDeviceInbox
	// DeviceLists takes device-list EDUs; nil ignores them.
	DeviceLists DeviceListHandler
	Metrics     *Metrics
	Logger      *slog.Logger
}

// Receiver processes what other servers send: transactions arriving at
// PUT /send/{txnId} in standalone mode, and EDUs a homeserver's federation
// receiver hands over. Authentication is the caller's job; the Receiver gets
// the authenticated origin.
type Receiver struct {
	cfg ReceiverConfig
	log *slog.Logger
	m   *Metrics
}

// NewReceiver returns a Receiver.
func NewReceiver(cfg ReceiverConfig) *Receiver {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	return &Receiver{cfg: cfg, log: cfg.Logger, m: cfg.Metrics}
}

type transactionJSON struct {
	Origin *string           `json:"origin"`
	PDUs   []json.RawMessage `json:"pdus"`
	EDUs   []json.RawMessage `json:"edus"`
}

type pduResult struct {
	Error string `json:"error,omitempty"`
}

// HandleTransaction processes transaction txnID from the authenticated
// origin and returns the body of the 200 answer. A replay of a transaction
// answered before gets the recorded answer and changes nothing. Errors are
// *matrix.Error for a request that is wrong (answer it, do not retry), or
// anything else when storing failed: answer 5xx so the origin retries, and
// nothing is recorded.
func (r *Receiver) HandleTransaction(ctx context.Context, origin, txnID string, body []byte) ([]byte, error) {
	if resp, found, err := r.cfg.Store.InboundTxn(ctx, origin, txnID); err != nil {
		return nil, err
	} else if found {
		return resp, nil
	}
	var txn transactionJSON
	if err := json.Unmarshal(body, &txn); err != nil {
		return nil, matrix.Errorf(matrix.BadJSON, "Malformed transaction: %v.", err)
	}
	if txn.Origin != nil && *txn.Origin != origin {
		return nil, matrix.Errorf(matrix.Forbidden, "The transaction's origin %q is not the server that signed the request.", matrix.Quote(*txn.Origin))
	}
	if len(txn.PDUs) > MaxPDUsPerTxn || len(txn.EDUs) > MaxEDUsPerTxn {
		return nil, matrix.Errorf(matrix.BadJSON, "A transaction carries at most %d PDUs and %d EDUs.", MaxPDUsPerTxn, MaxEDUsPerTxn)
	}
	if err := r.HandleEDUs(ctx, origin, txn.EDUs); err != nil {
		return nil, err
	}
	// We hold no rooms: every PDU gets an error, never a silent success.
	results := make(map[string]pduResult, len(txn.PDUs))
	for _, pdu := range txn.PDUs {
		ids, err := PDUEventIDs(pdu)
		if err != nil {
			continue // nothing to name it by
		}
		for _, id := range ids {
			results[id] = pduResult{Error: pduError}
		}
	}
	resp, err := json.Marshal(struct {
		PDUs map[string]pduResult `json:"pdus"`
	}{results})
	if err != nil {
		return nil, err
	}
	if err := r.cfg.Store.RecordInboundTxn(ctx, origin, txnID, resp); err != nil {
		// The EDUs are stored: a replay finds them by message id.
		r.log.WarnContext(ctx, "recording inbound transaction failed", "origin", origin, "err", err)
	}
	return resp, nil
}

// HandleEDUs processes EDUs from the authenticated origin. EDUs that are
// wrong are dropped and counted (the origin must not retry them forever);
// the to-device messages of the others are stored together, in order, in one
// database transaction. An error means storing failed and the whole batch
// should be retried (what was stored is deduplicated then).
func (r *Receiver) HandleEDUs(ctx context.Context, origin string, edus []json.RawMessage) error {
	var accepts []InboundToDevice
	for _, raw := range edus {
		e, err := r.handleEDU(ctx, origin, raw)
		if err != nil {
			return err
		}
		if e != nil {
			accepts = append(accepts, *e)
		}
	}
	if len(accepts) == 0 {
		return nil
	}
	duplicates, err := r.cfg.Inbox.AcceptRemote(ctx, accepts)
	if err != nil {
		return err
	}
	for _, dup := range duplicates {
		if dup {
			r.m.EDUsDropped.WithLabelValues(DropDuplicate).Inc()
		}
	}
	return nil
}

type eduJSON struct {
	Type    string          `json:"edu_type"`
	Content json.RawMessage `json:"content"`
}

// handleEDU checks one EDU; a to-device EDU to store comes back.
func (r *Receiver) handleEDU(ctx context.Context, origin string, raw json.RawMessage) (*InboundToDevice, error) {
	var e eduJSON
	if err := json.Unmarshal(raw, &e); err != nil {
		r.m.EDUsReceived.WithLabelValues(eduOther).Inc()
		r.dropped(ctx, origin, "", DropMalformed)
		return nil, nil
	}
	r.m.EDUsReceived.WithLabelValues(eduTypeLabel(e.Type)).Inc()
	switch e.Type {
	case matrix.EDUDirectToDevice:
		return r.directToDevice(ctx, origin, e.Content)
	case matrix.EDUDeviceListUpdate, matrix.EDUSigningKeyUpdate:
		if r.cfg.DeviceLists == nil {
			return nil, nil
		}
		if err := r.cfg.DeviceLists.HandleDeviceListEDU(ctx, origin, e.Type, e.Content); err != nil {
			return nil, fmt.Errorf("handling %s from %s: %w", e.Type, origin, err)
		}
	}
	return nil, nil // EDU types that are not ours are the homeserver's business
}

type directToDeviceJSON struct {
	Sender    string                                `json:"sender"`
	Type      string                                `json:"type"`
	MessageID string                                `json:"message_id"`
	Messages  map[string]map[string]json.RawMessage `json:"messages"`
}

// directToDevice checks an m.direct_to_device EDU. One that no store could
// hold or no /sync could carry (DESIGN invariants 12 and 13) is dropped and
// counted, never stored and never an error: an error would answer the whole
// transaction 5xx, and its origin would retry it, and everything queued
// behind it, until its TTL. Identifiers follow the matrix package's validators (the message
// id is as lenient as established servers, within 255 bytes of text), and
// each message's content is at most matrix.MaxContentDepth levels deep.
func (r *Receiver) directToDevice(ctx context.Context, origin string, content json.RawMessage) (*InboundToDevice, error) {
	var c directToDeviceJSON
	if err := json.Unmarshal(content, &c); err != nil || c.Messages == nil {
		r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropMalformed)
		return nil, nil
	}
	if matrix.ValidateEventType(c.Type) != nil || matrix.ValidateMessageID(c.MessageID) != nil {
		r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropInvalidID)
		return nil, nil
	}
	sender, err := matrix.ParseUserID(c.Sender)
	if err != nil {
		r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropInvalidID)
		return nil, nil
	}
	if !matrix.SameServer(sender.Server, origin) {
		r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropSenderNotOrigin)
		return nil, nil
	}
	msgs := make(map[string]map[string]json.RawMessage, len(c.Messages))
	for userID, devices := range c.Messages {
		if devices == nil {
			r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropMalformed)
			return nil, nil
		}
		for deviceID, content := range devices {
			if matrix.ValidateDeviceID(deviceID) != nil {
				r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropInvalidID)
				return nil, nil
			}
			if len(content) == 0 || content[0] != '{' {
				r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropMalformed)
				return nil, nil
			}
			if err := matrix.CheckJSON(content, matrix.MaxContentDepth); err != nil {
				reason := DropMalformed
				if errors.Is(err, matrix.ErrTooDeep) {
					reason = DropTooDeep
				}
				r.dropped(ctx, origin, matrix.EDUDirectToDevice, reason)
				return nil, nil
			}
			var buf bytes.Buffer
			if err := json.Compact(&buf, content); err != nil {
				r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropMalformed)
				return nil, nil
			}
			devices[deviceID] = buf.Bytes()
		}
		msgs[userID] = devices
	}
	// A server may only deliver to its own users.
	for userID := range msgs {
		if uid, err := matrix.ParseUserID(userID); err != nil || uid.Server != r.cfg.ServerName {
			r.dropped(ctx, origin, matrix.EDUDirectToDevice, DropRecipientNotLocal)
			return nil, nil
		}
	}
	if r.cfg.DeviceLists != nil {
		r.cfg.DeviceLists.SendingDevices(ctx, c.Sender, c.Type, msgs)
	}
	return &InboundToDevice{Origin: origin, MessageID: c.MessageID, Sender: c.Sender, EventType: c.Type, Messages: msgs}, nil
}

// dropped counts and logs an inbound EDU given up (never its content).
func (r *Receiver) dropped(ctx context.Context, origin, eduType, reason string) {
	r.m.EDUsDropped.WithLabelValues(reason).Inc()
	r.log.InfoContext(ctx, "dropped inbound EDU", "origin", origin, "edu_type", eduType, "reason", reason)
}
