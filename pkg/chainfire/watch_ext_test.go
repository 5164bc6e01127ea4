package chainfire_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
)

// collector reads a watch channel and checks the delivery contract as it
// goes: revisions strictly increasing across responses, events of one
// revision never split over two responses.
type collector struct {
	t       *testing.T
	ch      <-chan chainfire.WatchResponse
	lastRev int64
	revs    []int64          // every event's revision, in delivery order
	perRev  map[int64]int    // events per revision
	values  map[int64]string // value of each revision's first event
}

func newCollector(t *testing.T, ch <-chan chainfire.WatchResponse) *collector {
	return &collector{t: t, ch: ch, perRev: map[int64]int{}, values: map[int64]string{}}
}

// until reads responses until cond holds for a delivered event revision.
func (c *collector) untilRev(rev int64) {
	c.t.Helper()
	timeout := time.After(15 * time.Second)
	for c.lastRev < rev {
		select {
		case r, ok := <-c.ch:
			if !ok {
				c.t.Fatalf("watch channel closed at revision %d, waiting for %d", c.lastRev, rev)
			}
			c.add(r)
		case <-timeout:
			c.t.Fatalf("timed out at revision %d waiting for %d", c.lastRev, rev)
		}
	}
}

func (c *collector) add(r chainfire.WatchResponse) {
	c.t.Helper()
	if r.Err != nil {
		c.t.Fatalf("watch error: %v", r.Err)
	}
	seen := map[int64]bool{}
	for _, ev := range r.Events {
		rev := ev.Kv.ModRevision
		if rev < c.lastRev || (rev == c.lastRev && !seen[rev]) {
			c.t.Fatalf("revision %d delivered after %d (duplicate or split revision)", rev, c.lastRev)
		}
		if !seen[rev] {
			c.values[rev] = string(ev.Kv.Value)
		}
		seen[rev] = true
		c.lastRev = rev
		c.revs = append(c.revs, rev)
		c.perRev[rev]++
	}
}

