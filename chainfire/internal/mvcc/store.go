package mvcc

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"google.golang.org/protobuf/proto"
	peerv1 "plasmacloud.dev/proto/chainfire/peer/v1"
)

// Options configures a Store. The zero value is usable.
type Options struct {
	// Logger receives pebble's and the store's log lines; nil discards them.
	Logger *slog.Logger
	// Sync fsyncs the pebble WAL on every Apply batch. Off by default: the raft log is
	// durable and replays whatever pebble lost in a crash.
	Sync bool
	// WatchBuffer is each watcher's channel capacity in batches (0 = 1024). A watcher
	// whose channel is full is caught up from history later; Apply never waits for it.
	WatchBuffer int
	// CacheBytes is pebble's block cache size (0 = 64 MiB).
	CacheBytes int64
	// MemTableBytes is pebble's largest memtable size (0 = 64 MiB).
	MemTableBytes uint64
}

const (
	defaultWatchBuffer = 1024
	defaultCacheBytes  = 64 << 20
	defaultMemTable    = 64 << 20
	currentFile        = "CURRENT"
	dbDirPrefix        = "db-"
)

// Entry is one committed raft log entry.
type Entry struct {
	Index, Term uint64
	Cmd         *peerv1.Command
}

// ApplyResult is the outcome of one Entry: Result on success; Err (wrapping a sentinel)
// when the command failed deterministically and stored nothing; both nil for an entry
// skipped because its Index <= AppliedIndex().
type ApplyResult struct {
	Result *peerv1.Result
	Err    error
}

// LeaseInfo describes a granted lease. TTL is as granted, in seconds; expiry is tracked
// by the leader in memory, not here.
type LeaseInfo struct{ ID, TTL int64 }

// Store is the MVCC state machine. Apply, Snapshot and Restore must be called from one
// goroutine (the FSM); all other methods may be called concurrently with them and with
// each other. Close ends the background goroutines and closes every watcher.
type Store struct {
	dir  string
	opts Options
	log  *slog.Logger

	// dbMu guards h: readers hold RLock while they use h.db, Restore and Close take the
	// write lock to swap or drop it. The FSM goroutine reads h without the lock.
	dbMu  sync.RWMutex
	h     *dbHandle
	gen   int           // generation of the db directory (FSM goroutine, under dbMu)
	epoch atomic.Uint64 // bumped by every Restore

	rev         atomic.Int64
	compacted   atomic.Int64
	applied     atomic.Uint64
	appliedTerm atomic.Uint64

	ap  *applier // FSM goroutine only
	hub *hub
	cp  *compactor

	stop   chan struct{}
	wg     sync.WaitGroup
	closed atomic.Bool
}

// dbHandle is one open pebble DB with a reference count: the Store holds one reference,
// each live Snapshot another. The DB closes when the last reference goes; a DB retired
// by Restore also has its directory removed then.
type dbHandle struct {
	db     *pebble.DB
	dir    string
	refs   atomic.Int32
	remove atomic.Bool
}

func (h *dbHandle) ref() { h.refs.Add(1) }

func (h *dbHandle) unref() error {
	if h.refs.Add(-1) != 0 {
		return nil
	}
	err := h.db.Close()
	if h.remove.Load() {
		if rerr := os.RemoveAll(h.dir); err == nil {
			err = rerr
		}
	}
	return err
}

// pebbleLogger adapts slog to pebble's logger.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg, "component", "pebble")
	panic("pebble: " + msg)
}

