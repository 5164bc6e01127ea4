package mvcc

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"

	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

// Limits bounds what one command may carry. A zero field means "no limit"; Apply checks
// only the structural rules (never limits), so members configured with different limits
// still apply the same log identically.
type Limits struct {
	MaxKeyBytes   int // longest key or range_end
	MaxValueBytes int // longest value
	MaxTxnOps     int // most compares, success ops or failure ops in one txn (etcd's rule)
}

// MaxLeaseTTL is etcd's upper bound on a lease TTL, in seconds.
const MaxLeaseTTL = 9_000_000_000

// DefaultLimits returns etcd's limits: 32 KiB keys, 1.5 MiB values (etcd's request size
// limit), 128 ops per txn.
func DefaultLimits() Limits {
	return Limits{MaxKeyBytes: 32 << 10, MaxValueBytes: 3 << 19, MaxTxnOps: 128}
}

// ValidateCommand checks a command before it is proposed; it needs no state. Every error
// wraps ErrInvalid or ErrDuplicateKey and names the offending field, e.g.
// "invalid request: txn.success[3].request_put.value is 2000000 bytes, limit 1572864".
//
// Rules: a command has exactly one op; keys are non-empty and within MaxKeyBytes, values
// within MaxValueBytes; a delete's non-empty range_end other than "\x00" must not sort
// before its key (etcd would silently delete nothing); ignore_value/ignore_lease exclude a
// value/lease; a txn has at most MaxTxnOps compares, success ops and failure ops (nested
// txns get what is left, as in etcd) and never writes the same key twice on one path
// (puts vs puts and puts vs delete ranges, like etcd's checkIntervals, also across
// nested txns; then/else branches of one txn exclude each other); lease grant TTL in
// (0, MaxLeaseTTL]; compact revision > 0; member ids non-zero. A lease grant with ID 0 is
// accepted here (the caller assigns the ID before proposing); Apply rejects it.
// Range ops (in txns) follow ValidateRange.
func ValidateCommand(cmd *peerv1.Command, l Limits) error {
	return validateCommand(cmd, l)
}

// ValidateRange checks a RangeRequest: non-empty key, key and range_end within
// MaxKeyBytes, known sort order and target, and a non-empty range_end other than "\x00"
// that does not sort before key. etcd answers such a range with nothing; ChainFire calls it
// what it almost always is, a client bug, and names it.
func ValidateRange(req *pb.RangeRequest, l Limits) error {
	if req == nil {
		return fmt.Errorf("%w: range request is nil", ErrInvalid)
	}
	return validateRange("range", req, l)
}

func validateCommand(cmd *peerv1.Command, l Limits) error {
	if cmd == nil {
		return fmt.Errorf("%w: command is nil", ErrInvalid)
	}
	switch op := cmd.Op.(type) {
	case *peerv1.Command_Put:
		if op.Put == nil {
			return fmt.Errorf("%w: put is nil", ErrInvalid)
		}
		return validatePut("put", op.Put, l)
	case *peerv1.Command_DeleteRange:
		if op.DeleteRange == nil {
			return fmt.Errorf("%w: delete_range is nil", ErrInvalid)
		}
		return validateDelete("delete_range", op.DeleteRange, l)
	case *peerv1.Command_Txn:
		if op.Txn == nil {
			return fmt.Errorf("%w: txn is nil", ErrInvalid)
		}
		return validateTxnTop("txn", op.Txn, l)
	case *peerv1.Command_Compact:
		if op.Compact == nil {
			return fmt.Errorf("%w: compact is nil", ErrInvalid)
		}
		if op.Compact.Revision <= 0 {
			return fmt.Errorf("%w: compact.revision is %d, must be > 0", ErrInvalid, op.Compact.Revision)
		}
	case *peerv1.Command_LeaseGrant:
		if op.LeaseGrant == nil {
			return fmt.Errorf("%w: lease_grant is nil", ErrInvalid)
		}
		if ttl := op.LeaseGrant.TTL; ttl <= 0 || ttl > MaxLeaseTTL {
			return fmt.Errorf("%w: lease_grant.TTL is %d, must be in [1, %d]", ErrInvalid, ttl, int64(MaxLeaseTTL))
		}
	case *peerv1.Command_LeaseRevoke:
		if op.LeaseRevoke == nil {
			return fmt.Errorf("%w: lease_revoke is nil", ErrInvalid)
		}
	case *peerv1.Command_MemberPut:
		if op.MemberPut == nil {
			return fmt.Errorf("%w: member_put is nil", ErrInvalid)
		}
		if op.MemberPut.Id == 0 {
			return fmt.Errorf("%w: member_put.id is 0", ErrInvalid)
		}
	case *peerv1.Command_MemberDelete:
		if op.MemberDelete == nil {
			return fmt.Errorf("%w: member_delete is nil", ErrInvalid)
		}
		if op.MemberDelete.Id == 0 {
			return fmt.Errorf("%w: member_delete.id is 0", ErrInvalid)
		}
	default:
		return fmt.Errorf("%w: command has no operation", ErrInvalid)
	}
	return nil
}

