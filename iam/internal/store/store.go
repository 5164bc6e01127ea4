// Package store is IAM's model over ChainFire: users, service accounts, projects, roles,
// bindings, the principal watermarks written when an identity is disabled or deleted,
// login failure records, and the first-start bootstrap.
//
// # Layout
//
// Everything lives under /iam/ (see docs/dev/iam-brief.md); values are JSON, protobuf
// messages as protojson:
//
//	/iam/users/<name>                             {"user": User, "password_hash": "$argon2id$..."}
//	/iam/serviceaccounts/<name>                   {"service_account": ServiceAccount, "secret_hash": "$sha256$..."}
//	/iam/projects/<name>                          Project
//	/iam/roles/<name>                             Role
//	/iam/bindings/<project or "-">/<principal>/<role>   Binding
//	/iam/watermarks/principal/<principal>         Watermark (written here on disable/delete)
//	/iam/lockout/<subject>                        failure record JSON, on a lease
//	/iam/meta/bootstrap                           bootstrap marker
//
// # Consistency
//
// IAM replicas are stateless and share one ChainFire, so every write is a transaction
// guarded by revision compares: creates require CreateRevision == 0 (a duplicate is
// ErrAlreadyExists, and of concurrent creates of one name exactly one wins); updates
// compare the ModRevision read and retry a bounded number of times on conflict;
// referential rules (a binding's principal, role and project exist; a project or role
// is not deleted while bound) are enforced by comparing the referenced keys, or the
// whole referring prefix, against the revision of the read the decision was based on.
//
// Deleting a user or service account deletes its bindings in the same transaction (as
// etcd and Keystone do) and writes a principal watermark, so tokens it already holds
// stop working and a later identity of the same name does not inherit them.
//
// # Errors
//
// Errors wrap the sentinels of errors.go with messages naming the field or object.
// Any failure to reach ChainFire (after the client's own retries, within the call's
// context and Options.Timeout) wraps ErrUnavailable.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/proto/mvccpb"
)

// Key prefixes of the layout. Other parts of IAM (the policy stream) watch them.
const (
	Prefix                = "/iam/"
	PrefixUsers           = "/iam/users/"
	PrefixServiceAccounts = "/iam/serviceaccounts/"
	PrefixProjects        = "/iam/projects/"
	PrefixRoles           = "/iam/roles/"
	PrefixBindings        = "/iam/bindings/"
	PrefixWatermarks      = "/iam/watermarks/"
	PrefixLockout         = "/iam/lockout/"
	KeyBootstrap          = "/iam/meta/bootstrap"
)

// GlobalProject is the project segment of a global binding's key.
const GlobalProject = "-"

// BindingKey is the key of the binding (project, principal, role); project "" is global.
func BindingKey(project, principal, role string) string {
	if project == "" {
		project = GlobalProject
	}
	return PrefixBindings + project + "/" + principal + "/" + role
}

// PrincipalWatermarkKey is the key of principal's watermark.
func PrincipalWatermarkKey(principal string) string {
	return PrefixWatermarks + "principal/" + principal
}

func userKey(name string) string    { return PrefixUsers + name }
func saKey(name string) string      { return PrefixServiceAccounts + name }
func projectKey(name string) string { return PrefixProjects + name }
func roleKey(name string) string    { return PrefixRoles + name }

// principalKey is the key of the user or service account a valid principal names.
func principalKey(kind, name string) string {
	if kind == KindUser {
		return userKey(name)
	}
	return saKey(name)
}

// Options tune a Store. The zero value is usable.
type Options struct {
	// Hash are the argon2id parameters of new password hashes (zero: DefaultHashParams).
	Hash HashParams
	// Timeout bounds each Store call (on top of the caller's context); default 5 s.
	Timeout time.Duration
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
	// Logger receives operational messages; nil discards.
	Logger *slog.Logger
}

// maxCASAttempts bounds the read-modify-write retries of one call under contention.
const maxCASAttempts = 16

// Store is IAM's model over one ChainFire client. It holds no cached state, so any
// number of Stores (in one or many IAM replicas) may share a ChainFire; it is safe for
// concurrent use. The client is owned by the caller, who closes it after the Store's
// last use.
type Store struct {
	c         *chainfire.Client
	hash      HashParams
	timeout   time.Duration
	now       func() time.Time
	log       *slog.Logger
	dummyHash string // argon2id hash of a random password, for unknown users
}

