// Package chainfire is the client of ChainFire, PlasmaCloud's replicated
// key-value store. ChainFire serves etcd's v3 API (KV, Watch, Lease,
// Cluster, Maintenance) over Connect, so this client also talks to a real
// etcd; every PlasmaCloud service uses it instead of etcd's clientv3.
//
// A [Client] is built once with [New] from a list of endpoints and shared
// by every goroutine of a process: it is safe for concurrent use, keeps one
// pooled HTTP/2 connection per endpoint, and is closed with [Client.Close].
//
// # Endpoints and failover
//
// Any member can serve any call (a ChainFire server forwards writes and
// linearizable reads to its leader). The client sends everything to one
// current endpoint and moves to the next one when a call fails in a way
// that blames the endpoint (see [resilience.Endpoints]).
//
// # Retry contract
//
// Calls are retried with exponential backoff and jitter, on the next
// endpoint, for as long as the caller's context allows ([Config.Retry]
// tunes the backoff; [Config.RequestTimeout] bounds each attempt). Which
// errors are retried depends on whether repeating the call is safe:
//
//   - Reads — Get, a Txn made only of gets, Status, MemberList,
//     TimeToLive, Leases, KeepAliveOnce, HashKV, Defragment, Snapshot —
//     are retried on Unavailable, Aborted, ResourceExhausted from the
//     server, on transport failures (refused, reset or lost connections)
//     and on an attempt that ran out of RequestTimeout.
//   - Writes — Put, Delete, Txn with a put or delete, Compact, Grant,
//     Revoke, MemberAdd/Remove/Update/Promote, MoveLeader — are retried only
//     when the request provably was not applied: the server answered
//     Unavailable, or the request never left the client (the connection
//     could not be dialled, or failed before the request was written). The
//     ChainFire server promises that Unavailable means "not applied"; when
//     it proposed a write but cannot know its fate (leader lost mid-commit)
//     it answers Unknown, saying so in the message.
//
// A write that fails in a way that leaves its outcome open — Unknown from
// the server (or DeadlineExceeded, Canceled, Internal, which may strike
// after proposing), a connection lost after the request was sent, an
// attempt or caller deadline hit while in flight — is returned at once,
// unretried, wrapping [ErrOutcomeUnknown]. The caller decides: re-read and compare, or
// make the write idempotent with a Txn guarded by a compare (for example
// on ModRevision) and retry it.
//
// Every other error is returned as is: errors keep their connect code
// (connect.CodeOf works on them) and name the call and the endpoint.
//
// # Watches
//
// [Client.Watch] returns a channel of [WatchResponse] that survives
// disconnects: after any stream error it reconnects, with backoff, to the
// next endpoint and resumes from the revision after the last one it
// delivered. It never delivers a revision twice and never a part of one
// (a server must not split one revision's events over several responses;
// etcd and ChainFire do not). If the revision to resume from has been
// compacted, the consumer receives one response with Relist set and the
// CompactRevision, then the channel closes: the consumer must read the
// current state again (Get) and watch from that read's revision + 1.
//
// # Leases
//
// [Client.KeepAlive] renews a lease for as long as its context lives,
// re-establishing the keepalive stream on another endpoint after errors,
// and closes its channel when the lease is gone.
package chainfire