func validateKey(path string, key []byte, l Limits) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: %s.key is empty", ErrInvalid, path)
	}
	if l.MaxKeyBytes > 0 && len(key) > l.MaxKeyBytes {
		return fmt.Errorf("%w: %s.key is %d bytes, limit %d", ErrInvalid, path, len(key), l.MaxKeyBytes)
	}
	return nil
}

func validateRangeEnd(path string, end []byte, l Limits) error {
	if l.MaxKeyBytes > 0 && len(end) > l.MaxKeyBytes {
		return fmt.Errorf("%w: %s.range_end is %d bytes, limit %d", ErrInvalid, path, len(end), l.MaxKeyBytes)
	}
	return nil
}

func validatePut(path string, p *pb.PutRequest, l Limits) error {
	if err := validateKey(path, p.Key, l); err != nil {
		return err
	}
	if l.MaxValueBytes > 0 && len(p.Value) > l.MaxValueBytes {
		return fmt.Errorf("%w: %s.value is %d bytes, limit %d", ErrInvalid, path, len(p.Value), l.MaxValueBytes)
	}
	if p.IgnoreValue && len(p.Value) != 0 {
		return fmt.Errorf("%w: %s.value must be empty when ignore_value is set", ErrInvalid, path)
	}
	if p.IgnoreLease && p.Lease != 0 {
		return fmt.Errorf("%w: %s.lease must be 0 when ignore_lease is set", ErrInvalid, path)
	}
	return nil
}

func isAllKeysEnd(end []byte) bool { return len(end) == 1 && end[0] == 0 }

func validateDelete(path string, d *pb.DeleteRangeRequest, l Limits) error {
	if err := validateKey(path, d.Key, l); err != nil {
		return err
	}
	if err := validateRangeEnd(path, d.RangeEnd, l); err != nil {
		return err
	}
	if len(d.RangeEnd) != 0 && !isAllKeysEnd(d.RangeEnd) && bytes.Compare(d.RangeEnd, d.Key) < 0 {
		return fmt.Errorf("%w: %s.range_end %q sorts before %s.key %q", ErrInvalid, path, d.RangeEnd, path, d.Key)
	}
	return nil
}

func validateRange(path string, r *pb.RangeRequest, l Limits) error {
	if err := validateKey(path, r.Key, l); err != nil {
		return err
	}
	if err := validateRangeEnd(path, r.RangeEnd, l); err != nil {
		return err
	}
	if len(r.RangeEnd) != 0 && !isAllKeysEnd(r.RangeEnd) && bytes.Compare(r.RangeEnd, r.Key) < 0 {
		return fmt.Errorf("%w: %s.range_end %q sorts before %s.key %q", ErrInvalid, path, r.RangeEnd, path, r.Key)
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(r.SortOrder)]; !ok {
		return fmt.Errorf("%w: %s.sort_order %d is unknown", ErrInvalid, path, r.SortOrder)
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(r.SortTarget)]; !ok {
		return fmt.Errorf("%w: %s.sort_target %d is unknown", ErrInvalid, path, r.SortTarget)
	}
	return nil
}

