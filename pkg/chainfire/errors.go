package chainfire

import "errors"

var (
	// ErrOutcomeUnknown is wrapped by the error of a write that may or may
	// not have been applied (see the package documentation). Such a write
	// is never retried by the client.
	ErrOutcomeUnknown = errors.New("chainfire: outcome of write unknown (it may or may not have been applied)")

	// ErrCompacted is carried by the Relist response of a watch whose
	// resume revision has been compacted away.
	ErrCompacted = errors.New("chainfire: required revision has been compacted")

	// ErrWatchCanceled is wrapped by the error of a watch the server
	// canceled for a reason other than compaction.
	ErrWatchCanceled = errors.New("chainfire: watch canceled by server")

	// ErrLeaseNotFound is returned when a lease does not exist (or has
	// expired) on a keepalive.
	ErrLeaseNotFound = errors.New("chainfire: lease not found")

	// ErrInvalidTxn is wrapped by the error of a Txn built wrongly (bad
	// compare operator or value type, If/Then/Else misuse).
	ErrInvalidTxn = errors.New("chainfire: invalid txn")

	// ErrClosed is returned by calls made after [Client.Close].
	ErrClosed = errors.New("chainfire: client closed")

	// ErrNoLeader is returned by MoveLeader when no endpoint reports a
	// leader.
	ErrNoLeader = errors.New("chainfire: no endpoint reports a leader")

	// ErrSnapshotTruncated is returned by a snapshot reader whose stream
	// ended before the server said it was complete.
	ErrSnapshotTruncated = errors.New("chainfire: snapshot stream ended early")
)
