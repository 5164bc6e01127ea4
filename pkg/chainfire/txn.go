package chainfire

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

// Cmp is one condition of a transaction: a target of a key (its value,
// version, create or mod revision, or lease) compared with a constant.
// Build it with Compare(Value("k"), "=", "v") and friends. A Cmp is an
// immutable value.
type Cmp struct {
	target pb.Compare_CompareTarget
	key    []byte
	end    []byte
	result pb.Compare_CompareResult
	value  any // []byte for Value, int64 otherwise
	err    error
}

// Value selects a key's value for comparison with a string.
func Value(key string) Cmp { return Cmp{target: pb.Compare_VALUE, key: []byte(key)} }

// Version selects a key's version (number of puts since creation; 0 =
// absent) for comparison with an integer.
func Version(key string) Cmp { return Cmp{target: pb.Compare_VERSION, key: []byte(key)} }

// CreateRevision selects the revision a key was created at (0 = absent)
// for comparison with an integer.
func CreateRevision(key string) Cmp { return Cmp{target: pb.Compare_CREATE, key: []byte(key)} }

// ModRevision selects the revision a key was last modified at (0 = absent)
// for comparison with an integer.
func ModRevision(key string) Cmp { return Cmp{target: pb.Compare_MOD, key: []byte(key)} }

// LeaseValue selects the lease a key is attached to (0 = none) for
// comparison with an integer lease ID.
func LeaseValue(key string) Cmp { return Cmp{target: pb.Compare_LEASE, key: []byte(key)} }

// WithRange makes the comparison hold for every key in [key, end).
func (c Cmp) WithRange(end string) Cmp {
	c.end = []byte(end)
	return c
}

// WithPrefix makes the comparison hold for every key with the Cmp's key as
// prefix.
func (c Cmp) WithPrefix() Cmp {
	c.end = PrefixEnd(c.key)
	return c
}

// Compare completes a comparison: result is one of "=", "!=", "<", ">";
// v is a string (or []byte) for Value and an integer otherwise. A wrong
// operator or value type makes the Txn's Commit fail with [ErrInvalidTxn].
func Compare(cmp Cmp, result string, v any) Cmp {
	switch result {
	case "=", "==":
		cmp.result = pb.Compare_EQUAL
	case "!=":
		cmp.result = pb.Compare_NOT_EQUAL
	case "<":
		cmp.result = pb.Compare_LESS
	case ">":
		cmp.result = pb.Compare_GREATER
	default:
		cmp.err = fmt.Errorf("%w: unknown compare operator %q", ErrInvalidTxn, result)
		return cmp
	}
	if cmp.target == pb.Compare_VALUE {
		switch x := v.(type) {
		case string:
			cmp.value = []byte(x)
		case []byte:
			cmp.value = x
		default:
			cmp.err = fmt.Errorf("%w: value compare of %q needs a string, got %T", ErrInvalidTxn, cmp.key, v)
		}
		return cmp
	}
	switch x := v.(type) {
	case int64:
		cmp.value = x
	case int:
		cmp.value = int64(x)
	case int32:
		cmp.value = int64(x)
	case uint64:
		cmp.value = int64(x)
	default:
		cmp.err = fmt.Errorf("%w: %v compare of %q needs an integer, got %T", ErrInvalidTxn, cmp.target, cmp.key, v)
	}
	return cmp
}

func (c Cmp) proto() (*pb.Compare, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.value == nil {
		return nil, fmt.Errorf("%w: compare of %q has no operator and value (use Compare)", ErrInvalidTxn, c.key)
	}
	p := &pb.Compare{Result: c.result, Target: c.target, Key: c.key, RangeEnd: c.end}
	switch c.target {
	case pb.Compare_VALUE:
		p.TargetUnion = &pb.Compare_Value{Value: c.value.([]byte)}
	case pb.Compare_VERSION:
		p.TargetUnion = &pb.Compare_Version{Version: c.value.(int64)}
	case pb.Compare_CREATE:
		p.TargetUnion = &pb.Compare_CreateRevision{CreateRevision: c.value.(int64)}
	case pb.Compare_MOD:
		p.TargetUnion = &pb.Compare_ModRevision{ModRevision: c.value.(int64)}
	case pb.Compare_LEASE:
		p.TargetUnion = &pb.Compare_Lease{Lease: c.value.(int64)}
	}
	return p, nil
}

// Txn is a transaction being built: If(conditions).Then(ops).Else(ops),
// then Commit. If, Then and Else may each be called once, in that order.
// A Txn is not safe for concurrent use and is meant to be built and
// committed by one goroutine.
type Txn struct {
	c       *Client
	ctx     context.Context
	cmps    []Cmp
	thenOps []Op
	elseOps []Op
	stage   int // 0 new, 1 after If, 2 after Then, 3 after Else
	err     error
}

// Txn starts a transaction that Commit runs with ctx.
func (c *Client) Txn(ctx context.Context) *Txn { return &Txn{c: c, ctx: ctx} }

// If adds the conditions; all must hold for Then to run.
func (t *Txn) If(cmps ...Cmp) *Txn {
	return t.step(1, "If", func() { t.cmps = append(t.cmps, cmps...) })
}

// Then sets the operations run when every condition holds.
func (t *Txn) Then(ops ...Op) *Txn {
	return t.step(2, "Then", func() { t.thenOps = append(t.thenOps, ops...) })
}

// Else sets the operations run when a condition fails.
func (t *Txn) Else(ops ...Op) *Txn {
	return t.step(3, "Else", func() { t.elseOps = append(t.elseOps, ops...) })
}

func (t *Txn) step(stage int, name string, f func()) *Txn {
	if t.stage >= stage && t.err == nil {
		t.err = fmt.Errorf("%w: %s called after %s", ErrInvalidTxn, name, [...]string{"", "If", "Then", "Else"}[t.stage])
	}
	t.stage = stage
	f()
	return t
}

// Commit runs the transaction. A transaction whose branches only read is
// retried like a read; any other like a write (see the package
// documentation). Succeeded in the response says which branch ran.
func (t *Txn) Commit() (*pb.TxnResponse, error) {
	if t.err != nil {
		return nil, t.err
	}
	req, err := txnRequest(t.cmps, t.thenOps, t.elseOps)
	if err != nil {
		return nil, err
	}
	k := write
	if opsReadOnly(t.thenOps) && opsReadOnly(t.elseOps) {
		k = read
	}
	var resp *pb.TxnResponse
	err = t.c.do(t.ctx, k, "txn", func(ctx context.Context, cn *conn) error {
		r, err := cn.kv.Txn(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

func txnRequest(cmps []Cmp, thenOps, elseOps []Op) (*pb.TxnRequest, error) {
	req := &pb.TxnRequest{}
	var errs []error
	for _, c := range cmps {
		p, err := c.proto()
		errs = append(errs, err)
		req.Compare = append(req.Compare, p)
	}
	for _, o := range thenOps {
		p, err := o.requestOp()
		errs = append(errs, err)
		req.Success = append(req.Success, p)
	}
	for _, o := range elseOps {
		p, err := o.requestOp()
		errs = append(errs, err)
		req.Failure = append(req.Failure, p)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return req, nil
}