func validateCompare(path string, c *pb.Compare, l Limits) error {
	if c == nil {
		return fmt.Errorf("%w: %s is nil", ErrInvalid, path)
	}
	if err := validateKey(path, c.Key, l); err != nil {
		return err
	}
	if err := validateRangeEnd(path, c.RangeEnd, l); err != nil {
		return err
	}
	if _, ok := pb.Compare_CompareTarget_name[int32(c.Target)]; !ok {
		return fmt.Errorf("%w: %s.target %d is unknown", ErrInvalid, path, c.Target)
	}
	if _, ok := pb.Compare_CompareResult_name[int32(c.Result)]; !ok {
		return fmt.Errorf("%w: %s.result %d is unknown", ErrInvalid, path, c.Result)
	}
	return nil
}

// validateTxnTop validates a top-level txn: fields, then duplicate writes of the success
// and failure branches separately (they exclude each other). The first pass builds no
// field paths (no allocations); only a failing txn is checked again to name the field.
func validateTxnTop(path string, t *pb.TxnRequest, l Limits) error {
	if err := validateTxnTree(path, t, l, false); err != nil {
		if verr := validateTxnTree(path, t, l, true); verr != nil {
			return verr
		}
		return err
	}
	return nil
}

func validateTxnTree(path string, t *pb.TxnRequest, l Limits, verbose bool) error {
	if err := validateTxn(path, t, l.MaxTxnOps, l, verbose); err != nil {
		return err
	}
	if err := checkDuplicates(join(verbose, path, ".success"), t.Success, verbose); err != nil {
		return err
	}
	return checkDuplicates(join(verbose, path, ".failure"), t.Failure, verbose)
}

// join and elem build field paths only in verbose mode.
func join(verbose bool, path, field string) string {
	if !verbose {
		return ""
	}
	return path + field
}

func elem(verbose bool, path, field string, i int) string {
	if !verbose {
		return ""
	}
	return path + field + "[" + strconv.Itoa(i) + "]"
}

// validateTxn checks one txn level with etcd's op budget: a txn may have at most budget
// compares, success ops and failure ops; nested txns get budget minus the largest of those.
func validateTxn(path string, t *pb.TxnRequest, budget int, l Limits, verbose bool) error {
	opc := max(len(t.Compare), len(t.Success), len(t.Failure))
	if l.MaxTxnOps > 0 && opc > budget {
		return fmt.Errorf("%w: %s has %d ops, limit %d", ErrInvalid, path, opc, budget)
	}
	for i, c := range t.Compare {
		if err := validateCompare(elem(verbose, path, ".compare", i), c, l); err != nil {
			return err
		}
	}
	for i, op := range t.Success {
		if err := validateOp(elem(verbose, path, ".success", i), op, budget-opc, l, verbose); err != nil {
			return err
		}
	}
	for i, op := range t.Failure {
		if err := validateOp(elem(verbose, path, ".failure", i), op, budget-opc, l, verbose); err != nil {
			return err
		}
	}
	return nil
}

func validateOp(path string, op *pb.RequestOp, budget int, l Limits, verbose bool) error {
	if op == nil {
		return fmt.Errorf("%w: %s is nil", ErrInvalid, path)
	}
	switch r := op.Request.(type) {
	case *pb.RequestOp_RequestRange:
		if r.RequestRange == nil {
			return fmt.Errorf("%w: %s.request_range is nil", ErrInvalid, path)
		}
		return validateRange(join(verbose, path, ".request_range"), r.RequestRange, l)
	case *pb.RequestOp_RequestPut:
		if r.RequestPut == nil {
			return fmt.Errorf("%w: %s.request_put is nil", ErrInvalid, path)
		}
		return validatePut(join(verbose, path, ".request_put"), r.RequestPut, l)
	case *pb.RequestOp_RequestDeleteRange:
		if r.RequestDeleteRange == nil {
			return fmt.Errorf("%w: %s.request_delete_range is nil", ErrInvalid, path)
		}
		return validateDelete(join(verbose, path, ".request_delete_range"), r.RequestDeleteRange, l)
	case *pb.RequestOp_RequestTxn:
		if r.RequestTxn == nil {
			return fmt.Errorf("%w: %s.request_txn is nil", ErrInvalid, path)
		}
		return validateTxn(join(verbose, path, ".request_txn"), r.RequestTxn, budget, l, verbose)
	default:
		return fmt.Errorf("%w: %s has no request", ErrInvalid, path)
	}
}

