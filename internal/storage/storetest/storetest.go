// Package storetest is the one conformance suite every storage backend runs
// (the way River checks each of its drivers with one driver test suite).
// Every invariant of DESIGN §4 that the store carries is a test here; a
// backend passes only if it behaves exactly as the others do.
package storetest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/todeviced/todeviced/internal/devicelists"
	"github.com/todeviced/todeviced/internal/inbox"
	"github.com/todeviced/todeviced/internal/storage"
	"github.com/todeviced/todeviced/internal/wakeup"
)

// Harness describes a backend to the suite.
type Harness struct {
	// NewURL returns the URL of a fresh database for t, removed at cleanup.
	// The suite opens it with Migrate set.
	NewURL func(t *testing.T) string
	// Recreate destroys the database at url, as an operator rebuilding or
	// restoring it would, and leaves an empty database (PostgreSQL) or none
	// at all (SQLite: the files are gone). The suite reopens it with Migrate
	// set, which creates what is missing.
	Recreate func(t *testing.T, url string)
	// MultiInstance is true when several instances (replicas) may open one
	// database at once.
	MultiInstance bool
	// WaitingWriters reports how many writers of inst are blocked behind
	// another writer's lock.
	WaitingWriters func(t *testing.T, inst storage.Backend) int
	// Durable checks that a committed write is on disk when the commit
	// returns (synchronous commit), failing t otherwise.
	Durable func(t *testing.T, inst storage.Backend)
}

// Options configure one instance.
type Options struct {
	Hub         *wakeup.Hub
	Hooks       inbox.Hooks
	DeviceHooks devicelists.Hooks
}

// Env is one test's database.
type Env struct {
	t   *testing.T
	h   Harness
	URL string
}

