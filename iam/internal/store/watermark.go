package store

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"plasmacloud.dev/pkg/chainfire"
	iamv1 "plasmacloud.dev/proto/iam/v1"
)

// ceilSecond rounds t up to a whole second (tokens' iat has second granularity, so a
// watermark W revokes every token with iat < W: everything issued up to now).
func ceilSecond(t time.Time) time.Time {
	w := t.Truncate(time.Second)
	if w.Before(t) {
		w = w.Add(time.Second)
	}
	return w
}

// watermarkOps returns the compare and operations that raise principal's watermark to
// now rounded up to the second, for inclusion in the transaction that disables or
// deletes the principal. A newer existing watermark is kept (the newest wins anyway).
func (s *Store) watermarkOps(ctx context.Context, principal string) ([]chainfire.Cmp, []chainfire.Op, error) {
	key := PrincipalWatermarkKey(principal)
	kv, err := s.get(ctx, key)
	if err != nil {
		return nil, nil, err
	}
	w := ceilSecond(s.now())
	var rev int64
	if kv != nil {
		rev = kv.ModRevision
		var old iamv1.Watermark
		if unmarshal(key, kv.Value, &old) == nil && !old.GetNotBefore().AsTime().Before(w) {
			return []chainfire.Cmp{unchanged(key, rev)}, nil, nil
		}
	}
	wm := &iamv1.Watermark{Scope: iamv1.WatermarkScope_WATERMARK_SCOPE_PRINCIPAL, Name: principal, NotBefore: timestamppb.New(w)}
	return []chainfire.Cmp{unchanged(key, rev)}, []chainfire.Op{chainfire.OpPut(key, marshal(wm))}, nil
}
