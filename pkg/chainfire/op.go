package chainfire

import (
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// opType is the kind of an [Op].
type opType int

const (
	opGet opType = iota + 1
	opPut
	opDelete
	opTxn
)

// Op is one key-value operation: a get, put, delete or nested txn, used in
// [Txn] branches. Build it with [OpGet], [OpPut], [OpDelete] or [OpTxn].
// An Op is an immutable value once built.
type Op struct {
	t   opType
	key []byte
	end []byte
	val []byte

	// range
	rev          int64
	limit        int64
	serializable bool
	keysOnly     bool
	countOnly    bool
	sortOrder    pb.RangeRequest_SortOrder
	sortTarget   pb.RangeRequest_SortTarget

	// put / delete / range
	prevKV      bool
	lease       int64
	ignoreValue bool
	ignoreLease bool

	// range shape, resolved into end by applyOpts
	prefix  bool
	fromKey bool

	// compact
	physical bool

	// watch
	progressNotify bool
	createdNotify  bool
	filterPut      bool
	filterDelete   bool

	// txn
	cmps    []Cmp
	thenOps []Op
	elseOps []Op
}

// OpOption modifies an operation. Options that do not apply to an
// operation are ignored (WithLease on a get, WithLimit on a watch).
type OpOption func(*Op)

// WithPrefix makes the operation cover every key starting with key. An
// empty key with WithPrefix covers all keys.
func WithPrefix() OpOption { return func(o *Op) { o.prefix = true } }

// WithRange makes the operation cover [key, end). end "\x00" means "every
// key from key on".
func WithRange(end string) OpOption { return func(o *Op) { o.end = []byte(end) } }

// WithFromKey makes the operation cover every key >= key.
func WithFromKey() OpOption { return func(o *Op) { o.fromKey = true } }

// WithRev reads at revision rev (get) or starts a watch at rev, delivering
// every event with revision >= rev. 0 means "latest" / "from now".
func WithRev(rev int64) OpOption { return func(o *Op) { o.rev = rev } }

// WithLimit caps the number of keys a get returns (0 = no limit).
func WithLimit(n int64) OpOption { return func(o *Op) { o.limit = n } }

// WithKeysOnly makes a get return keys without values.
func WithKeysOnly() OpOption { return func(o *Op) { o.keysOnly = true } }

// WithCountOnly makes a get return only the count of keys.
func WithCountOnly() OpOption { return func(o *Op) { o.countOnly = true } }

// WithSerializable makes a get serializable: served from the local member's
// state, without a round through the leader. Faster, possibly stale.
func WithSerializable() OpOption { return func(o *Op) { o.serializable = true } }

// WithSort orders a get's results.
func WithSort(target pb.RangeRequest_SortTarget, order pb.RangeRequest_SortOrder) OpOption {
	return func(o *Op) { o.sortTarget, o.sortOrder = target, order }
}

// WithPrevKV makes a put or delete return the previous key-values, and a
// watch deliver the previous key-value with each event.
func WithPrevKV() OpOption { return func(o *Op) { o.prevKV = true } }

// WithLease attaches a put's key to lease id.
func WithLease(id int64) OpOption { return func(o *Op) { o.lease = id } }

// WithIgnoreValue makes a put keep the key's current value (updating only
// its lease).
func WithIgnoreValue() OpOption { return func(o *Op) { o.ignoreValue = true } }

// WithIgnoreLease makes a put keep the key's current lease.
func WithIgnoreLease() OpOption { return func(o *Op) { o.ignoreLease = true } }

// WithPhysical makes Compact wait until the compaction is physically
// applied to the storage.
func WithPhysical() OpOption { return func(o *Op) { o.physical = true } }

// WithProgressNotify asks the server to send a watch periodic progress
// notifications (responses without events) while nothing happens.
func WithProgressNotify() OpOption { return func(o *Op) { o.progressNotify = true } }

// WithCreatedNotify makes a watch deliver one response with Created set as
// soon as the server has first created it (not again after reconnects): the
// watch is in place and will see every later write.
func WithCreatedNotify() OpOption { return func(o *Op) { o.createdNotify = true } }

// WithFilterPut makes a watch skip put events.
func WithFilterPut() OpOption { return func(o *Op) { o.filterPut = true } }

// WithFilterDelete makes a watch skip delete events.
func WithFilterDelete() OpOption { return func(o *Op) { o.filterDelete = true } }

// OpGet returns a get (range) operation.
func OpGet(key string, opts ...OpOption) Op { return newOp(opGet, key, "", opts) }

// OpPut returns a put operation.
func OpPut(key, val string, opts ...OpOption) Op { return newOp(opPut, key, val, opts) }

// OpDelete returns a delete (delete range) operation.
func OpDelete(key string, opts ...OpOption) Op { return newOp(opDelete, key, "", opts) }

// OpTxn returns a nested transaction operation.
func OpTxn(cmps []Cmp, thenOps, elseOps []Op) Op {
	return Op{t: opTxn, cmps: cmps, thenOps: thenOps, elseOps: elseOps}
}

// IsGet reports whether the operation is a get.
func (o Op) IsGet() bool { return o.t == opGet }

// Key returns the operation's key.
func (o Op) Key() string { return string(o.key) }

// RangeEnd returns the end of the operation's key range ("" for one key).
func (o Op) RangeEnd() string { return string(o.end) }

func newOp(t opType, key, val string, opts []OpOption) Op {
	o := Op{t: t, key: []byte(key)}
	if t == opPut {
		o.val = []byte(val)
	}
	for _, opt := range opts {
		opt(&o)
	}
	o.resolveRange()
	return o
}

// resolveRange turns WithPrefix / WithFromKey into a range end the way etcd
// does: an empty key becomes "\x00" (the smallest key).
func (o *Op) resolveRange() {
	switch {
	case o.prefix:
		if len(o.key) == 0 {
			o.key, o.end = []byte{0}, []byte{0}
			return
		}
		o.end = PrefixEnd(o.key)
	case o.fromKey:
		if len(o.key) == 0 {
			o.key = []byte{0}
		}
		o.end = []byte{0}
	}
}

// PrefixEnd returns the range end that covers every key with the given
// prefix: the prefix with its last byte below 0xff incremented and what
// follows dropped. A prefix of only 0xff bytes (or empty) yields "\x00",
// meaning "to the end of the key space".
func PrefixEnd(prefix []byte) []byte {
	end := make([]byte, len(prefix))
	copy(end, prefix)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return []byte{0}
}

// isReadOnly reports whether the operation (recursively, for a txn) only
// reads.
func (o Op) isReadOnly() bool {
	switch o.t {
	case opGet:
		return true
	case opTxn:
		return opsReadOnly(o.thenOps) && opsReadOnly(o.elseOps)
	}
	return false
}

func opsReadOnly(ops []Op) bool {
	for _, op := range ops {
		if !op.isReadOnly() {
			return false
		}
	}
	return true
}

func (o Op) rangeRequest() *pb.RangeRequest {
	return &pb.RangeRequest{
		Key:          o.key,
		RangeEnd:     o.end,
		Limit:        o.limit,
		Revision:     o.rev,
		SortOrder:    o.sortOrder,
		SortTarget:   o.sortTarget,
		Serializable: o.serializable,
		KeysOnly:     o.keysOnly,
		CountOnly:    o.countOnly,
	}
}

func (o Op) putRequest() *pb.PutRequest {
	return &pb.PutRequest{
		Key:         o.key,
		Value:       o.val,
		Lease:       o.lease,
		PrevKv:      o.prevKV,
		IgnoreValue: o.ignoreValue,
		IgnoreLease: o.ignoreLease,
	}
}

func (o Op) deleteRequest() *pb.DeleteRangeRequest {
	return &pb.DeleteRangeRequest{Key: o.key, RangeEnd: o.end, PrevKv: o.prevKV}
}

func (o Op) watchCreateRequest(startRev int64) *pb.WatchCreateRequest {
	r := &pb.WatchCreateRequest{
		Key:            o.key,
		RangeEnd:       o.end,
		StartRevision:  startRev,
		ProgressNotify: o.progressNotify,
		PrevKv:         o.prevKV,
	}
	if o.filterPut {
		r.Filters = append(r.Filters, pb.WatchCreateRequest_NOPUT)
	}
	if o.filterDelete {
		r.Filters = append(r.Filters, pb.WatchCreateRequest_NODELETE)
	}
	return r
}

// requestOp converts the operation for a TxnRequest.
func (o Op) requestOp() (*pb.RequestOp, error) {
	switch o.t {
	case opGet:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestRange{RequestRange: o.rangeRequest()}}, nil
	case opPut:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: o.putRequest()}}, nil
	case opDelete:
		return &pb.RequestOp{Request: &pb.RequestOp_RequestDeleteRange{RequestDeleteRange: o.deleteRequest()}}, nil
	case opTxn:
		t, err := txnRequest(o.cmps, o.thenOps, o.elseOps)
		if err != nil {
			return nil, err
		}
		return &pb.RequestOp{Request: &pb.RequestOp_RequestTxn{RequestTxn: t}}, nil
	}
	return nil, ErrInvalidTxn
}
