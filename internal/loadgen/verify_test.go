package loadgen

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// ledger builds a run of two senders and three devices with fan-out 2.
func ledger(t *testing.T) ([]*SendLog, []*Inbox) {
	t.Helper()
	logs := []*SendLog{NewSendLog(2), NewSendLog(2)}
	for range 5 {
		logs[0].Confirm(logs[0].Add([]uint32{0, 1}))
	}
	for range 3 {
		logs[1].Confirm(logs[1].Add([]uint32{1, 2}))
	}
	return logs, []*Inbox{NewInbox(), NewInbox(), NewInbox()}
}

// deliverAll delivers every confirmed message in send order, except what
// skip says.
func deliverAll(logs []*SendLog, inboxes []*Inbox, skip func(MsgID) bool) {
	for s, l := range logs {
		for seq := range l.Len() {
			for _, d := range l.Recipients(uint32(seq)) {
				id := MsgID{Sender: uint32(s), Seq: uint32(seq), Device: d}
				if skip == nil || !skip(id) {
					inboxes[d].Deliver(id.Sender, id.Seq)
				}
			}
		}
	}
}

func TestVerifyClean(t *testing.T) {
	logs, inboxes := ledger(t)
	deliverAll(logs, inboxes, nil)
	v := Verify(logs, inboxes, nil)
	assert.True(t, v.OK, "%+v", v)
	assert.Equal(t, int64(16), v.Expected)
	assert.Equal(t, int64(16), v.Delivered)
	assert.Empty(t, v.Examples)
}

func TestVerifyReportsLoss(t *testing.T) {
	logs, inboxes := ledger(t)
	deliverAll(logs, inboxes, func(id MsgID) bool { return id == MsgID{Sender: 0, Seq: 3, Device: 1} })
	v := Verify(logs, inboxes, nil)
	assert.False(t, v.OK)
	assert.Equal(t, int64(1), v.Lost)
	assert.Zero(t, v.Duplicates+v.Reordered+v.Unexpected)
	require.Len(t, v.Examples, 1)
	assert.Contains(t, v.Examples[0], "lost: s0/n3/d1")
}

func TestVerifyReportsDuplicate(t *testing.T) {
	logs, inboxes := ledger(t)
	deliverAll(logs, inboxes, nil)
	// Sender 1's send 0 comes again after everything else: the syncer had
	// processed it, so this is a duplicate and not a reordering.
	first := inboxes[2].Deliver(1, 0)
	assert.False(t, first)
	v := Verify(logs, inboxes, nil)
	assert.False(t, v.OK)
	assert.Equal(t, int64(1), v.Duplicates)
	assert.Zero(t, v.Lost+v.Reordered+v.Unexpected)
	assert.Equal(t, int64(16), v.Delivered)
	require.Len(t, v.Examples, 1)
	assert.Contains(t, v.Examples[0], "duplicate: s1/n0/d2")
}

func TestVerifyReportsReordering(t *testing.T) {
	logs, inboxes := ledger(t)
	swapped := MsgID{Sender: 0, Seq: 2, Device: 0}
	deliverAll(logs, inboxes, func(id MsgID) bool { return id == swapped })
	// Seq 2 arrives after 3 and 4.
	assert.True(t, inboxes[0].Deliver(0, 2))
	v := Verify(logs, inboxes, nil)
	assert.False(t, v.OK)
	assert.Equal(t, int64(1), v.Reordered)
	assert.Zero(t, v.Lost+v.Duplicates+v.Unexpected)
	require.Len(t, v.Examples, 1)
	assert.Contains(t, v.Examples[0], "reordered: s0/n2/d0")
}

func TestVerifyAllowsRedeliveryOfUnprocessedResponse(t *testing.T) {
	logs, inboxes := ledger(t)
	// The syncer of device 1 saw sender 0's sends 1 and 2 in a response it
	// did not process (the connection broke), then got them again.
	inboxes[1].Deliver(0, 0)
	inboxes[1].Unprocessed(0, 1)
	inboxes[1].Unprocessed(0, 2)
	deliverAll(logs, inboxes, func(id MsgID) bool { return id == MsgID{Sender: 0, Seq: 0, Device: 1} })
	v := Verify(logs, inboxes, nil)
	assert.True(t, v.OK, "%+v", v)
	assert.Equal(t, int64(2), v.Redelivered)
}

func TestVerifyReportsEveryKindTogether(t *testing.T) {
	logs, inboxes := ledger(t)
	never := logs[0].Add([]uint32{0, 2}) // never confirmed
	deliverAll(logs, inboxes, func(id MsgID) bool {
		return id == MsgID{Sender: 1, Seq: 2, Device: 2} || id.Seq == never && id.Sender == 0
	})
	inboxes[0].Deliver(0, 1)       // duplicate
	inboxes[2].Deliver(0, never)   // unconfirmed but delivered: allowed
	inboxes[2].Deliver(0, 1)       // sender 0 never addressed device 2 in send 1
	inboxes[0].Corrupt("bad json") // an event that was not ours
	v := Verify(logs, inboxes, func(d uint32) string { return []string{"A", "B", "C"}[d] })
	assert.False(t, v.OK)
	assert.Equal(t, int64(1), v.Lost)
	assert.Equal(t, int64(1), v.Duplicates)
	assert.Equal(t, int64(1), v.Unexpected)
	assert.Equal(t, int64(1), v.Corrupt)
	assert.Equal(t, int64(1), v.UnconfirmedSends)
	assert.Equal(t, int64(1), v.UnconfirmedDelivered)
	joined := strings.Join(v.Examples, "\n")
	assert.Contains(t, joined, "lost: s1/n2/d2 never delivered to C")
	assert.Contains(t, joined, "unexpected: s0/n1/d2")
	assert.Contains(t, joined, "corrupt at A: bad json")
}
