package chainfire

import (
	"context"

	"connectrpc.com/connect"

	pb "plasmacloud.dev/proto/etcdserverpb"
)

// Put sets key to val (WithLease, WithPrevKV, WithIgnoreValue,
// WithIgnoreLease apply). It is a write: retried only when provably not
// applied.
func (c *Client) Put(ctx context.Context, key, val string, opts ...OpOption) (*pb.PutResponse, error) {
	req := newOp(opPut, key, val, opts).putRequest()
	var resp *pb.PutResponse
	err := c.do(ctx, write, "put", func(ctx context.Context, cn *conn) error {
		r, err := cn.kv.Put(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// Get reads key, or a range with WithPrefix / WithRange / WithFromKey
// (WithRev, WithLimit, WithKeysOnly, WithCountOnly, WithSerializable,
// WithSort apply). It is a read: retried on the next endpoint on any
// transient failure.
func (c *Client) Get(ctx context.Context, key string, opts ...OpOption) (*pb.RangeResponse, error) {
	req := newOp(opGet, key, "", opts).rangeRequest()
	var resp *pb.RangeResponse
	err := c.do(ctx, read, "range", func(ctx context.Context, cn *conn) error {
		r, err := cn.kv.Range(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// Delete removes key, or a range with WithPrefix / WithRange / WithFromKey
// (WithPrevKV applies). It is a write.
func (c *Client) Delete(ctx context.Context, key string, opts ...OpOption) (*pb.DeleteRangeResponse, error) {
	req := newOp(opDelete, key, "", opts).deleteRequest()
	var resp *pb.DeleteRangeResponse
	err := c.do(ctx, write, "delete", func(ctx context.Context, cn *conn) error {
		r, err := cn.kv.DeleteRange(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}

// Compact discards the key-value history before revision rev (WithPhysical
// applies). Watches and reads of older revisions fail afterwards. It is a
// write.
func (c *Client) Compact(ctx context.Context, rev int64, opts ...OpOption) (*pb.CompactionResponse, error) {
	o := newOp(opGet, "", "", opts)
	req := &pb.CompactionRequest{Revision: rev, Physical: o.physical}
	var resp *pb.CompactionResponse
	err := c.do(ctx, write, "compact", func(ctx context.Context, cn *conn) error {
		r, err := cn.kv.Compact(ctx, connect.NewRequest(req))
		if err != nil {
			return err
		}
		resp = r.Msg
		return nil
	})
	return resp, err
}
