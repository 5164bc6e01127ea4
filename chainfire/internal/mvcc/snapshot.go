package mvcc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

// Snapshot stream format (version 1):
//
//	header:  "CFMVCC\x00\x01" magic (8 bytes), format version (uint32 BE)
//	records: uvarint len(key), key, uvarint len(value), value   -- every pebble key, in order
//	end:     uvarint 0 (keys are never empty)
//	trailer: record count (uint64 BE), CRC-32C of every preceding byte (uint32 BE)
//
// The records are the whole database: data, by-revision index, leases, members and the
// metadata (applied index and term, revision, compaction revisions).
const (
	snapMagic         = "CFMVCC\x00\x01"
	snapVersion       = 1
	restoreBatchBytes = 4 << 20
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Snapshot is a consistent point-in-time image of the store. It pins the database
// (pebble snapshot) until Release; WriteTo may run in any goroutine, concurrently with
// later Applies. The owner must call Release exactly once.
type Snapshot struct {
	h       *dbHandle
	snap    *pebble.Snapshot
	applied uint64
	rev     int64
	once    sync.Once
}

// Snapshot captures the current state: it takes a pebble snapshot (cheap), then syncs
// pebble's WAL so that everything the snapshot holds is durable (raft truncates its log
// after a snapshot). Safe for concurrent use; called from the FSM goroutine (as raft's
// FSM.Snapshot is) it holds exactly the entries applied so far.
func (s *Store) Snapshot() (*Snapshot, error) {
	s.dbMu.RLock()
	h := s.h
	if h == nil {
		s.dbMu.RUnlock()
		return nil, ErrClosed
	}
	h.ref()
	s.dbMu.RUnlock()
	sn := &Snapshot{h: h, snap: h.db.NewSnapshot()}
	if err := h.db.LogData(nil, pebble.Sync); err != nil {
		sn.Release()
		return nil, storageErr("snapshot sync", err)
	}
	v, c, err := sn.snap.Get(keyAppliedB)
	if err == nil {
		if len(v) == 16 {
			sn.applied = binary.BigEndian.Uint64(v)
		}
		c.Close()
	} else if !errors.Is(err, pebble.ErrNotFound) {
		sn.Release()
		return nil, storageErr("snapshot", err)
	}
	sn.rev = 1
	if r, ok, err := getInt(sn.snap, keyRevision); err != nil {
		sn.Release()
		return nil, err
	} else if ok {
		sn.rev = r
	}
	return sn, nil
}

// AppliedIndex returns the applied raft index the snapshot contains.
func (sn *Snapshot) AppliedIndex() uint64 { return sn.applied }

// Revision returns the store revision the snapshot contains.
func (sn *Snapshot) Revision() int64 { return sn.rev }

// Release frees the pebble snapshot. Safe to call more than once.
func (sn *Snapshot) Release() {
	sn.once.Do(func() {
		sn.snap.Close()
		if err := sn.h.unref(); err != nil {
			_ = err // the store's logger is not reachable here; close errors surface on Close
		}
	})
}

// WriteTo writes the self-describing snapshot stream to w and returns the bytes written.
func (sn *Snapshot) WriteTo(w io.Writer) (int64, error) {
	cw := &countingWriter{w: w}
	crc := crc32.New(crcTable)
	bw := bufio.NewWriterSize(io.MultiWriter(cw, crc), 256<<10)
	var hdr [12]byte
	copy(hdr[:], snapMagic)
	binary.BigEndian.PutUint32(hdr[8:], snapVersion)
	if _, err := bw.Write(hdr[:]); err != nil {
		return cw.n, err
	}
	it, err := sn.snap.NewIter(nil)
	if err != nil {
		return cw.n, storageErr("snapshot", err)
	}
	defer it.Close()
	var count uint64
	var lb [binary.MaxVarintLen64]byte
	for ok := it.First(); ok; ok = it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return cw.n, storageErr("snapshot", err)
		}
		k := it.Key()
		bw.Write(lb[:binary.PutUvarint(lb[:], uint64(len(k)))])
		bw.Write(k)
		bw.Write(lb[:binary.PutUvarint(lb[:], uint64(len(v)))])
		if _, err := bw.Write(v); err != nil {
			return cw.n, err
		}
		count++
	}
	if err := it.Error(); err != nil {
		return cw.n, storageErr("snapshot", err)
	}
	bw.WriteByte(0)
	var tr [8]byte
	binary.BigEndian.PutUint64(tr[:], count)
	bw.Write(tr[:])
	if err := bw.Flush(); err != nil {
		return cw.n, err
	}
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	if _, err := cw.Write(sum[:]); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// crcReader hashes what it reads.
type crcReader struct {
	r   *bufio.Reader
	crc hash.Hash32
}

func (c *crcReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.crc.Write(p[:n])
	return n, err
}

func (c *crcReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.crc.Write([]byte{b})
	}
	return b, err
}

// ErrBadSnapshot is wrapped by Restore when the stream is not a valid snapshot.
var ErrBadSnapshot = errors.New("mvcc: invalid snapshot")