// New returns a Store over c. It fails only on invalid options.
func New(c *chainfire.Client, opts Options) (*Store, error) {
	if c == nil {
		return nil, errors.New("store: nil chainfire client")
	}
	if opts.Hash == (HashParams{}) {
		opts.Hash = DefaultHashParams()
	}
	if err := opts.Hash.validate(); err != nil {
		return nil, err
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	secret, err := newClientSecret()
	if err != nil {
		return nil, err
	}
	dummy, err := HashPassword(opts.Hash, secret)
	if err != nil {
		return nil, err
	}
	return &Store{c: c, hash: opts.Hash, timeout: opts.Timeout, now: opts.Now, log: opts.Logger, dummyHash: dummy}, nil
}

// Client returns the ChainFire client the Store uses.
func (s *Store) Client() *chainfire.Client { return s.c }

// Now returns the Store's clock reading.
func (s *Store) Now() time.Time { return s.now() }

// bound applies Options.Timeout to ctx.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// unavailable wraps a ChainFire error.
func unavailable(what string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, err)
}

// contended is returned when a read-modify-write lost maxCASAttempts races in a row.
func contended(what string) error {
	return fmt.Errorf("%w: %s: too many concurrent changes, try again", ErrUnavailable, what)
}

// get reads one key; a missing key is (nil, nil).
func (s *Store) get(ctx context.Context, key string) (*mvccpb.KeyValue, error) {
	resp, err := s.c.Get(ctx, key)
	if err != nil {
		return nil, unavailable("read "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0], nil
}

// list reads every key under prefix and the revision of the read.
func (s *Store) list(ctx context.Context, prefix string) ([]*mvccpb.KeyValue, int64, error) {
	resp, err := s.c.Get(ctx, prefix, chainfire.WithPrefix())
	if err != nil {
		return nil, 0, unavailable("list "+prefix, err)
	}
	return resp.Kvs, resp.GetHeader().GetRevision(), nil
}

// commit runs a transaction and reports whether its conditions held.
func commit(what string, t *chainfire.Txn) (bool, error) {
	resp, err := t.Commit()
	if err != nil {
		return false, unavailable(what, err)
	}
	return resp.Succeeded, nil
}

// unchangedSince holds while no key under prefix was created or modified after rev.
func unchangedSince(prefix string, rev int64) chainfire.Cmp {
	return chainfire.Compare(chainfire.ModRevision(prefix).WithPrefix(), "<", rev+1)
}

// absent holds while key does not exist.
func absent(key string) chainfire.Cmp {
	return chainfire.Compare(chainfire.CreateRevision(key), "=", 0)
}

// unchanged holds while key is at modRev (0: still absent).
func unchanged(key string, modRev int64) chainfire.Cmp {
	return chainfire.Compare(chainfire.ModRevision(key), "=", modRev)
}

func marshal(m proto.Message) string {
	b, err := protojson.Marshal(m)
	if err != nil {
		panic(err) // only fails on invalid UTF-8 or messages we never build
	}
	return string(b)
}

func unmarshal(key string, data []byte, m proto.Message) error {
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(data, m); err != nil {
		return fmt.Errorf("store: corrupt value at %s: %w", key, err)
	}
	return nil
}

// record is the JSON envelope of users and service accounts: the public object plus
// its credential hash.
type record struct {
	User           json.RawMessage `json:"user,omitempty"`
	ServiceAccount json.RawMessage `json:"service_account,omitempty"`
	PasswordHash   string          `json:"password_hash,omitempty"`
	SecretHash     string          `json:"secret_hash,omitempty"`
}

func notFound(what, name string) error {
	return fmt.Errorf("%w: %s %q", ErrNotFound, what, name)
}

func alreadyExists(what, name string) error {
	return fmt.Errorf("%w: %s %q", ErrAlreadyExists, what, name)
}

// trimPrefixes returns key without prefix, split on "/".
func splitKey(key, prefix string) []string {
	return strings.Split(strings.TrimPrefix(key, prefix), "/")
}

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
