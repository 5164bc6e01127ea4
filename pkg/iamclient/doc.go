// Package iamclient is the Go client of PlasmaCloud's IAM service: typed access to every
// IAM Connect service (users, service accounts, projects, roles, bindings, tokens, signing
// keys) over any number of stateless IAM replicas, and a [TokenSource] that keeps a valid
// access token at hand for other clients.
//
// # Failover
//
// A [Client] holds the replicas' URLs and sends every call to the current one, over one
// pooled HTTP/2 connection per replica (h2c for http://, TLS for https://, see
// plasmacloud.dev/pkg/resilience). A transport failure, an Unavailable answer or an
// attempt that timed out moves the client to the next replica and, when the call may be
// repeated (below), retries it there with exponential backoff and jitter, for as long as
// the caller's context allows. IAM replicas share their state through ChainFire, so any
// replica answers any call: with two replicas, killing one mid-load shows no error to the
// callers of idempotent calls.
//
// # What is retried
//
// Every method's documentation names its kind:
//
//   - read (Get, List, ListKeys): retried on any transient failure.
//   - idempotent (Update, Delete, ResetServiceAccountSecret, Revoke, the password and
//     client_credentials grants): repeating the call converges to the same state, so it is
//     retried like a read. A Delete that is retried after an attempt whose outcome is
//     unknown and then finds nothing to delete reports success: the earlier attempt did it.
//   - create (CreateUser, CreateProject, CreateRole, CreateBinding, CreateServiceAccount):
//     retried like a read, because the outcome of a retry is detectable. When a retry
//     answers AlreadyExists after an attempt whose outcome is unknown (sent, then the
//     connection broke), the client reads the object back: if it matches what was asked
//     for (project description; role permissions and description; binding effect; user
//     display name and disabled flag — a password cannot be compared), the create is
//     reported as a success with the stored object. Otherwise, and always for service
//     accounts (whose client secret is shown only once), the error wraps
//     [ErrOutcomeUnknown] and the AlreadyExists error: the object may be ours, but the
//     client cannot prove it. A first attempt answering AlreadyExists is always an error.
//   - once (the refresh_token grant, RotateKey): retried only when the request provably
//     never left the client (dial refused, no byte written; see resilience.TrackSend).
//     A refresh that reached a replica may have rotated the refresh token; presenting the
//     old one again would look like token theft and revoke the whole token family, so
//     such a failure is returned wrapping [ErrOutcomeUnknown] instead.
//
// Errors the server sends (InvalidArgument, NotFound, PermissionDenied, …) are returned
// at once, wrapped with the call's name and endpoint; connect.CodeOf and errors.As with
// *connect.Error see through the wrapping.
//
// # Tokens
//
// Config.Token supplies the bearer token attached to every call but the token grants.
// [StaticToken] is a fixed token; [Client.NewTokenSource] obtains tokens with client
// credentials or a refresh token and caches them until 80% of their lifetime has passed.
// When a replica answers Unauthenticated and the source can mint a new token, the client
// asks for a fresh one and repeats the call once (a call refused by authentication was
// not applied).
//
// A Client is safe for concurrent use; make one per process and share it.
package iamclient
