package mvcc

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"sync"

	"github.com/cockroachdb/pebble/v2"
)

const (
	compactBatchDeletes = 4096  // deletions per physical compaction batch
	compactBatchScan    = 32768 // versions examined per batch
)

// compactor removes, in the background and in bounded batches, the versions a
// compaction made unreachable: per key, every version older than the newest one at or
// below the compaction revision, and that one too if it is a tombstone; plus the
// by-revision index up to the compaction revision. A tombstone is deleted only in or
// after the batch that deletes the last older version of its key, so a reader at any
// revision >= the compaction revision never sees a resurrected value.
type compactor struct {
	s      *Store
	kickCh chan struct{}
	// Batch bounds (constants in production; tests shrink them before compacting).
	maxDeletes, maxScan int

	mu     sync.Mutex
	done   int64         // physically compacted through this revision
	doneCh chan struct{} // closed and replaced whenever done advances
}

func newCompactor(s *Store, done int64) *compactor {
	return &compactor{s: s, kickCh: make(chan struct{}, 1), done: done, doneCh: make(chan struct{}),
		maxDeletes: compactBatchDeletes, maxScan: compactBatchScan}
}

func (c *compactor) kick() {
	select {
	case c.kickCh <- struct{}{}:
	default:
	}
}

func (c *compactor) setDone(rev int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = rev
	close(c.doneCh)
	c.doneCh = make(chan struct{})
}

// WaitCompaction blocks until the physical removal for a compaction at rev (or a later
// one) has finished, or ctx ends. etcd's CompactionRequest.physical waits like this.
func (s *Store) WaitCompaction(ctx context.Context, rev int64) error {
	for {
		c := s.cp
		c.mu.Lock()
		done, ch := c.done, c.doneCh
		c.mu.Unlock()
		if done >= rev {
			return nil
		}
		if s.closed.Load() {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-s.stop:
			return ErrClosed
		}
	}
}

func (c *compactor) loop() {
	defer c.s.wg.Done()
	for {
		select {
		case <-c.s.stop:
			return
		case <-c.kickCh:
		}
		for c.run() {
		}
	}
}

// compactRun is the progress of one physical compaction, kept across batches.
type compactRun struct {
	target  int64
	epoch   uint64
	resume  []byte // next pebble key to examine
	cur     []byte // prefix of the key being processed
	seenLE  bool   // the newest version <= target of cur was seen
	pending []byte // tombstone of cur to delete once its older versions are gone
	seek    []byte
}

// run performs one physical compaction to the current compaction revision; it reports
// whether it should be called again (a newer compaction or a Restore intervened).
func (c *compactor) run() bool {
	s := c.s
	s.dbMu.RLock()
	if s.h == nil {
		s.dbMu.RUnlock()
		return false
	}
	target, epoch := s.compacted.Load(), s.epoch.Load()
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	s.dbMu.RUnlock()
	if target <= done {
		return false
	}
	r := &compactRun{target: target, epoch: epoch, resume: append([]byte(nil), kvLower...)}
	for {
		select {
		case <-s.stop:
			return false
		default:
		}
		finished, err := c.step(r)
		if err == errStale {
			return true
		}
		if err != nil {
			s.log.Error("mvcc physical compaction failed", "err", err, "revision", target)
			return false
		}
		if finished {
			s.log.Debug("mvcc physical compaction done", "revision", target)
			return s.compacted.Load() > target
		}
	}
}

