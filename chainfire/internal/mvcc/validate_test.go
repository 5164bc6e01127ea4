package mvcc

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
	pb "plasmacloud.dev/proto/etcdserverpb"
)

func TestValidateCommand(t *testing.T) {
	t.Parallel()
	big := bytes.Repeat([]byte("v"), 2000000)
	many := make([]*pb.RequestOp, 129)
	for i := range many {
		many[i] = opRange("k", "")
	}
	tests := []struct {
		name string
		cmd  *peerv1.Command
		err  error  // nil: valid
		msg  string // substring of the message
	}{
		{"nil", nil, ErrInvalid, "command is nil"},
		{"no op", &peerv1.Command{}, ErrInvalid, "no operation"},
		{"put ok", putCmd("k", "v"), nil, ""},
		{"put empty key", putCmd("", "v"), ErrInvalid, "put.key is empty"},
		{"put big key", putCmd(strings.Repeat("k", 40000), ""), ErrInvalid, "put.key is 40000 bytes, limit 32768"},
		{"put big value", putReq(&pb.PutRequest{Key: []byte("k"), Value: big}), ErrInvalid, "put.value is 2000000 bytes, limit 1572864"},
		{"put ignore_value with value", putReq(&pb.PutRequest{Key: []byte("k"), Value: []byte("v"), IgnoreValue: true}), ErrInvalid, "put.value must be empty"},
		{"put ignore_lease with lease", putReq(&pb.PutRequest{Key: []byte("k"), Lease: 1, IgnoreLease: true}), ErrInvalid, "put.lease must be 0"},
		{"delete ok", delCmd("a", "b", false), nil, ""},
		{"delete all", delCmd("a", "\x00", false), nil, ""},
		{"delete end == key", delCmd("a", "a", false), nil, ""},
		{"delete end before key", delCmd("b", "a", false), ErrInvalid, "delete_range.range_end \"a\" sorts before delete_range.key"},
		{"delete empty key", delCmd("", "a", false), ErrInvalid, "delete_range.key is empty"},
		{"compact 0", compactCmd(0), ErrInvalid, "compact.revision is 0"},
		{"grant ttl 0", grantCmd(1, 0), ErrInvalid, "lease_grant.TTL is 0"},
		{"grant id 0 ok", grantCmd(0, 5), nil, ""},
		{"member id 0", &peerv1.Command{Op: &peerv1.Command_MemberPut{MemberPut: &peerv1.MemberPut{}}}, ErrInvalid, "member_put.id is 0"},
		{"txn too many ops", txnCmd(&pb.TxnRequest{Success: many}), ErrInvalid, "txn has 129 ops, limit 128"},
		{"txn big value", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", ""), opPut("b", ""), opPut("c", ""),
			{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("d"), Value: big}}}}}),
			ErrInvalid, "txn.success[3].request_put.value is 2000000 bytes, limit 1572864"},
		{"txn compare empty key", txnCmd(&pb.TxnRequest{Compare: []*pb.Compare{{}}}), ErrInvalid, "txn.compare[0].key is empty"},
		{"txn nil op", txnCmd(&pb.TxnRequest{Failure: []*pb.RequestOp{{}}}), ErrInvalid, "txn.failure[0] has no request"},
		{"txn range bad sort", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), SortOrder: 9}}}}}),
			ErrInvalid, "txn.success[0].request_range.sort_order 9 is unknown"},
		{"txn nested budget", txnCmd(&pb.TxnRequest{Success: append([]*pb.RequestOp{opTxn(&pb.TxnRequest{Success: many[:2]})}, many[:127]...)}),
			ErrInvalid, "txn.success[0].request_txn has 2 ops, limit 0"},
		{"dup puts", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"), opPut("a", "2")}}), ErrDuplicateKey, "txn.success[1].request_put.key \"a\""},
		{"same key in then and else ok", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1")}, Failure: []*pb.RequestOp{opPut("a", "2")}}), nil, ""},
		{"put inside delete", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c"), opPut("b", "1")}}), ErrDuplicateKey, "request_put.key \"b\" is also written by txn.success[0].request_delete_range"},
		{"put inside delete-all", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("zz", "1"), opDel("a", "\x00")}}), ErrDuplicateKey, "zz"},
		{"put beside delete ok", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c"), opPut("c", "1")}}), nil, ""},
		{"overlapping deletes ok", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c"), opDel("b", "d")}}), nil, ""},
		{"nested dup with outer", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1"),
			opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("a", "2")}})}}), ErrDuplicateKey, "txn.success[1].request_txn.failure[0].request_put.key \"a\""},
		{"nested then/else same key ok", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1")}, Failure: []*pb.RequestOp{opPut("a", "2")}})}}), nil, ""},
		{"two nested txns same key", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("a", "1")}}),
			opTxn(&pb.TxnRequest{Failure: []*pb.RequestOp{opPut("a", "2")}})}}), ErrDuplicateKey, "\"a\""},
		{"nested put vs later nested delete", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("b", "1")}}),
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opDel("a", "c")}})}}), ErrDuplicateKey, "\"b\""},
		{"nested put vs else-delete of same txn ok", txnCmd(&pb.TxnRequest{Success: []*pb.RequestOp{
			opTxn(&pb.TxnRequest{Success: []*pb.RequestOp{opPut("b", "1")}, Failure: []*pb.RequestOp{opDel("a", "c")}})}}), nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateCommand(tt.cmd, DefaultLimits())
			if tt.err == nil {
				if err != nil {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("err %v, want %v", err, tt.err)
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("message %q does not contain %q", err, tt.msg)
			}
		})
	}
}

func TestValidateRange(t *testing.T) {
	t.Parallel()
	tests := []struct {
		req *pb.RangeRequest
		msg string
	}{
		{&pb.RangeRequest{Key: []byte("a")}, ""},
		{&pb.RangeRequest{Key: []byte("b"), RangeEnd: []byte("a")}, `range.range_end "a" sorts before range.key "b"`}, // etcd: empty range
		{&pb.RangeRequest{}, "range.key is empty"},
		{&pb.RangeRequest{Key: []byte("a"), RangeEnd: bytes.Repeat([]byte("z"), 40000)}, "range.range_end is 40000 bytes"},
		{&pb.RangeRequest{Key: []byte("a"), SortTarget: 7}, "range.sort_target 7 is unknown"},
	}
	for _, tt := range tests {
		err := ValidateRange(tt.req, DefaultLimits())
		if tt.msg == "" {
			if err != nil {
				t.Errorf("%v: %v", tt.req, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("%v: err %v, want %q", tt.req, err, tt.msg)
		}
	}
}
