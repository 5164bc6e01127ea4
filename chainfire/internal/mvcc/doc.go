// Package mvcc is ChainFire's replicated state machine: an etcd-v3-compatible
// multi-version key-value store on pebble, with leases, cluster members and watches.
//
// # Ownership and concurrency
//
// One goroutine, the raft FSM, calls Apply and Restore (and normally Snapshot); every
// other method is safe for concurrent use with them and with each other. Apply writes
// all entries of a call in one pebble batch together with the last applied raft index
// and term, commits it, then publishes the new revision (Revision, Range) and notifies
// watchers. A restart therefore resumes exactly where the store left off, and raft's log
// replay is skipped up to AppliedIndex. Pebble's WAL is not fsynced per batch unless
// Options.Sync: the raft log is the durable record and replays what pebble lost.
// Snapshot does sync, because raft truncates its log after a snapshot.
//
// # Revisions and data model
//
// As in etcd, one global revision starts at 1 and every write transaction that changes
// something raises it by one; each key carries create_revision, mod_revision, version
// and lease. Every version of every key is kept until compaction, so Range can read at
// any revision at or above the compaction point. The FSM keeps an in-memory index of the
// newest version of every live key (like etcd's key index, without the history), so a
// put or compare reads pebble only when it needs a value.
//
// # Watches
//
// Watch delivery follows etcd's watchable store. A synced watcher is fed from Apply,
// right after the commit, through a bounded channel. When the channel is full, Apply
// does not wait: the watcher becomes unsynced and a background goroutine catches it up
// from the by-revision index in pebble, in batches of whole revisions, then makes it
// synced again. No event is lost, duplicated or reordered. A watcher whose next revision
// is compacted away receives a CompactRevision batch and is closed.
//
// # Compaction
//
// Compact sets the compaction revision at once (reads below it fail with ErrCompacted);
// a background goroutine then deletes the unreachable versions in bounded batches,
// ordered so that readers at or above the compaction revision never notice.
// WaitCompaction waits for it. HashKV is independent of that progress.
//
// # Snapshots
//
// Snapshot.WriteTo streams every pebble key with a header and a checksum trailer;
// Restore loads such a stream into a fresh database beside the live one, verifies it
// completely and only then switches to it (crash-safe, via dir/CURRENT).
package mvcc