// TestWatchResume: the server drops every stream after four responses and,
// on resume, sends two revisions again. The consumer still sees each
// revision exactly once, in order, with the two events of a txn together.
func TestWatchResume(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	n := nodes[0]
	n.watchDropAfter.Store(4)
	n.watchReplay.Store(2)
	c := newClient(t, chainfire.Config{Endpoints: []string{n.url}})
	ctx := testCtx(t)

	first, err := c.Put(ctx, "w/0", "0")
	if err != nil {
		t.Fatal(err)
	}
	col := newCollector(t, c.Watch(ctx, "w/", chainfire.WithPrefix(), chainfire.WithRev(first.Header.Revision)))
	want := []int64{first.Header.Revision} // every w/ revision, in order
	var txnRev int64
	for i := 1; i <= 20; i++ {
		if i == 10 {
			r, err := c.Txn(ctx).Then(chainfire.OpPut("w/a", "t1"), chainfire.OpPut("w/b", "t2")).Commit()
			if err != nil {
				t.Fatal(err)
			}
			txnRev = r.Header.Revision
			want = append(want, txnRev)
			continue
		}
		r, err := c.Put(ctx, fmt.Sprintf("w/%d", i), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, r.Header.Revision)
		if _, err := c.Put(ctx, "other", "ignored"); err != nil {
			t.Fatal(err)
		}
	}
	last, err := c.Put(ctx, "w/last", "end")
	if err != nil {
		t.Fatal(err)
	}
	want = append(want, last.Header.Revision)
	col.untilRev(last.Header.Revision)

	var got []int64
	for _, rev := range col.revs {
		if len(got) == 0 || got[len(got)-1] != rev {
			got = append(got, rev)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered revisions %v, want %v", got, want)
	}
	if col.perRev[txnRev] != 2 {
		t.Fatalf("txn revision %d delivered %d events, want 2", txnRev, col.perRev[txnRev])
	}
	if n.watchStreams.Load() < 5 {
		t.Fatalf("only %d streams: the drop fault did not fire", n.watchStreams.Load())
	}
}

// TestWatchFromNowSurvivesDrop: a watch "from now" that loses its stream
// before any event resumes from the creation revision, missing nothing.
func TestWatchFromNowSurvivesDrop(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	n := nodes[0]
	c := newClient(t, chainfire.Config{Endpoints: []string{n.url}})
	ctx := testCtx(t)
	wch := c.Watch(ctx, "k", chainfire.WithCreatedNotify())
	if r := <-wch; !r.Created {
		t.Fatalf("want Created first, got %+v", r)
	}
	// Cut the connection, then write (over a connection of its own) while
	// the watch reconnects.
	n.srv.CloseClientConnections()
	writer := newClient(t, chainfire.Config{Endpoints: []string{n.url}})
	put, err := writer.Put(ctx, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	col := newCollector(t, wch)
	col.untilRev(put.Header.Revision)
	if col.values[put.Header.Revision] != "v" {
		t.Fatalf("got %v", col.values)
	}
}

// TestWatchFailover: the member serving the watch dies; the watch moves to
// the other member and resumes without gap or duplicate.
func TestWatchFailover(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 2)
	a, b := nodes[0], nodes[1]
	c := newClient(t, chainfire.Config{Endpoints: []string{a.url, b.url}})
	writer := newClient(t, chainfire.Config{Endpoints: []string{b.url}})
	ctx := testCtx(t)
	col := newCollector(t, c.Watch(ctx, "f", chainfire.WithPrefix(), chainfire.WithRev(1)))
	var lastRev int64
	for i := range 10 {
		if i == 5 {
			col.untilRev(lastRev)
			a.kill()
		}
		r, err := writer.Put(ctx, fmt.Sprintf("f%d", i), "v")
		if err != nil {
			t.Fatal(err)
		}
		lastRev = r.Header.Revision
	}
	col.untilRev(lastRev)
	if len(col.revs) != 10 {
		t.Fatalf("delivered %v, want 10 revisions", col.revs)
	}
	if b.watchStreams.Load() == 0 {
		t.Fatal("watch never moved to the surviving member")
	}
}

// TestWatchCompacted: resuming from a compacted revision yields one Relist
// response, then the channel closes.
func TestWatchCompacted(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx := testCtx(t)
	var rev int64
	for i := range 5 {
		r, err := c.Put(ctx, "k", fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		rev = r.Header.Revision
	}
	if _, err := c.Compact(ctx, rev); err != nil {
		t.Fatal(err)
	}
	var got []chainfire.WatchResponse
	for r := range c.Watch(ctx, "k", chainfire.WithRev(2)) {
		got = append(got, r)
	}
	if len(got) != 1 || !got[0].Relist || got[0].CompactRevision != rev || !errors.Is(got[0].Err, chainfire.ErrCompacted) {
		t.Fatalf("got %+v, want one Relist at %d", got, rev)
	}
}

// TestWatchRefused: a watch the server rejects as invalid ends with Err.
func TestWatchRefused(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	nodes[0].refuseWatchCode.Store(int64(connect.CodeInvalidArgument))
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	var got []chainfire.WatchResponse
	for r := range c.Watch(testCtx(t), "k") {
		got = append(got, r)
	}
	if len(got) != 1 || connect.CodeOf(got[0].Err) != connect.CodeInvalidArgument {
		t.Fatalf("got %+v", got)
	}
}

// TestWatchUnavailableRetried: a member that fails watches with
// Unavailable is left for the next one.
func TestWatchUnavailableRetried(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 2)
	nodes[0].refuseWatchCode.Store(int64(connect.CodeUnavailable))
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url, nodes[1].url}})
	ctx := testCtx(t)
	wch := c.Watch(ctx, "k", chainfire.WithCreatedNotify())
	if r := <-wch; !r.Created {
		t.Fatalf("got %+v", r)
	}
}

func TestWatchProgressAndCancel(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx, cancel := context.WithCancel(testCtx(t))
	wch := c.Watch(ctx, "k", chainfire.WithCreatedNotify())
	<-wch
	put, err := c.Put(ctx, "other", "v")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RequestProgress(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-wch
	if !r.IsProgressNotify() || r.Revision() < put.Header.Revision {
		t.Fatalf("got %+v, want progress at >= %d", r, put.Header.Revision)
	}
	cancel()
	select {
	case _, ok := <-wch:
		for ok {
			_, ok = <-wch
		}
	case <-time.After(5 * time.Second):
		t.Fatal("channel not closed after cancel")
	}
}

func TestWatchFilters(t *testing.T) {
	t.Parallel()
	_, nodes := newFakeCluster(t, 1)
	c := newClient(t, chainfire.Config{Endpoints: []string{nodes[0].url}})
	ctx := testCtx(t)
	wch := c.Watch(ctx, "k", chainfire.WithFilterPut(), chainfire.WithPrevKV(), chainfire.WithCreatedNotify())
	<-wch
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	r := <-wch
	if len(r.Events) != 1 || r.Events[0].Type.String() != "DELETE" || string(r.Events[0].PrevKv.GetValue()) != "v" {
		t.Fatalf("got %+v, want only the delete with its prev kv", r)
	}
}
