// Package chainfiresource adapts a ChainFire client (*chainfire.Client) to
// the [resilience.Lister] and [resilience.Watcher] interfaces, so that a
// [resilience.Informer] can run on ChainFire alone, without WatchBus:
//
//	c, _ := chainfire.New(chainfire.Config{Endpoints: eps})
//	inf, _ := resilience.NewInformer(resilience.InformerConfig[*mvccpb.KeyValue]{
//		Lister:  chainfiresource.Lister{Client: c},
//		Watcher: chainfiresource.Watcher{Client: c},
//		Prefix:  []byte("/vms/"),
//	})
//
// It lives apart from package resilience because package chainfire itself
// imports resilience. Every ChainFire watch is one HTTP/2 stream to a
// ChainFire member: fine for a few watches per process, which is what
// WatchBus exists to spare ChainFire at scale.
package chainfiresource

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/proto/mvccpb"
)

// DefaultPageSize is the number of keys one range read of [Lister] returns
// when PageSize is zero.
const DefaultPageSize = 1000

// maxListRestarts bounds how often one List starts over because the
// revision it was paging at was compacted.
const maxListRestarts = 3

// Lister reads a prefix from ChainFire with linearizable range reads, page
// by page, every page at the revision of the first one, so the result is
// one consistent snapshot. It is safe for concurrent use (the client is).
type Lister struct {
	// Client is the ChainFire client; it retries transient failures.
	Client *chainfire.Client
	// PageSize is the number of keys per range read (default
	// DefaultPageSize; negative reads everything in one response).
	PageSize int64
}

var _ resilience.Lister = Lister{}

// List returns every key-value under prefix and the revision they were read
// at. If that revision is compacted while paging, it starts over (a few
// times) at a newer one.
func (l Lister) List(ctx context.Context, prefix []byte) ([]*mvccpb.KeyValue, int64, error) {
	for attempt := 0; ; attempt++ {
		kvs, rev, err := l.list(ctx, prefix)
		if err != nil && rev != 0 && attempt < maxListRestarts && connect.CodeOf(err) == connect.CodeOutOfRange {
			continue // the snapshot revision was compacted between pages
		}
		return kvs, rev, err
	}
}

// list pages through prefix at one revision. On error, rev says whether
// the first page had been read.
func (l Lister) list(ctx context.Context, prefix []byte) (kvs []*mvccpb.KeyValue, rev int64, err error) {
	page := l.PageSize
	if page == 0 {
		page = DefaultPageSize
	}
	end := string(chainfire.PrefixEnd(prefix))
	key := string(prefix)
	for {
		opts := []chainfire.OpOption{chainfire.WithRange(end)}
		if page > 0 {
			opts = append(opts, chainfire.WithLimit(page))
		}
		if rev != 0 {
			opts = append(opts, chainfire.WithRev(rev))
		}
		resp, err := l.Client.Get(ctx, key, opts...)
		if err != nil {
			return nil, rev, fmt.Errorf("chainfiresource: list %q at revision %d: %w", prefix, rev, err)
		}
		if rev == 0 {
			rev = resp.GetHeader().GetRevision()
		}
		kvs = append(kvs, resp.GetKvs()...)
		if !resp.GetMore() || len(resp.GetKvs()) == 0 {
			return kvs, rev, nil
		}
		key = string(resp.GetKvs()[len(resp.GetKvs())-1].GetKey()) + "\x00"
	}
}

// Watcher follows a prefix with a ChainFire watch ([chainfire.Client.Watch]
// with progress notifications), which already reconnects across members and
// drops duplicates. It splits ChainFire's responses into one
// [resilience.Batch] per revision, turns progress notifications into
// bookmarks and a compaction into a [*resilience.CompactedError]. It is
// safe for concurrent use.
type Watcher struct {
	// Client is the ChainFire client.
	Client *chainfire.Client
	// PrevKV asks for the previous key-value of each event.
	PrevKV bool
}

var _ resilience.Watcher = Watcher{}

// Watch implements [resilience.Watcher]. It returns ctx.Err() when ctx
// ends, h's error, a *resilience.CompactedError on compaction, an error
// wrapping [chainfire.ErrWatchCanceled] when the server cancels the watch,
// or [chainfire.ErrClosed] when the client is closed.
func (w Watcher) Watch(ctx context.Context, prefix []byte, startRevision int64, h resilience.Handler) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the watch goroutine on an early return
	opts := []chainfire.OpOption{chainfire.WithPrefix(), chainfire.WithRev(startRevision), chainfire.WithProgressNotify()}
	if w.PrevKV {
		opts = append(opts, chainfire.WithPrevKV())
	}
	next := startRevision // lowest revision not yet handed to h
	for resp := range w.Client.Watch(ctx, string(prefix), opts...) {
		switch {
		case resp.Relist:
			return &resilience.CompactedError{
				ResumeRevision:  next,
				CompactRevision: resp.CompactRevision,
				CurrentRevision: resp.Revision(),
				Err:             resp.Err,
			}
		case resp.Err != nil:
			return resp.Err
		case resp.Created:
		case len(resp.Events) == 0:
			if rev := resp.Revision(); rev >= next {
				if err := h(ctx, resilience.Batch{Revision: rev, Bookmark: true}); err != nil {
					return err
				}
				next = rev + 1
			}
		default:
			for _, b := range splitByRevision(resp.Events) {
				if b.Revision < next {
					continue
				}
				if err := h(ctx, b); err != nil {
					return err
				}
				next = b.Revision + 1
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return chainfire.ErrClosed
}

// splitByRevision groups events (in revision order) into one Batch per
// revision.
func splitByRevision(events []*mvccpb.Event) []resilience.Batch {
	var out []resilience.Batch
	for _, ev := range events {
		rev := ev.GetKv().GetModRevision()
		if n := len(out); n > 0 && out[n-1].Revision == rev {
			out[n-1].Events = append(out[n-1].Events, ev)
			continue
		}
		out = append(out, resilience.Batch{Revision: rev, Events: []*mvccpb.Event{ev}})
	}
	return out
}