// Run runs the whole suite against the harness.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(t *testing.T, e *Env)
	}{
		{"AcceptAndSyncInOrder", testAcceptAndSyncInOrder},
		{"AtomicAccept", testAtomicAccept},
		{"IdempotentRetry", testIdempotentRetry},
		{"ConcurrentRetryEnqueuesOnce", testConcurrentRetry},
		{"RetryWhileFirstRunning", testRetryWhileFirstRunning},
		{"LateCommitNeverSkipped", testLateCommitNeverSkipped},
		{"OverlappingFanOutsNeverDeadlock", testOverlappingFanOuts},
		{"PositionsNeverReused", testPositionsNeverReused},
		{"RestartKeepsEpochAndPositions", testRestartKeepsEpochAndPositions},
		{"ConcurrentSendsAndSyncsLoseNothing", testConcurrentSendsAndSyncs},
		{"EpochChangesWhenDatabaseRecreated", testEpochChangesWhenRecreated},
		{"AckIsTheNextSince", testAckIsNextSince},
		{"SinceNeverIssuedDeletesNothing", testSinceNeverIssued},
		{"SyncReadsKeyCounts", testSyncReadsKeyCounts},
		{"SyncTokenGuard", testSyncTokenGuard},
		{"SendTokenGuard", testSendTokenGuard},
		{"Recipients", testRecipients},
		{"RemoteMessagesGoToOutbox", testRemoteOutbox},
		{"WakeUpOnCommit", testWakeUpOnCommit},
		{"DeletedDeviceTakesInbox", testDeletedDeviceTakesInbox},
		{"SendRacingDeleteLeavesNoRows", testSendRacingDelete},
		{"PruneTxns", testPruneTxns},
		{"ExpireMessages", testExpireMessages},
		{"InboxBound", testInboxBound},
		{"Backlog", testBacklog},
		{"AdminInbox", testAdminInbox},
		{"PoolStats", testPoolStats},
		{"Durable", testDurable},
		{"DeviceRegistry", testDeviceRegistry},
		{"TokenHeldByAnotherDeviceRefused", testTokenHeldByAnotherDevice},
		{"DeviceListChangedAndLeft", testDeviceListChangedAndLeft},
		{"InviteAndKnockShare", testInviteAndKnockShare},
		{"MembershipOrdering", testMembershipOrdering},
		{"DeviceListDeleteAndCrossSigning", testDeviceListDeleteAndCrossSigning},
		{"LocalKeys", testLocalKeys},
		{"DeviceListLateCommitNeverSkipped", testDeviceListLateCommit},
		{"DeviceListWakeUps", testDeviceListWakeUps},
		{"DeviceListRoomWakeUps", testDeviceListRoomWakeUps},
		{"DeviceUpdatesArePositions", testDeviceUpdatesArePositions},
		{"DeviceListPruning", testDeviceListPruning},
		{"SyncReadsDeviceListHead", testSyncReadsDeviceListHead},
		{"DeviceListOutbox", testDeviceListOutbox},
		{"DeviceListOutboxAnyRoom", testDeviceListOutboxAnyRoom},
		{"DeviceListOutboxExactDelete", testDeviceListOutboxExactDelete},
		{"DeviceListOutboxOrderUnderConcurrentChanges", testDeviceListOutboxOrder},
		{"RemoteDeviceListUpdates", testRemoteDeviceListUpdates},
		{"RemoteDeviceListDropped", testRemoteDeviceListDropped},
		{"RemoteResyncBackoff", testRemoteResyncBackoff},
		{"AdminRemoteCache", testAdminRemoteCache},
		{"ResyncIfUnknownDevice", testResyncIfUnknownDevice},
		{"UserDeviceList", testUserDeviceList},
		{"OneTimeKeyCounts", testOneTimeKeyCounts},
		{"ClaimAndFallback", testClaimAndFallback},
		{"ClaimExactlyOnce", testClaimExactlyOnce},
		{"CrossSigningSignatures", testCrossSigningSignatures},
		{"DehydratedDevices", testDehydratedDevices},
		{"DehydratedConcurrentUploads", testDehydratedConcurrentUploads},
		{"FederationLease", testLease},
		{"FederationLeaseConcurrentAcquire", testLeaseConcurrentAcquire},
		{"FederationFencing", testFencing},
		{"FederationStoredTxnRoundTrip", testStoredTxnRoundTrip},
		{"FederationCompleteDeletesExactlyTheRows", testCompleteDeletesExactlyTheRows},
		{"FederationReplaceTxn", testReplaceTxn},
		{"FederationAdminDestinations", testAdminDestinations},
		{"OutboxOrderUnderConcurrentAccepts", testOutboxOrder},
		{"ExpireOutbox", testExpireOutbox},
		{"OutboxBacklog", testOutboxBacklog},
		{"InboundDedupeAtomicWithInboxRows", testInboundDedupe},
		{"InboundBatch", testInboundBatch},
		{"InboundTxnRecord", testInboundTxnRecord},
		{"StaleKeyRequestCancelled", testStaleKeyRequestCancelled},
		{"StaleKeyRequestRepeated", testStaleKeyRequestRepeated},
		{"StaleSecretRequestCancelled", testStaleSecretRequestCancelled},
		{"StaleVerificationCancelled", testStaleVerificationCancelled},
		{"StaleRemote", testStaleRemote},
		{"StaleConcurrent", testStaleConcurrent},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, &Env{t: t, h: h, URL: h.NewURL(t)})
		})
	}
}

// Open opens an instance on the test's database, closed at cleanup.
func (e *Env) Open(opts Options) storage.Backend {
	e.t.Helper()
	ctx := context.Background()
	// Every call goes through the deadline wrappers, as in a server (with a
	// deadline no healthy test reaches).
	b, err := storage.Open(ctx, storage.Options{URL: e.URL, Migrate: true, Hub: opts.Hub, InboxHooks: opts.Hooks, DeviceListHooks: opts.DeviceHooks,
		CallTimeout: time.Minute})
	require.NoError(e.t, err, "opening backend")
	b.Start(ctx)
	e.t.Cleanup(b.Close)
	return b
}

// Service wraps an instance's inbox store in the inbox service.
func Service(b storage.Backend, serverName string) *inbox.Service {
	return inbox.New(inbox.Config{ServerName: serverName, Store: b.Inbox()})
}

// ctx returns a context bounded so a hang fails the test instead of the run.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// mkDevice creates a device and returns its inbox address.
func mkDevice(t *testing.T, b storage.Backend, userID, deviceID string) inbox.Recipient {
	t.Helper()
	d, _, err := b.Devices().PutDevice(ctx(t), devicelists.PutDevice{UserID: userID, DeviceID: deviceID})
	require.NoError(t, err)
	return inbox.Recipient{UserID: d.UserID, NID: d.NID}
}