// Restore replaces the whole state with a stream written by Snapshot.WriteTo. The
// stream is loaded into a new database beside the live one and verified (header,
// record count, checksum) before anything changes; on any error the old state stays
// and the error wraps ErrBadSnapshot (or ErrStorage). The switch is crash-safe: the
// new database becomes live by atomically rewriting dir/CURRENT. Readers wait for the
// switch; live watchers stay registered and continue from their next revision against
// the new state (or get a CompactRevision batch if it is compacted there). Call it from
// the FSM goroutine (not concurrently with Apply or Snapshot).
func (s *Store) Restore(r io.Reader) error {
	if s.closed.Load() {
		return ErrClosed
	}
	gen := s.gen + 1
	dir := filepath.Join(s.dir, dbDirPrefix+strconv.Itoa(gen))
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("mvcc: restore: %w", err)
	}
	h, err := s.openHandle(dir, false)
	if err != nil {
		return err
	}
	fail := func(err error) error {
		h.remove.Store(true)
		h.unref()
		return err
	}
	if err := loadSnapshot(r, h.db); err != nil {
		return fail(err)
	}
	if err := h.db.LogData(nil, pebble.Sync); err != nil {
		return fail(storageErr("restore sync", err))
	}
	m, err := loadMeta(h.db, false)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", ErrBadSnapshot, err))
	}
	idx, err := buildIndex(h.db, m.rev)
	if err != nil {
		return fail(err)
	}
	if err := writeCurrent(s.dir, gen); err != nil {
		return fail(err)
	}

	s.dbMu.Lock()
	old := s.h
	s.h, s.gen = h, gen
	s.epoch.Add(1)
	s.setMeta(m)
	s.ap.rebind(h, m, idx)
	s.hub.reset(m.rev)
	s.cp.mu.Lock()
	s.cp.done = m.compactDone
	s.cp.mu.Unlock()
	s.dbMu.Unlock()
	s.cp.kick()
	old.remove.Store(true)
	if err := old.unref(); err != nil {
		s.log.Warn("mvcc: closing the replaced database", "err", err)
	}
	s.log.Info("mvcc restored snapshot", "revision", m.rev, "applied_index", m.applied)
	return nil
}

// loadSnapshot streams a snapshot into an empty db, verifying it completely.
func loadSnapshot(r io.Reader, db *pebble.DB) error {
	cr := &crcReader{r: bufio.NewReaderSize(r, 256<<10), crc: crc32.New(crcTable)}
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadSnapshot, fmt.Sprintf(format, args...))
	}
	var hdr [12]byte
	if _, err := io.ReadFull(cr, hdr[:]); err != nil {
		return bad("header: %v", err)
	}
	if string(hdr[:8]) != snapMagic {
		return bad("bad magic %q", hdr[:8])
	}
	if v := binary.BigEndian.Uint32(hdr[8:]); v != snapVersion {
		return bad("unsupported version %d", v)
	}
	b := db.NewBatch()
	defer func() { b.Close() }()
	var count uint64
	var buf []byte
	for {
		kl, err := binary.ReadUvarint(cr)
		if err != nil {
			return bad("record %d: %v", count, err)
		}
		if kl == 0 {
			break
		}
		if kl > 1<<30 {
			return bad("record %d: key length %d", count, kl)
		}
		buf = grow(buf, int(kl))
		if _, err := io.ReadFull(cr, buf[:kl]); err != nil {
			return bad("record %d: %v", count, err)
		}
		vl, err := binary.ReadUvarint(cr)
		if err != nil || vl > 1<<31 {
			return bad("record %d: value length: %v", count, err)
		}
		buf = grow(buf, int(kl+vl))
		if _, err := io.ReadFull(cr, buf[kl:kl+vl]); err != nil {
			return bad("record %d: %v", count, err)
		}
		if err := b.Set(buf[:kl], buf[kl:kl+vl], nil); err != nil {
			return storageErr("restore", err)
		}
		count++
		if b.Len() >= restoreBatchBytes {
			if err := b.Commit(pebble.NoSync); err != nil {
				return storageErr("restore", err)
			}
			b.Close()
			b = db.NewBatch()
		}
	}
	var tr [8]byte
	if _, err := io.ReadFull(cr, tr[:]); err != nil {
		return bad("trailer: %v", err)
	}
	want := cr.crc.Sum32()
	var sum [4]byte
	if _, err := io.ReadFull(cr.r, sum[:]); err != nil {
		return bad("checksum: %v", err)
	}
	if n := binary.BigEndian.Uint64(tr[:]); n != count {
		return bad("trailer says %d records, read %d", n, count)
	}
	if got := binary.BigEndian.Uint32(sum[:]); got != want {
		return bad("checksum mismatch: stream %08x, computed %08x", got, want)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return storageErr("restore", err)
	}
	return nil
}

func grow(b []byte, n int) []byte {
	if cap(b) >= n {
		return b[:cap(b)]
	}
	nb := make([]byte, n, max(n, 2*cap(b)))
	copy(nb, b)
	return nb
}
