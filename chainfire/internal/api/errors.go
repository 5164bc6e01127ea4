package api

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"plasmacloud.dev/chainfire/internal/mvcc"
	"plasmacloud.dev/chainfire/internal/node"
)

// toConnect maps an error from the node or the store to an RPC error, once, at the edge.
// Messages of errors etcd clients match on (compaction, future revision, missing lease, no
// leader) are etcd's own, so clientv3 recognises them.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	switch {
	case errors.Is(err, mvcc.ErrCompacted):
		return connect.NewError(connect.CodeOutOfRange, errors.New("etcdserver: mvcc: required revision has been compacted"))
	case errors.Is(err, mvcc.ErrFutureRev):
		return connect.NewError(connect.CodeOutOfRange, errors.New("etcdserver: mvcc: required revision is a future revision"))
	case errors.Is(err, mvcc.ErrLeaseNotFound):
		return connect.NewError(connect.CodeNotFound, mvcc.ErrLeaseNotFound)
	case errors.Is(err, mvcc.ErrLeaseExists):
		return connect.NewError(connect.CodeFailedPrecondition, mvcc.ErrLeaseExists)
	case errors.Is(err, mvcc.ErrInvalid), errors.Is(err, mvcc.ErrKeyNotFound), errors.Is(err, mvcc.ErrDuplicateKey):
		return connect.NewError(connect.CodeInvalidArgument, err)
	case errors.Is(err, node.ErrMemberNotFound):
		return connect.NewError(connect.CodeNotFound, err)
	case errors.Is(err, node.ErrMemberExists):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, node.ErrNotLeader):
		return connect.NewError(connect.CodeFailedPrecondition, err)
	case errors.Is(err, node.ErrNoLeader):
		return connect.NewError(connect.CodeUnavailable, fmt.Errorf("etcdserver: no leader (%v)", err))
	case errors.Is(err, node.ErrStopped):
		return connect.NewError(connect.CodeUnavailable, err)
	case errors.Is(err, node.ErrResultUnknown):
		return connect.NewError(connect.CodeUnknown, err)
	case errors.Is(err, context.DeadlineExceeded):
		return connect.NewError(connect.CodeDeadlineExceeded, err)
	case errors.Is(err, context.Canceled):
		return connect.NewError(connect.CodeCanceled, err)
	}
	return connect.NewError(connect.CodeInternal, err)
}

func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}