// txnWrite is one put or delete range somewhere in a txn tree, with the branch trail
// leading to it: one element per enclosing nested txn, (op index << 1 | 1 for failure).
type txnWrite struct {
	key, end []byte // end nil for puts; for deletes as in the request
	put      bool
	trail    []uint32
	path     string
}

// exclusive reports whether a and b can never both execute: their trails diverge at the
// same nested txn, one in its success and the other in its failure branch.
func exclusive(a, b *txnWrite) bool {
	n := min(len(a.trail), len(b.trail))
	for i := 0; i < n; i++ {
		if a.trail[i] != b.trail[i] {
			return a.trail[i]>>1 == b.trail[i]>>1
		}
	}
	return false
}

func collectWrites(path string, ops []*pb.RequestOp, trail []uint32, out []txnWrite, verbose bool) []txnWrite {
	for i, op := range ops {
		p := elem(verbose, path, "", i)
		switch r := op.GetRequest().(type) {
		case *pb.RequestOp_RequestPut:
			out = append(out, txnWrite{key: r.RequestPut.GetKey(), put: true, trail: trail, path: join(verbose, p, ".request_put")})
		case *pb.RequestOp_RequestDeleteRange:
			d := r.RequestDeleteRange
			out = append(out, txnWrite{key: d.GetKey(), end: d.GetRangeEnd(), trail: trail, path: join(verbose, p, ".request_delete_range")})
		case *pb.RequestOp_RequestTxn:
			t := r.RequestTxn
			if t == nil {
				continue
			}
			base := join(verbose, p, ".request_txn")
			st := append(append([]uint32(nil), trail...), uint32(i)<<1)
			out = collectWrites(join(verbose, base, ".success"), t.Success, st, out, verbose)
			ft := append(append([]uint32(nil), trail...), uint32(i)<<1|1)
			out = collectWrites(join(verbose, base, ".failure"), t.Failure, ft, out, verbose)
		}
	}
	return out
}

// simpleWrites reports whether ops are flat puts (no deletes, no nested txns), the
// common case that needs no interval logic.
func simpleWrites(ops []*pb.RequestOp) bool {
	for _, op := range ops {
		switch op.GetRequest().(type) {
		case *pb.RequestOp_RequestDeleteRange, *pb.RequestOp_RequestTxn:
			return false
		}
	}
	return true
}

// checkDuplicates rejects a branch that writes a key twice on one execution path: two puts
// of one key, or a put inside a delete range. Delete ranges may overlap each other.
func checkDuplicates(path string, ops []*pb.RequestOp, verbose bool) error {
	if len(ops) < 2 && simpleWrites(ops) {
		return nil
	}
	if simpleWrites(ops) && len(ops) <= 16 {
		for i, a := range ops {
			pa := a.GetRequestPut()
			if pa == nil {
				continue
			}
			for j := 0; j < i; j++ {
				if pj := ops[j].GetRequestPut(); pj != nil && bytes.Equal(pj.Key, pa.Key) {
					return fmt.Errorf("%w: %s[%d].request_put.key %q is also written by %s[%d].request_put",
						ErrDuplicateKey, path, i, pa.Key, path, j)
				}
			}
		}
		return nil
	}
	writes := collectWrites(path, ops, nil, nil, verbose)
	var puts, dels []*txnWrite
	for i := range writes {
		if writes[i].put {
			puts = append(puts, &writes[i])
		} else {
			dels = append(dels, &writes[i])
		}
	}
	sort.SliceStable(puts, func(i, j int) bool { return bytes.Compare(puts[i].key, puts[j].key) < 0 })
	dup := func(a, b *txnWrite) error {
		return fmt.Errorf("%w: %s.key %q is also written by %s", ErrDuplicateKey, a.path, a.key, b.path)
	}
	for i := 0; i < len(puts); i++ {
		for j := i + 1; j < len(puts) && bytes.Equal(puts[i].key, puts[j].key); j++ {
			if !exclusive(puts[i], puts[j]) {
				return dup(puts[j], puts[i])
			}
		}
	}
	for _, d := range dels {
		lo := sort.Search(len(puts), func(i int) bool { return bytes.Compare(puts[i].key, d.key) >= 0 })
		for j := lo; j < len(puts) && inRange(puts[j].key, d.key, d.end); j++ {
			if !exclusive(puts[j], d) {
				return dup(puts[j], d)
			}
		}
	}
	return nil
}