func pebbleOptions(o Options, log *slog.Logger) *pebble.Options {
	cmp := *pebble.DefaultComparer
	cmp.Split = kvSplit
	cmp.Name = "chainfire.mvcc.v1"
	po := &pebble.Options{
		Comparer:           &cmp,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleLogger{log},
		CacheSize:          o.CacheBytes,
		MemTableSize:       o.MemTableBytes,
	}
	if po.CacheSize <= 0 {
		po.CacheSize = defaultCacheBytes
	}
	if po.MemTableSize == 0 {
		po.MemTableSize = defaultMemTable
	}
	// Bloom filters on every level: with Split above they make point lookups of a key
	// (SeekPrefixGE, Get) skip tables that do not hold it.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	// Let compactions use more than one core when writes pile up in L0, and stall
	// writes later than the defaults (raft already bounds the write rate).
	maxCompactions := max(2, min(4, runtime.GOMAXPROCS(0)))
	po.CompactionConcurrencyRange = func() (int, int) { return 1, maxCompactions }
	po.MemTableStopWritesThreshold = 4
	po.L0StopWritesThreshold = 24
	return po
}

func (s *Store) openHandle(dir string, mustExist bool) (*dbHandle, error) {
	po := pebbleOptions(s.opts, s.log)
	po.ErrorIfNotExists = mustExist
	db, err := pebble.Open(dir, po)
	if err != nil {
		return nil, storageErr("open "+dir, err)
	}
	h := &dbHandle{db: db, dir: dir}
	h.refs.Store(1)
	return h, nil
}

// Open opens (creating if missing) the store in dir. The pebble data lives in
// dir/db-<generation>; dir/CURRENT names the live generation (Restore switches it
// atomically).
func Open(dir string, opts Options) (*Store, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("mvcc: create %s: %w", dir, err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.WatchBuffer <= 0 {
		opts.WatchBuffer = defaultWatchBuffer
	}
	s := &Store{dir: dir, opts: opts, log: log, stop: make(chan struct{})}
	gen, fresh, err := readCurrent(dir)
	if err != nil {
		return nil, err
	}
	if err := removeStaleGenerations(dir, gen); err != nil {
		return nil, err
	}
	// CURRENT names an existing database: refuse to silently start empty if it is gone.
	h, err := s.openHandle(filepath.Join(dir, dbDirPrefix+strconv.Itoa(gen)), !fresh)
	if err != nil {
		return nil, err
	}
	m, err := loadMeta(h.db, true)
	if err != nil {
		h.unref()
		return nil, err
	}
	if fresh {
		if err := writeCurrent(dir, gen); err != nil {
			h.unref()
			return nil, err
		}
	}
	s.h, s.gen = h, gen
	s.setMeta(m)
	s.ap = newApplier(s)
	if err := s.ap.reset(h, m); err != nil {
		h.unref()
		return nil, err
	}
	s.hub = newHub(s, m.rev)
	s.cp = newCompactor(s, m.compactDone)
	s.wg.Add(2)
	go s.hub.syncLoop()
	go s.cp.loop()
	s.cp.kick()
	return s, nil
}

func (s *Store) setMeta(m meta) {
	s.rev.Store(m.rev)
	s.compacted.Store(m.compacted)
	s.applied.Store(m.applied)
	s.appliedTerm.Store(m.term)
}

// Close stops the background goroutines, closes every watcher's channel and closes the
// database (once the last outstanding Snapshot is released). Calls after the first
// return nil; other methods return ErrClosed afterwards. Close must not run concurrently
// with Apply, Snapshot or Restore.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	close(s.stop)
	s.wg.Wait()
	s.hub.closeAll()
	s.ap.close()
	s.dbMu.Lock()
	h := s.h
	s.h = nil
	s.dbMu.Unlock()
	if err := h.unref(); err != nil {
		return storageErr("close", err)
	}
	return nil
}

// AppliedIndex returns the raft index of the last entry Apply committed.
func (s *Store) AppliedIndex() uint64 { return s.applied.Load() }

// AppliedTerm returns the raft term of the last entry Apply committed.
func (s *Store) AppliedTerm() uint64 { return s.appliedTerm.Load() }

// Revision returns the current revision (1 for an empty store) and the compaction
// revision (0 when never compacted). Both are committed and visible to Range.
func (s *Store) Revision() (current, compacted int64) {
	return s.rev.Load(), s.compacted.Load()
}

// reader runs fn with the live DB under the read lock.
func (s *Store) reader(fn func(db *pebble.DB) error) error {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.h == nil {
		return ErrClosed
	}
	return fn(s.h.db)
}