// step runs one bounded batch of r.
func (c *compactor) step(r *compactRun) (finished bool, err error) {
	s := c.s
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.h == nil || s.epoch.Load() != r.epoch {
		return false, errStale
	}
	db := s.h.db
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return false, storageErr("compact", err)
	}
	defer it.Close()
	b := db.NewBatch()
	defer b.Close()
	deletes, scanned := 0, 0
	valid := it.SeekGE(r.resume)
	for ; valid && deletes < c.maxDeletes && scanned < c.maxScan; scanned++ {
		k := it.Key()
		prefix, rev, ok := splitVersionKey(k)
		if !ok {
			return false, storageErr("compact", errCorrupt)
		}
		if !bytes.Equal(prefix, r.cur) {
			if r.pending != nil {
				if err := b.Delete(r.pending, nil); err != nil {
					return false, storageErr("compact", err)
				}
				deletes++
				r.pending = nil
			}
			r.cur = append(r.cur[:0], prefix...)
			r.seenLE = false
		}
		switch {
		case rev > r.target:
			// Skip the versions above the target in one seek.
			r.seek = appendRevSuffix(append(r.seek[:0], r.cur...), r.target)
			valid = it.SeekGE(r.seek)
			continue
		case !r.seenLE:
			r.seenLE = true
			v, err := it.ValueAndErr()
			if err != nil {
				return false, storageErr("compact", err)
			}
			if len(v) > 0 && v[0] == recTombstone {
				r.pending = append([]byte(nil), k...)
			}
		default:
			if err := b.Delete(k, nil); err != nil {
				return false, storageErr("compact", err)
			}
			deletes++
		}
		valid = it.Next()
	}
	if err := it.Error(); err != nil {
		return false, storageErr("compact", err)
	}
	if valid {
		r.resume = append(r.resume[:0], it.Key()...)
	} else {
		if r.pending != nil {
			if err := b.Delete(r.pending, nil); err != nil {
				return false, storageErr("compact", err)
			}
			r.pending = nil
		}
		// Drop the by-revision index chunks before the one holding revision target+1.
		rit, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte(pfxRev), UpperBound: prefixEnd([]byte(pfxRev))})
		if err != nil {
			return false, storageErr("compact", err)
		}
		var end []byte
		if rit.SeekLT(append(appendRevKey(nil, r.target+1, 0), 0)) {
			end = append([]byte(nil), rit.Key()...)
		}
		err = rit.Close()
		if err != nil {
			return false, storageErr("compact", err)
		}
		if end != nil {
			if err := b.DeleteRange([]byte(pfxRev), end, nil); err != nil {
				return false, storageErr("compact", err)
			}
		}
		if err := b.Set([]byte(keyCompactDone), binary.BigEndian.AppendUint64(nil, uint64(r.target)), nil); err != nil {
			return false, storageErr("compact", err)
		}
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return false, storageErr("compact", err)
	}
	if !valid {
		// Under the read lock, so a concurrent Restore cannot interleave.
		c.setDone(r.target)
	}
	return !valid, nil
}

// HashKV hashes (CRC-32C) every key version with mod revision <= rev (0 = current) that
// is logically present: all versions above the compaction revision plus, per key, the
// newest version at or below it unless that is a tombstone. The result does not depend
// on how far physical compaction has progressed, so members with the same applied log
// agree on it. rev below the compaction revision fails with ErrCompacted, above the
// current one with ErrFutureRev. Safe for concurrent use.
func (s *Store) HashKV(rev int64) (hash uint32, hashRev, compactRev int64, err error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	if s.h == nil {
		return 0, 0, 0, ErrClosed
	}
	cur := s.rev.Load()
	if rev > cur {
		return 0, 0, 0, ErrFutureRev
	}
	if rev <= 0 {
		rev = cur
	}
	it, err := s.h.db.NewIter(&pebble.IterOptions{LowerBound: kvLower, UpperBound: kvUpper})
	if err != nil {
		return 0, 0, 0, storageErr("hash", err)
	}
	defer it.Close()
	compactRev = s.compacted.Load()
	if rev < compactRev {
		return 0, 0, 0, ErrCompacted
	}
	h := crc32.New(crcTable)
	var cur0 []byte
	seenLE := false
	for ok := it.First(); ok; ok = it.Next() {
		k := it.Key()
		prefix, r, ok := splitVersionKey(k)
		if !ok {
			return 0, 0, 0, storageErr("hash", errCorrupt)
		}
		if !bytes.Equal(prefix, cur0) {
			cur0 = append(cur0[:0], prefix...)
			seenLE = false
		}
		if r > rev {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return 0, 0, 0, storageErr("hash", err)
		}
		if r <= compactRev {
			if seenLE {
				continue
			}
			seenLE = true
			if len(v) > 0 && v[0] == recTombstone {
				continue
			}
		}
		h.Write(k)
		h.Write(v)
	}
	if err := it.Error(); err != nil {
		return 0, 0, 0, storageErr("hash", err)
	}
	return h.Sum32(), rev, compactRev, nil
}
