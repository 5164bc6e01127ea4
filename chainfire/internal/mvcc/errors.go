package mvcc

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps one of them (or is a
// *CompactedError, which Is ErrCompacted); the API layer maps them to RPC codes once.
// Messages match etcd's where etcd has one, so clients that compare strings still work.
var (
	// ErrCompacted: the requested revision is below the compaction point (OutOfRange).
	ErrCompacted = errors.New("mvcc: required revision has been compacted")
	// ErrFutureRev: the requested revision is above the current revision (OutOfRange).
	ErrFutureRev = errors.New("mvcc: required revision is a future revision")
	// ErrLeaseNotFound: a put or revoke names a lease that does not exist (NotFound).
	ErrLeaseNotFound = errors.New("etcdserver: requested lease not found")
	// ErrLeaseExists: a grant reuses the id of a live lease (FailedPrecondition).
	ErrLeaseExists = errors.New("etcdserver: lease already exists")
	// ErrKeyNotFound: a put with ignore_value or ignore_lease names a missing key
	// (InvalidArgument).
	ErrKeyNotFound = errors.New("etcdserver: key not found")
	// ErrDuplicateKey: one txn writes the same key twice (InvalidArgument).
	ErrDuplicateKey = errors.New("etcdserver: duplicate key given in txn request")
	// ErrInvalid is wrapped by every validation error; the wrapping message names the
	// offending field, e.g. "invalid request: put.key is empty" (InvalidArgument).
	ErrInvalid = errors.New("invalid request")
	// ErrStorage is wrapped by failures of the underlying pebble database (I/O errors,
	// corruption). When Apply reports it, nothing of that Apply call was committed and
	// the state machine cannot make progress: the caller should treat it as fatal.
	ErrStorage = errors.New("mvcc: storage failure")
	// ErrClosed is returned by operations on a closed Store or Snapshot.
	ErrClosed = errors.New("mvcc: store closed")
)

// CompactedError reports that a watch (or read) asked for history that compaction
// already removed. errors.Is(err, ErrCompacted) holds for it; errors.As recovers the
// compaction revision so the API layer can fill WatchResponse.compact_revision.
type CompactedError struct {
	CompactRevision int64
}

func (e *CompactedError) Error() string {
	return fmt.Sprintf("%s (compact revision %d)", ErrCompacted.Error(), e.CompactRevision)
}

// Is makes errors.Is(err, ErrCompacted) true for a *CompactedError.
func (e *CompactedError) Is(target error) bool { return target == ErrCompacted }

func storageErr(op string, err error) error {
	return fmt.Errorf("%w: %s: %v", ErrStorage, op, err)
}