// DBSize returns the disk space pebble currently uses, in bytes (0 after Close).
func (s *Store) DBSize() int64 {
	var n int64
	_ = s.reader(func(db *pebble.DB) error {
		n = int64(db.Metrics().DiskSpaceUsage())
		return nil
	})
	return n
}

// Defragment runs a full manual compaction of pebble, reclaiming the space of deleted
// and compacted versions. It blocks until done or ctx ends; Apply and reads continue
// meanwhile (a concurrent Restore waits for it).
func (s *Store) Defragment(ctx context.Context) error {
	return s.reader(func(db *pebble.DB) error {
		if err := db.Compact(ctx, []byte{0}, []byte{0xff, 0xff}, true); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return storageErr("defragment", err)
		}
		return nil
	})
}

// Members returns the member metadata recorded by MemberPut, ordered by id.
func (s *Store) Members() ([]*peerv1.MemberPut, error) {
	var out []*peerv1.MemberPut
	err := s.reader(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxMember), UpperBound: prefixEnd([]byte(pfxMember))})
		if err != nil {
			return storageErr("members", err)
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			v, err := it.ValueAndErr()
			if err != nil {
				return storageErr("members", err)
			}
			m := &peerv1.MemberPut{}
			if err := proto.Unmarshal(v, m); err != nil {
				return storageErr("members", err)
			}
			out = append(out, m)
		}
		if err := it.Error(); err != nil {
			return storageErr("members", err)
		}
		return nil
	})
	return out, err
}

// Leases returns every granted lease, ordered by id (as unsigned, so negative ids last).
func (s *Store) Leases() ([]LeaseInfo, error) {
	var out []LeaseInfo
	err := s.reader(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxLease), UpperBound: prefixEnd([]byte(pfxLease))})
		if err != nil {
			return storageErr("leases", err)
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			k := it.Key()
			v, err := it.ValueAndErr()
			if err != nil {
				return storageErr("leases", err)
			}
			li, err := decodeLease(k, v)
			if err != nil {
				return err
			}
			out = append(out, li)
		}
		if err := it.Error(); err != nil {
			return storageErr("leases", err)
		}
		return nil
	})
	return out, err
}

func decodeLease(k, v []byte) (LeaseInfo, error) {
	ttl, n := binary.Uvarint(v)
	if len(k) != len(pfxLease)+8 || n <= 0 {
		return LeaseInfo{}, storageErr("lease", errCorrupt)
	}
	return LeaseInfo{ID: int64(binary.BigEndian.Uint64(k[len(pfxLease):])), TTL: int64(ttl)}, nil
}

// Lease returns lease id and whether it exists.
func (s *Store) Lease(id int64) (LeaseInfo, bool, error) {
	var li LeaseInfo
	var found bool
	err := s.reader(func(db *pebble.DB) error {
		k := appendLeaseKey(nil, id)
		v, c, err := db.Get(k)
		if errors.Is(err, pebble.ErrNotFound) {
			return nil
		}
		if err != nil {
			return storageErr("lease", err)
		}
		defer c.Close()
		li, err = decodeLease(k, v)
		found = err == nil
		return err
	})
	return li, found, err
}

// LeaseKeys returns the keys currently attached to lease id, in key order.
func (s *Store) LeaseKeys(id int64) ([][]byte, error) {
	var out [][]byte
	err := s.reader(func(db *pebble.DB) error {
		p := appendLeaseAttachKey(nil, id, nil)
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
		if err != nil {
			return storageErr("lease keys", err)
		}
		defer it.Close()
		for ok := it.First(); ok; ok = it.Next() {
			out = append(out, append([]byte(nil), it.Key()[len(p):]...))
		}
		if err := it.Error(); err != nil {
			return storageErr("lease keys", err)
		}
		return nil
	})
	return out, err
}

// meta is the persisted state loaded at Open and Restore.
type meta struct {
	applied, term  uint64
	rev, compacted int64
	compactDone    int64
	leases         map[int64]int64
}

