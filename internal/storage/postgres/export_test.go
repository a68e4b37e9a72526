package postgres

// AckAsyncCommitSQL is exported for ack_test.go.
const AckAsyncCommitSQL = ackAsyncCommitSQL

// NotifyPayloads and ParsePayload are exported for notify_test.go.
var (
	NotifyPayloads = notifyPayloads
	ParsePayload   = parsePayload
)
