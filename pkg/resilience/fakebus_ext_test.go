package resilience_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"plasmacloud.dev/proto/mvccpb"
	watchbusv1 "plasmacloud.dev/proto/watchbus/v1"
	"plasmacloud.dev/proto/watchbus/v1/watchbusv1connect"
)

// fakeStore is a scripted ChainFire keyspace: every write is one revision,
// kept in history until compacted. It is the shared upstream of the fake
// WatchBus replicas and, through List, the informer tests' Lister.
type fakeStore struct {
	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every write
	rev     int64
	compact int64
	kvs     map[string]*mvccpb.KeyValue
	history []fakeRevision
}

type fakeRevision struct {
	rev    int64
	events []*mvccpb.Event
}

// op is one write of a transaction: a put, or a delete when del is set.
type op struct {
	key, val string
	del      bool
}

func newFakeStore() *fakeStore {
	return &fakeStore{changed: make(chan struct{}), rev: 1, kvs: make(map[string]*mvccpb.KeyValue)}
}

// txn applies ops as one revision and returns it.
func (s *fakeStore) txn(ops ...op) int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rev++
	r := fakeRevision{rev: s.rev}
	for _, o := range ops {
		prev := s.kvs[o.key]
		if o.del {
			if prev == nil {
				continue
			}
			delete(s.kvs, o.key)
			r.events = append(r.events, &mvccpb.Event{Type: mvccpb.Event_DELETE,
				Kv: &mvccpb.KeyValue{Key: []byte(o.key), ModRevision: s.rev}, PrevKv: prev})
			continue
		}
		kv := &mvccpb.KeyValue{Key: []byte(o.key), Value: []byte(o.val), ModRevision: s.rev, CreateRevision: s.rev, Version: 1}
		if prev != nil {
			kv.CreateRevision, kv.Version = prev.CreateRevision, prev.Version+1
		}
		s.kvs[o.key] = kv
		r.events = append(r.events, &mvccpb.Event{Type: mvccpb.Event_PUT, Kv: kv, PrevKv: prev})
	}
	s.history = append(s.history, r)
	close(s.changed)
	s.changed = make(chan struct{})
	return s.rev
}

func (s *fakeStore) put(key, val string) int64 { return s.txn(op{key: key, val: val}) }
func (s *fakeStore) del(key string) int64      { return s.txn(op{key: key, del: true}) }

// compactTo drops the history up to and including rev.
func (s *fakeStore) compactTo(rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.compact = rev
	s.history = slices.DeleteFunc(s.history, func(r fakeRevision) bool { return r.rev <= rev })
}

func (s *fakeStore) current() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}

// since returns the revisions from start on with events under prefixes
// (filtered), the current revision, the compaction point and a channel
// closed by the next write.
func (s *fakeStore) since(start int64, prefixes [][]byte) (revs []fakeRevision, cur, compact int64, changed <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.history {
		if r.rev < start {
			continue
		}
		if evs := filterEvents(r.events, prefixes); len(evs) > 0 {
			revs = append(revs, fakeRevision{rev: r.rev, events: evs})
		}
	}
	return revs, s.rev, s.compact, s.changed
}

func filterEvents(evs []*mvccpb.Event, prefixes [][]byte) []*mvccpb.Event {
	var out []*mvccpb.Event
	for _, ev := range evs {
		for _, p := range prefixes {
			if bytes.HasPrefix(ev.GetKv().GetKey(), p) {
				out = append(out, proto.CloneOf(ev))
				break
			}
		}
	}
	return out
}

// List implements resilience.Lister over the store.
func (s *fakeStore) List(_ context.Context, prefix []byte) ([]*mvccpb.KeyValue, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*mvccpb.KeyValue
	for k, kv := range s.kvs {
		if strings.HasPrefix(k, string(prefix)) {
			out = append(out, proto.CloneOf(kv))
		}
	}
	slices.SortFunc(out, func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Key, b.Key) })
	return out, s.rev, nil
}

// history returns, as lines "rev TYPE key=value", every event under prefix
// from revision from on (what a subscriber must deliver).
func (s *fakeStore) historyLines(prefix string, from int64) []string {
	revs, _, _, _ := s.since(from, [][]byte{[]byte(prefix)})
	var out []string
	for _, r := range revs {
		out = append(out, eventLines(r.rev, r.events)...)
	}
	return out
}

func eventLines(rev int64, evs []*mvccpb.Event) []string {
	var out []string
	for _, ev := range evs {
		out = append(out, fmt.Sprintf("%d %s %s=%s", rev, ev.GetType(), ev.GetKv().GetKey(), ev.GetKv().GetValue()))
	}
	return out
}

// action is what a fakeBus hook does with the next message.
type action int

const (
	actSend        action = iota
	actGap                // skip a sequence number, then send
	actCut                // end the stream with ResourceExhausted + Resume
	actUnavailable        // end the stream with Unavailable + Resume
	actKill               // kill the replica: connections closed, listener gone
)

