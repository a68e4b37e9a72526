package postgres

// AckAsyncCommitSQL is exported for ack_test.go.
const AckAsyncCommitSQL = ackAsyncCommitSQL