func getInt(db pebble.Reader, key string) (int64, bool, error) {
	v, c, err := db.Get([]byte(key))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, storageErr("read "+key, err)
	}
	defer c.Close()
	if len(v) != 8 {
		return 0, false, storageErr("read "+key, errCorrupt)
	}
	return int64(binary.BigEndian.Uint64(v)), true, nil
}

// loadMeta reads the metadata; init writes the format marker into an empty database.
func loadMeta(db *pebble.DB, init bool) (meta, error) {
	m := meta{rev: 1, leases: map[int64]int64{}}
	f, ok, err := getInt(db, keyFormat)
	if err != nil {
		return m, err
	}
	if !ok {
		if !init {
			return m, storageErr("load", errors.New("format marker missing"))
		}
		if err := db.Set([]byte(keyFormat), binary.BigEndian.AppendUint64(nil, formatVersion), pebble.Sync); err != nil {
			return m, storageErr("init", err)
		}
	} else if f != formatVersion {
		return m, storageErr("load", fmt.Errorf("unsupported format version %d", f))
	}
	v, c, err := db.Get([]byte(keyApplied))
	switch {
	case errors.Is(err, pebble.ErrNotFound):
	case err != nil:
		return m, storageErr("read applied index", err)
	default:
		if len(v) != 16 {
			c.Close()
			return m, storageErr("read applied index", errCorrupt)
		}
		m.applied, m.term = binary.BigEndian.Uint64(v), binary.BigEndian.Uint64(v[8:])
		c.Close()
	}
	if r, ok, err := getInt(db, keyRevision); err != nil {
		return m, err
	} else if ok {
		m.rev = r
	}
	if m.compacted, _, err = getInt(db, keyCompactRev); err != nil {
		return m, err
	}
	if m.compactDone, _, err = getInt(db, keyCompactDone); err != nil {
		return m, err
	}
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxLease), UpperBound: prefixEnd([]byte(pfxLease))})
	if err != nil {
		return m, storageErr("load leases", err)
	}
	defer it.Close()
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return m, storageErr("load leases", err)
		}
		li, err := decodeLease(it.Key(), v)
		if err != nil {
			return m, err
		}
		m.leases[li.ID] = li.TTL
	}
	if err := it.Error(); err != nil {
		return m, storageErr("load leases", err)
	}
	return m, nil
}

// readCurrent returns the live generation named by dir/CURRENT; fresh when absent.
func readCurrent(dir string) (gen int, fresh bool, err error) {
	b, err := os.ReadFile(filepath.Join(dir, currentFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, true, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("mvcc: read CURRENT: %w", err)
	}
	name := strings.TrimSpace(string(b))
	gen, err = strconv.Atoi(strings.TrimPrefix(name, dbDirPrefix))
	if err != nil || !strings.HasPrefix(name, dbDirPrefix) || gen < 0 {
		return 0, false, fmt.Errorf("mvcc: CURRENT holds %q, want %s<n>", name, dbDirPrefix)
	}
	return gen, false, nil
}

// writeCurrent durably points dir/CURRENT at generation gen (write, fsync, rename,
// fsync dir), so a crash leaves either the old or the new generation live.
func writeCurrent(dir string, gen int) error {
	tmp := filepath.Join(dir, currentFile+".tmp")
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("mvcc: write CURRENT: %w", err)
	}
	_, err = io.WriteString(f, dbDirPrefix+strconv.Itoa(gen)+"\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, currentFile))
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return fmt.Errorf("mvcc: write CURRENT: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// removeStaleGenerations deletes db-* directories other than the live one (left by a
// Restore that crashed before or after switching CURRENT).
func removeStaleGenerations(dir string, live int) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("mvcc: list %s: %w", dir, err)
	}
	for _, e := range ents {
		if !e.IsDir() || !strings.HasPrefix(e.Name(), dbDirPrefix) || e.Name() == dbDirPrefix+strconv.Itoa(live) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("mvcc: remove stale %s: %w", e.Name(), err)
		}
	}
	return nil
}