// fakeBus is one WatchBus replica over a fakeStore, served over h2c by an
// httptest server.
type fakeBus struct {
	store *fakeStore
	srv   *httptest.Server
	URL   string
	// bookmarkEvery is how long the replica waits for a change before
	// sending a bookmark (20 ms unless set before use).
	bookmarkEvery time.Duration
	// replayBack, when positive, makes resumed subscriptions (start > 1)
	// replay this many revisions before the one asked for (duplicates).
	replayBack int64

	mu     sync.Mutex
	reqs   []*watchbusv1.SubscribeRequest
	hook   func(call, sent int, msg *watchbusv1.SubscribeResponse) action
	down   bool
	killed bool
}

var _ watchbusv1connect.WatchBusServiceHandler = (*fakeBus)(nil)

func newFakeBus(t *testing.T, store *fakeStore) *fakeBus {
	t.Helper()
	b := &fakeBus{store: store, bookmarkEvery: 20 * time.Millisecond}
	mux := http.NewServeMux()
	mux.Handle(watchbusv1connect.NewWatchBusServiceHandler(b))
	b.srv = httptest.NewUnstartedServer(mux)
	b.srv.Config.Protocols = new(http.Protocols)
	b.srv.Config.Protocols.SetHTTP1(true)
	b.srv.Config.Protocols.SetUnencryptedHTTP2(true)
	b.srv.Start()
	b.URL = b.srv.URL
	t.Cleanup(b.kill)
	return b
}

// kill closes every connection and the listener.
func (b *fakeBus) kill() {
	b.mu.Lock()
	done := b.killed
	b.killed = true
	b.mu.Unlock()
	if !done {
		b.srv.CloseClientConnections()
		go b.srv.Close() // waits for handlers, which end with their connections
	}
}

func (b *fakeBus) setHook(h func(call, sent int, msg *watchbusv1.SubscribeResponse) action) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hook = h
}

// setDown makes new subscriptions fail with Unavailable, and ends the
// current ones the same way at their next message.
func (b *fakeBus) setDown(down bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down = down
}

func (b *fakeBus) isDown() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.down
}

// requests returns the subscriptions received so far.
func (b *fakeBus) requests() []*watchbusv1.SubscribeRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.reqs)
}

func resumeError(code connect.Code, rev int64) error {
	err := connect.NewError(code, errors.New("fake: cut"))
	if d, e := connect.NewErrorDetail(&watchbusv1.Resume{Revision: rev}); e == nil {
		err.AddDetail(d)
	}
	return err
}

// Subscribe implements the WatchBus stream over the store's history.
func (b *fakeBus) Subscribe(ctx context.Context, req *connect.Request[watchbusv1.SubscribeRequest], st *connect.ServerStream[watchbusv1.SubscribeResponse]) error {
	b.mu.Lock()
	b.reqs = append(b.reqs, proto.CloneOf(req.Msg))
	call, hook, down := len(b.reqs), b.hook, b.down
	b.mu.Unlock()
	if down {
		return connect.NewError(connect.CodeUnavailable, errors.New("fake: down"))
	}
	prefixes := req.Msg.GetPrefixes()
	var seq uint64
	sent := 0
	send := func(msg *watchbusv1.SubscribeResponse) error {
		if b.isDown() {
			return resumeError(connect.CodeUnavailable, msg.GetRevision())
		}
		act := actSend
		if hook != nil {
			act = hook(call, sent, msg)
		}
		switch act {
		case actGap:
			seq++
		case actCut:
			return resumeError(connect.CodeResourceExhausted, msg.GetRevision())
		case actUnavailable:
			return resumeError(connect.CodeUnavailable, msg.GetRevision())
		case actKill:
			b.kill()
			<-ctx.Done()
			return ctx.Err()
		}
		seq++
		sent++
		msg.Sequence = seq
		return st.Send(msg)
	}

	start := req.Msg.GetStartRevision()
	_, cur, compact, _ := b.store.since(0, nil)
	switch {
	case start == 0:
		if err := send(&watchbusv1.SubscribeResponse{Revision: cur, Bookmark: true}); err != nil {
			return err
		}
		start = cur + 1
	case start <= compact:
		err := connect.NewError(connect.CodeOutOfRange, errors.New("fake: compacted"))
		if d, e := connect.NewErrorDetail(&watchbusv1.Compacted{CompactRevision: compact, CurrentRevision: cur}); e == nil {
			err.AddDetail(d)
		}
		return err
	case b.replayBack > 0 && start > 1:
		start = max(compact+1, start-b.replayBack)
	}
	for {
		revs, cur, _, changed := b.store.since(start, prefixes)
		for _, r := range revs {
			if err := send(&watchbusv1.SubscribeResponse{Revision: r.rev, Events: r.events}); err != nil {
				return err
			}
			start = r.rev + 1
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		case <-time.After(b.bookmarkEvery):
			if err := send(&watchbusv1.SubscribeResponse{Revision: cur, Bookmark: true}); err != nil {
				return err
			}
			start = max(start, cur+1)
		}
	}
}
