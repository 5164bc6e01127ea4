package server_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"plasmacloud.dev/pkg/chainfire"
	"plasmacloud.dev/pkg/chainfiretest"
	"plasmacloud.dev/pkg/harness"
	"plasmacloud.dev/pkg/resilience"
	"plasmacloud.dev/pkg/resilience/chainfiresource"
	pb "plasmacloud.dev/proto/etcdserverpb"
	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
	"plasmacloud.dev/proto/watchbus/v1/watchbusv1connect"
)

type wbProc struct {
	*harness.Process
	url string
}

// startWatchbus runs the real watchbus binary against ChainFire with --auth none.
func startWatchbus(t *testing.T, name string, endpoints []string, extra ...string) *wbProc {
	t.Helper()
	bin := harness.Binary(t, "plasmacloud.dev/watchbus/cmd/watchbus")
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	u := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	args := append([]string{"server", "--listen", fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"--chainfire-endpoints", strings.Join(endpoints, ","), "--auth", "none", "--log-level", "debug"}, extra...)
	p := harness.StartProcess(t, harness.ProcessConfig{Name: name, Path: bin, Args: args, ReadyURL: u + "/readyz"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := p.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return &wbProc{Process: p, url: u}
}

var hc = resilience.NewHTTPClient(resilience.TransportOptions{})

func client(url string) watchbusv1connect.WatchBusServiceClient {
	return watchbusv1connect.NewWatchBusServiceClient(hc, url, connect.WithGRPC())
}

// collect subscribes and returns the messages until n events arrived or the timeout.
func collect(t *testing.T, url string, req *watchbusv1.SubscribeRequest, n int, timeout time.Duration) ([]*watchbusv1.SubscribeResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	st, err := client(url).Subscribe(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	var msgs []*watchbusv1.SubscribeResponse
	events := 0
	for events < n && st.Receive() {
		msgs = append(msgs, st.Msg())
		events += len(st.Msg().Events)
	}
	return msgs, st.Err()
}

func checkSequence(t *testing.T, msgs []*watchbusv1.SubscribeResponse) {
	t.Helper()
	for i, m := range msgs {
		if m.Sequence != uint64(i+1) {
			t.Fatalf("message %d has sequence %d", i, m.Sequence)
		}
	}
}

type flatEvent struct {
	rev int64
	typ mvccpb.Event_EventType
	key string
	val string
}

func flatten(msgs []*watchbusv1.SubscribeResponse) []flatEvent {
	var out []flatEvent
	for _, m := range msgs {
		if m.Bookmark || m.Snapshot {
			continue
		}
		for _, e := range m.Events {
			out = append(out, flatEvent{m.Revision, e.Type, string(e.Kv.Key), string(e.Kv.Value)})
		}
	}
	return out
}

// chainfireHistory reads ChainFire's own history of prefix in [from, to] with a direct
// watch: the reference a WatchBus stream must equal.
func chainfireHistory(t *testing.T, cf *chainfire.Client, prefix string, from, to int64) []flatEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out []flatEvent
	for r := range cf.Watch(ctx, prefix, chainfire.WithPrefix(), chainfire.WithRev(from)) {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
		for _, e := range r.Events {
			if e.Kv.ModRevision > to {
				return out
			}
			out = append(out, flatEvent{e.Kv.ModRevision, e.Type, string(e.Kv.Key), string(e.Kv.Value)})
		}
		if len(r.Events) > 0 && r.Events[len(r.Events)-1].Kv.ModRevision == to {
			return out
		}
	}
	t.Fatal("ChainFire history watch ended early")
	return nil
}

func equalHistory(t *testing.T, got, want []flatEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("delivered %d events, ChainFire's history has %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("event %d: delivered %+v, ChainFire has %+v", i, got[i], want[i])
		}
	}
}

func newCF(t *testing.T, endpoints []string) *chainfire.Client {
	c, err := chainfire.New(chainfire.Config{Endpoints: endpoints, RequestTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func prefixes(p ...string) [][]byte {
	var out [][]byte
	for _, s := range p {
		out = append(out, []byte(s))
	}
	return out
}

// TestSemantics runs real ChainFire and a real watchbus replica: replay inside the
// window, history from ChainFire (after a restart emptied the window), Compacted below
// ChainFire's compaction, snapshot then changes, and a txn delivered in one message.
func TestSemantics(t *testing.T) {
	cfc := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cf := newCF(t, cfc.Endpoints())
	ctx := context.Background()
	var revs []int64
	for i := range 5 {
		r, err := cf.Put(ctx, fmt.Sprintf("/s/k%d", i), fmt.Sprint(i))
		if err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r.Header.Revision)
	}
	wb := startWatchbus(t, "wb1", cfc.Endpoints())

	t.Run("history from ChainFire", func(t *testing.T) {
		msgs, err := collect(t, wb.url, &watchbusv1.SubscribeRequest{Prefixes: prefixes("/s/"), StartRevision: revs[0]}, 5, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		checkSequence(t, msgs)
		equalHistory(t, flatten(msgs), chainfireHistory(t, cf, "/s/", revs[0], revs[4]))
	})

	// Txn: three puts in one revision, one message.
	tr, err := cf.Txn(ctx).Then(chainfire.OpPut("/s/t1", "a"), chainfire.OpPut("/s/t2", "b"), chainfire.OpPut("/other/x", "c")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	txnRev := tr.Header.Revision
	t.Run("window replay and txn grouping", func(t *testing.T) {
		msgs, err := collect(t, wb.url, &watchbusv1.SubscribeRequest{Prefixes: prefixes("/s/t"), StartRevision: txnRev}, 2, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 1 || msgs[0].Revision != txnRev || len(msgs[0].Events) != 2 {
			t.Fatalf("txn delivered as %v", msgs)
		}
	})

	// Many revisions replayed from the window go out in batched runs (several messages
	// per flush): over the wire they must still be ChainFire's history, one message per
	// revision with the whole transaction, gapless sequence numbers, prev_kv intact.
	t.Run("batched window replay", func(t *testing.T) {
		var first, last int64
		for i := range 300 {
			var r *pb.ResponseHeader
			if i%3 == 0 {
				tr, err := cf.Txn(ctx).Then(chainfire.OpPut(fmt.Sprintf("/r/a%d", i%7), fmt.Sprint(i)),
					chainfire.OpPut("/other/y", "z"), chainfire.OpPut(fmt.Sprintf("/r/b%d", i%5), fmt.Sprint(i))).Commit()
				if err != nil {
					t.Fatal(err)
				}
				r = tr.Header
			} else {
				pr, err := cf.Put(ctx, fmt.Sprintf("/r/a%d", i%7), fmt.Sprint(i))
				if err != nil {
					t.Fatal(err)
				}
				r = pr.Header
			}
			if first == 0 {
				first = r.Revision
			}
			last = r.Revision
		}
		want := chainfireHistory(t, cf, "/r/", first, last)
		msgs, err := collect(t, wb.url, &watchbusv1.SubscribeRequest{Prefixes: prefixes("/r/"), StartRevision: first, PrevKv: true}, len(want), 20*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		checkSequence(t, msgs)
		equalHistory(t, flatten(msgs), want)
		seen := map[int64]bool{}
		for _, m := range msgs {
			if m.Bookmark {
				continue
			}
			if seen[m.Revision] {
				t.Fatalf("revision %d split over messages", m.Revision)
			}
			seen[m.Revision] = true
			for _, e := range m.Events {
				if e.Kv.ModRevision != m.Revision {
					t.Fatalf("message of revision %d holds an event of %d", m.Revision, e.Kv.ModRevision)
				}
				if e.Kv.Version > 1 && e.PrevKv == nil {
					t.Fatalf("revision %d: update of %s without prev_kv", m.Revision, e.Kv.Key)
				}
			}
		}
	})

	t.Run("snapshot then changes", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		st, err := client(wb.url).Subscribe(ctx, connect.NewRequest(&watchbusv1.SubscribeRequest{Prefixes: prefixes("/s/"), Snapshot: true, PrevKv: true}))
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		keys := map[string]string{}
		var snapRev int64
		for st.Receive() {
			m := st.Msg()
			if !m.Snapshot {
				t.Fatalf("non-snapshot message before snapshot_end: %v", m)
			}
			snapRev = m.Revision
			for _, e := range m.Events {
				keys[string(e.Kv.Key)] = string(e.Kv.Value)
			}
			if m.SnapshotEnd {
				break
			}
		}
		if len(keys) != 7 || snapRev < txnRev {
			t.Fatalf("snapshot at %d: %v", snapRev, keys)
		}
		pr, err := cf.Put(ctx, "/s/k0", "changed")
		if err != nil {
			t.Fatal(err)
		}
		if !st.Receive() {
			t.Fatal(st.Err())
		}
		m := st.Msg()
		if m.Revision != pr.Header.Revision || m.Events[0].PrevKv == nil || string(m.Events[0].PrevKv.Value) != "0" {
			t.Fatalf("change after snapshot: %v", m)
		}
	})

	t.Run("compacted", func(t *testing.T) {
		if _, err := cf.Compact(ctx, revs[3]); err != nil {
			t.Fatal(err)
		}
		// Restart so the window no longer holds these revisions.
		if err := wb.Restart(); err != nil {
			t.Fatal(err)
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := wb.WaitReady(rctx); err != nil {
			t.Fatal(err)
		}
		_, err := collect(t, wb.url, &watchbusv1.SubscribeRequest{Prefixes: prefixes("/s/"), StartRevision: revs[1]}, 1, 10*time.Second)
		var ce *connect.Error
		if !errors.As(err, &ce) || ce.Code() != connect.CodeOutOfRange {
			t.Fatalf("subscribe below compaction: %v, want OutOfRange", err)
		}
		var got *watchbusv1.Compacted
		for _, d := range ce.Details() {
			if v, err := d.Value(); err == nil {
				got, _ = v.(*watchbusv1.Compacted)
			}
		}
		if got == nil || got.CompactRevision != revs[3] || got.CurrentRevision < txnRev {
			t.Fatalf("Compacted detail %v, want compact revision %d", got, revs[3])
		}
		// Just above the compaction point: served from ChainFire's history.
		msgs, err := collect(t, wb.url, &watchbusv1.SubscribeRequest{Prefixes: prefixes("/s/k"), StartRevision: revs[3] + 1}, 1, 10*time.Second)
		if err != nil || len(flatten(msgs)) != 1 || flatten(msgs)[0].rev != revs[4] {
			t.Fatalf("subscribe above compaction: %v %v", msgs, err)
		}
	})

	t.Run("invalid", func(t *testing.T) {
		_, err := collect(t, wb.url, &watchbusv1.SubscribeRequest{Prefixes: prefixes("")}, 1, 5*time.Second)
		if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "prefixes[0]") {
			t.Fatalf("empty prefix: %v", err)
		}
	})
}

// writer puts /load/<n> at about rate per second until stopped, and returns the
// revisions it wrote.
type writer struct {
	stop chan struct{}
	done chan struct{}
	last atomic.Int64
	errs atomic.Int64
}

func startWriter(cf *chainfire.Client, rate int) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(time.Second / time.Duration(rate))
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r, err := cf.Put(ctx, fmt.Sprintf("/load/%06d", i), fmt.Sprint(i))
			cancel()
			if err != nil {
				w.errs.Add(1)
				continue
			}
			w.last.Store(r.Header.Revision)
		}
	}()
	return w
}

func (w *writer) Stop() int64 { close(w.stop); <-w.done; return w.last.Load() }

// resumingSubscriber follows /load/ across replicas the way a client must: on any
// stream error it resubscribes on the next replica from the last revision it saw.
func resumingSubscriber(ctx context.Context, urls []string, from int64, until func() int64, out *[]*watchbusv1.SubscribeResponse, switches *atomic.Int64) error {
	last := from - 1
	for i := 0; ctx.Err() == nil; i++ {
		st, err := client(urls[i%len(urls)]).Subscribe(ctx, connect.NewRequest(&watchbusv1.SubscribeRequest{
			Prefixes: prefixes("/load/"), StartRevision: last + 1}))
		if err == nil {
			var seq uint64
			for st.Receive() {
				m := st.Msg()
				seq++
				if m.Sequence != seq {
					return fmt.Errorf("sequence %d, want %d", m.Sequence, seq)
				}
				*out = append(*out, m)
				last = m.Revision
				if u := until(); u > 0 && last >= u {
					st.Close()
					return nil
				}
			}
			err = st.Err()
			st.Close()
		}
		if connect.CodeOf(err) == connect.CodeOutOfRange || connect.CodeOf(err) == connect.CodeInvalidArgument {
			return err
		}
		switches.Add(1)
		time.Sleep(100 * time.Millisecond)
	}
	return ctx.Err()
}

// TestReplicaKilled: two replicas under a steady write load; the one a subscriber is on
// is SIGKILLed mid-stream; the subscriber resumes on the other from its last revision
// and the delivered sequence equals ChainFire's history: no gap, no duplicate.
func TestReplicaKilled(t *testing.T) {
	cfc := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cf := newCF(t, cfc.Endpoints())
	wb1 := startWatchbus(t, "wb1", cfc.Endpoints())
	wb2 := startWatchbus(t, "wb2", cfc.Endpoints())
	start, err := cf.Get(context.Background(), "\x00", chainfire.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	from := start.Header.Revision + 1
	w := startWriter(cf, 100)
	var until atomic.Int64
	var msgs []*watchbusv1.SubscribeResponse
	var switches atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		errc <- resumingSubscriber(ctx, []string{wb1.url, wb2.url}, from, until.Load, &msgs, &switches)
	}()
	time.Sleep(1500 * time.Millisecond)
	if err := wb1.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	last := w.Stop()
	until.Store(last)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if switches.Load() < 1 {
		t.Fatal("subscriber never switched replicas")
	}
	equalHistory(t, flatten(msgs), chainfireHistory(t, cf, "/load/", from, last))
	t.Logf("%d events, %d replica switches, writer errors %d", len(flatten(msgs)), switches.Load(), w.errs.Load())
}

// TestChainFireMemberKilled: the ChainFire member WatchBus watches through is killed
// under a steady write load; the upstream resumes on another member and the stream
// continues with no gap and no duplicate, without the subscriber noticing.
func TestChainFireMemberKilled(t *testing.T) {
	cfc := chainfiretest.Start(t, 3, chainfiretest.Options{})
	eps := cfc.Endpoints()
	cf := newCF(t, []string{eps[1], eps[2]}) // writes avoid the member to be killed
	wb := startWatchbus(t, "wb1", eps)       // watches through eps[0] first
	start, err := cf.Get(context.Background(), "\x00", chainfire.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	from := start.Header.Revision + 1
	w := startWriter(cf, 100)
	var until atomic.Int64
	var msgs []*watchbusv1.SubscribeResponse
	var switches atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- resumingSubscriber(ctx, []string{wb.url}, from, until.Load, &msgs, &switches) }()
	time.Sleep(1500 * time.Millisecond)
	if err := cfc.Members[0].Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(4 * time.Second)
	last := w.Stop()
	until.Store(last)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if switches.Load() != 0 {
		t.Fatalf("subscriber saw %d stream breaks; upstream loss must be invisible", switches.Load())
	}
	equalHistory(t, flatten(msgs), chainfireHistory(t, cf, "/load/", from, last))
}

// TestSlowSubscriberAmongMany: a real `watchbus subscribe` process is SIGSTOPped (it and
// its kernel socket stop reading) while 256 KiB incompressible values are written under
// its prefix; once its HTTP/2 stream window (4 MiB, Go's client default) is full the
// replica's send blocks and it is cut (stalled_send or queue_full), while 100 other
// subscribers on another prefix receive every event, in order, within a generous bound.
// Resumed with SIGCONT, the CLI drains what was buffered, sees its stream reset, resumes
// from its last revision and prints every revision under its prefix exactly once.
//
// (The first version of this test wrote strings.Repeat("x", 512<<10): gzip shrank each
// message to about a kilobyte, so 80 of them fit in the window and every send completed;
// that, not lost flow control, is why the cut never came.)
func TestSlowSubscriberAmongMany(t *testing.T) {
	cfc := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cf := newCF(t, cfc.Endpoints())
	wb := startWatchbus(t, "wb1", cfc.Endpoints(), "--subscriber-queue", "32", "--slow-consumer-timeout", "2s")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The slow one: stdout (the events, tens of MB) to a file of ours, stderr (its
	// resume messages) to the harness log. sh execs it in place: same pid, same signals.
	out := filepath.Join(t.TempDir(), "slow.jsonl")
	bin := harness.Binary(t, "plasmacloud.dev/watchbus/cmd/watchbus")
	slow := harness.StartProcess(t, harness.ProcessConfig{Name: "slow-subscriber", Path: bin,
		Args: []string{"subscribe", "--endpoints", wb.url, "--prefix", "/big/", "-o", "json", "--bookmarks"},
		Wrap: func(argv []string) []string {
			return append([]string{"/bin/sh", "-c", `exec "$@" >"$0"`, out}, argv...)
		}})
	for {
		if b, _ := os.ReadFile(out); bytes.Contains(b, []byte("BOOKMARK")) {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("slow subscriber never subscribed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := slow.Stop(); err != nil {
		t.Fatal(err)
	}

	const (
		others = 100
		rounds = 80
	)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		worst    time.Duration
		received atomic.Int64
		badOrder atomic.Int64
	)
	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	var subscribed sync.WaitGroup
	subscribed.Add(others)
	for range others {
		wg.Go(func() {
			st, err := client(wb.url).Subscribe(octx, connect.NewRequest(&watchbusv1.SubscribeRequest{Prefixes: prefixes("/small/")}))
			if err != nil {
				subscribed.Done()
				return
			}
			defer st.Close()
			next, first := 0, true
			for st.Receive() {
				if first {
					first = false
					subscribed.Done()
				}
				for _, e := range st.Msg().Events {
					var i int
					var ns int64
					fmt.Sscan(string(e.Kv.Value), &i, &ns)
					if i != next {
						badOrder.Add(1)
					}
					next = i + 1
					d := time.Since(time.Unix(0, ns))
					mu.Lock()
					worst = max(worst, d)
					mu.Unlock()
					received.Add(1)
				}
			}
		})
	}
	subscribed.Wait()
	var bigRevs []int64
	big := make([]byte, 256<<10)
	for i := range rounds {
		_, _ = rand.Read(big) // incompressible: gzip cannot shrink it below the window
		r, err := cf.Put(ctx, fmt.Sprintf("/big/%d", i%4), string(big))
		if err != nil {
			t.Fatal(err)
		}
		bigRevs = append(bigRevs, r.Header.Revision)
		if _, err := cf.Put(ctx, fmt.Sprintf("/small/%d", i), fmt.Sprint(i, " ", time.Now().UnixNano())); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	deadline := time.Now().Add(20 * time.Second)
	for metric(t, wb.url, "watchbus_slow_consumer_cuts_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatalf("slow subscriber not cut; max lag %v, messages sent %v",
				metric(t, wb.url, "watchbus_subscriber_lag_max_revisions"), metric(t, wb.url, "watchbus_messages_sent_total"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	deadline = time.Now().Add(15 * time.Second)
	for received.Load() < others*rounds && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	ocancel()
	wg.Wait()
	if got := received.Load(); got != others*rounds || badOrder.Load() != 0 {
		t.Fatalf("others received %d events (want %d), %d out of order", got, others*rounds, badOrder.Load())
	}
	if worst > 3*time.Second {
		t.Fatalf("worst latency of the others %s while one subscriber was stuck", worst)
	}
	if cuts := metric(t, wb.url, "watchbus_slow_consumer_cuts_total"); cuts != 1 {
		t.Fatalf("%v slow-consumer cuts, want exactly the stopped one", cuts)
	}

	// Resume the slow one: it reads what was buffered, finds its stream reset, resumes
	// from its last revision and ends up with every /big/ revision once.
	if err := slow.Cont(); err != nil {
		t.Fatal(err)
	}
	if _, err := slow.WaitLog(ctx, regexp.MustCompile(`ended \(.*\); resuming from revision`)); err != nil {
		t.Fatal(err)
	}
	var got []int64
	for ctx.Err() == nil {
		got = bigRevisions(t, out)
		if len(got) >= len(bigRevs) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !slices.Equal(got, bigRevs) {
		t.Fatalf("slow subscriber printed /big/ revisions %v, want %v", got, bigRevs)
	}
	t.Logf("others' worst put→event latency %s; cut reasons: stalled_send %v, queue_full %v", worst,
		metric(t, wb.url, `watchbus_slow_consumer_cuts_total{reason="stalled_send"}`),
		metric(t, wb.url, `watchbus_slow_consumer_cuts_total{reason="queue_full"}`))
}

// bigRevisions reads the revisions of the PUT events a `watchbus subscribe -o json`
// printed to path (a partial last line is ignored).
func bigRevisions(t *testing.T, path string) []int64 {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var revs []int64
	dec := json.NewDecoder(f)
	for {
		var ev struct {
			Revision int64  `json:"revision"`
			Type     string `json:"type"`
		}
		if err := dec.Decode(&ev); err != nil {
			return revs
		}
		if ev.Type == "PUT" {
			revs = append(revs, ev.Revision)
		}
	}
}

func metric(t *testing.T, url, name string) float64 {
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, name) {
			var v float64
			fields := strings.Fields(line)
			fmt.Sscan(fields[len(fields)-1], &v)
			sum += v
		}
	}
	return sum
}

// TestReplicaKilledClientLibrary is TestReplicaKilled through the client library every
// service uses: pkg/resilience.Subscribe with both replicas as endpoints. The replica it
// is on is SIGKILLed under a steady write load; the delivered sequence equals ChainFire's
// history for the prefix: no gap, no duplicate.
func TestReplicaKilledClientLibrary(t *testing.T) {
	cfc := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cf := newCF(t, cfc.Endpoints())
	wb1 := startWatchbus(t, "wb1", cfc.Endpoints())
	wb2 := startWatchbus(t, "wb2", cfc.Endpoints())
	start, err := cf.Get(context.Background(), "\x00", chainfire.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	from := start.Header.Revision + 1
	w := startWriter(cf, 100)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu    sync.Mutex
		got   []flatEvent
		until atomic.Int64
		stats resilience.SubscriberStats
	)
	done := errors.New("reached the last write")
	errc := make(chan error, 1)
	go func() {
		errc <- resilience.Subscribe(ctx, resilience.SubscriberConfig{
			Endpoints:     []string{wb1.url, wb2.url},
			ClientOptions: []connect.ClientOption{connect.WithGRPC()},
			Prefixes:      prefixes("/load/"),
			StartRevision: from,
			Backoff:       resilience.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 500 * time.Millisecond},
			Stats:         &stats,
		}, func(_ context.Context, b resilience.Batch) error {
			mu.Lock()
			for _, e := range b.Events {
				got = append(got, flatEvent{b.Revision, e.Type, string(e.Kv.Key), string(e.Kv.Value)})
			}
			mu.Unlock()
			if u := until.Load(); u > 0 && b.Revision >= u {
				return done
			}
			return nil
		})
	}()
	time.Sleep(1500 * time.Millisecond)
	mu.Lock()
	before := len(got)
	mu.Unlock()
	if before == 0 {
		t.Fatal("nothing delivered before the kill")
	}
	if err := wb1.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	last := w.Stop()
	until.Store(last)
	// A put after the last one makes sure a delivery reaches the handler past `last`
	// even if the stream was idle at the moment until was set.
	if _, err := cf.Put(ctx, "/load/zz-end", "end"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, done) {
		t.Fatalf("Subscribe ended with %v", err)
	}
	if stats.Resumes.Load() < 1 || stats.SequenceGaps.Load() != 0 {
		t.Fatalf("resumes %d, sequence gaps %d; want a resume and no gap", stats.Resumes.Load(), stats.SequenceGaps.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	want := chainfireHistory(t, cf, "/load/", from, last)
	if len(got) > len(want) && got[len(got)-1].key == "/load/zz-end" {
		got = got[:len(got)-1]
	}
	equalHistory(t, got, want)
	t.Logf("%d events (%d before the kill), %d resumes, %d duplicates dropped, writer errors %d",
		len(got), before, stats.Resumes.Load(), stats.Duplicates.Load(), w.errs.Load())
}

// TestInformerRelistAfterCompaction: an Informer (chainfiresource.Lister + WatchBusWatcher)
// follows a prefix through a real replica. The replica is SIGKILLed; meanwhile keys are
// updated, deleted, added (one added and deleted again) and ChainFire is compacted past
// the informer's revision. Once the replica is back, the resume is answered with
// Compacted, the informer relists, its cache equals ChainFire's range (key, value,
// mod_revision), and the handlers saw exactly the difference.
func TestInformerRelistAfterCompaction(t *testing.T) {
	cfc := chainfiretest.Start(t, 1, chainfiretest.Options{})
	cf := newCF(t, cfc.Endpoints())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		if _, err := cf.Put(ctx, "/inf/"+k, "v1"); err != nil {
			t.Fatal(err)
		}
	}
	wb := startWatchbus(t, "wb1", cfc.Endpoints())

	var (
		mu  sync.Mutex
		log []string
	)
	record := func(s string) { mu.Lock(); log = append(log, s); mu.Unlock() }
	inf, err := resilience.NewInformer(resilience.InformerConfig[*mvccpb.KeyValue]{
		Lister: chainfiresource.Lister{Client: cf},
		Watcher: resilience.WatchBusWatcher(resilience.SubscriberConfig{
			Endpoints:        []string{wb.url},
			ClientOptions:    []connect.ClientOption{connect.WithGRPC()},
			BookmarkInterval: 200 * time.Millisecond,
			Backoff:          resilience.Policy{InitialInterval: 50 * time.Millisecond, MaxInterval: 300 * time.Millisecond},
		}),
		Prefix: []byte("/inf/"),
		Handlers: resilience.InformerHandlers[*mvccpb.KeyValue]{
			OnAdd:    func(k string, kv *mvccpb.KeyValue) { record("add " + k + "=" + string(kv.Value)) },
			OnUpdate: func(k string, _, kv *mvccpb.KeyValue) { record("update " + k + "=" + string(kv.Value)) },
			OnDelete: func(k string, _ *mvccpb.KeyValue) { record("delete " + k) },
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- inf.Run(ctx) }()
	if err := inf.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	// The watch is live: a change arrives through WatchBus.
	pr, err := cf.Put(ctx, "/inf/f", "v1")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the informer to see /inf/f", func() bool { return inf.Revision() >= pr.Header.Revision })
	infRev := inf.Revision()
	mu.Lock()
	log = nil
	mu.Unlock()

	if err := wb.Kill(); err != nil {
		t.Fatal(err)
	}
	for _, op := range []struct {
		put      bool
		key, val string
	}{
		{true, "/inf/a", "v2"}, {false, "/inf/b", ""}, {true, "/inf/g", "v1"}, {true, "/inf/c", "v2"},
		{true, "/inf/c", "v3"}, {true, "/inf/h", "v1"}, {false, "/inf/h", ""}, {true, "/other/x", "v1"},
	} {
		var err error
		if op.put {
			_, err = cf.Put(ctx, op.key, op.val)
		} else {
			_, err = cf.Delete(ctx, op.key)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	head, err := cf.Get(ctx, "\x00", chainfire.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	compactRev := head.Header.Revision
	if _, err := cf.Compact(ctx, compactRev); err != nil {
		t.Fatal(err)
	}
	if compactRev <= infRev {
		t.Fatalf("compaction %d not past the informer's revision %d", compactRev, infRev)
	}
	if err := wb.Start(); err != nil {
		t.Fatal(err)
	}
	if err := wb.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "a relist", func() bool { return inf.Relists() >= 1 && inf.Revision() >= compactRev })

	// The cache equals ChainFire's range.
	rr, err := cf.Get(ctx, "/inf/", chainfire.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var want, gotKVs []string
	for _, kv := range rr.Kvs {
		want = append(want, fmt.Sprintf("%s=%s@%d", kv.Key, kv.Value, kv.ModRevision))
	}
	for _, kv := range inf.List() {
		gotKVs = append(gotKVs, fmt.Sprintf("%s=%s@%d", kv.Key, kv.Value, kv.ModRevision))
	}
	if !slices.Equal(gotKVs, want) {
		t.Fatalf("informer cache %v, ChainFire has %v", gotKVs, want)
	}
	// The handlers saw exactly the difference (in key order), nothing for /inf/h.
	mu.Lock()
	gotLog := slices.Clone(log)
	mu.Unlock()
	wantLog := []string{"update /inf/a=v2", "delete /inf/b", "update /inf/c=v3", "add /inf/g=v1"}
	if !slices.Equal(gotLog, wantLog) {
		t.Fatalf("handlers saw %v, want %v", gotLog, wantLog)
	}
	// And it keeps following through the replica after the relist.
	pr, err = cf.Put(ctx, "/inf/i", "v1")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the informer to see /inf/i", func() bool { _, ok := inf.Get("/inf/i"); return ok })
	cancel()
	if err := <-runErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("informer Run: %v", err)
	}
	t.Logf("relists %d; informer revision %d before the kill, compaction at %d", inf.Relists(), infRev, compactRev)
}

func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		if ctx.Err() != nil {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
